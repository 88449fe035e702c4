"""fastervit-infer, fastervit-bench, fastervit-inspect, and fastervit-export's engine step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastervit_trt.cli import bench_main, export_main, infer_main, inspect_main
from tests.conftest import has_tensorrt

CHECKPOINT = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"


@pytest.fixture(scope="module")
def digit_images(digits_folders):
    return sorted(digits_folders["heldout"].glob("7/*.png"))[:3]


@pytest.mark.parametrize("main", [infer_main, bench_main, inspect_main])
def test_help_has_examples(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_infer_table_and_json(digits_fp32_onnx, digit_images, capsys):
    assert infer_main([*map(str, digit_images), "--model", str(digits_fp32_onnx), "--topk", "2"]) == 0
    table = capsys.readouterr().out
    assert table.count("  1. ") == 3 and "7  (7)" in table
    assert infer_main([str(digit_images[0]), "--model", str(digits_fp32_onnx), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["top"][0]["name"] == "7" and len(rows[0]["top"]) == 5


def test_infer_bad_image_is_reported_and_the_rest_answered(digits_fp32_onnx, digit_images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"png? no")
    code = infer_main([str(digit_images[0]), str(bad), "--model", str(digits_fp32_onnx)])
    out, err = capsys.readouterr()
    assert code == 1 and "broken.png: cannot decode" in err and str(digit_images[0]) in out


def test_infer_missing_model(tmp_path, capsys):
    assert infer_main(["x.png", "--model", str(tmp_path / "none.onnx")]) == 1
    assert "no such model file" in capsys.readouterr().err


def test_bench_reports_percentiles_against_pytorch(digits_fp32_onnx, capsys):
    code = bench_main(
        [
            "--model",
            str(digits_fp32_onnx),
            "--batch-sizes",
            "1,4",
            "--iters",
            "5",
            "--warmup",
            "1",
            "--torch-variant",
            "faster_vit_digits",
            "--checkpoint",
            str(CHECKPOINT),
            "--json",
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 4 and {r["batch"] for r in rows} == {1, 4}
    assert all(0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["img_per_s"] > 0 for r in rows)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # PyTorch where the engine would run
    assert [r["model"] for r in rows if r["model"].startswith("pytorch eager")] == [
        f"pytorch eager {device} (faster_vit_digits)"
    ] * 2


def test_inspect_onnx(digits_fp32_onnx, capsys):
    assert inspect_main([str(digits_fp32_onnx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "faster_vit_digits" and info["qdq_nodes"] == 0 and info["float16_weight_share"] == 0
    assert info["ops"]["MatMul"] > 0 and "matches PyTorch" in info["validation"]


def test_inspect_int8_onnx(int8_export, capsys):
    assert inspect_main([str(int8_export.onnx_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["qdq_nodes"] == int8_export.report["quantization"]["qdq_nodes"] and info["opset"] == 19
    assert "mean cosine" in info["accuracy"]


@pytest.mark.skipif(not has_tensorrt(), reason="no TensorRT / TensorRT-RTX installed")
@pytest.mark.slow
def test_export_builds_the_engine_and_inspect_reads_it(tmp_path, capsys):
    code = export_main(
        [
            "--variant",
            "faster_vit_digits",
            "--checkpoint",
            str(CHECKPOINT),
            "--precision",
            "fp16",
            "--output-dir",
            str(tmp_path / "export"),
            "--engine-dir",
            str(tmp_path / "engines"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    engine = tmp_path / "engines" / "faster_vit_digits_fp16.engine"
    assert code == 0 and engine.exists() and f"engine      {engine}" in out
    assert inspect_main([str(engine), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == "fp16" and info["inputs"][0]["profile"]["max"] == [32, 3, 128, 128]


def test_infer_a_folder_in_batches_keeps_order_and_reports_bad_files(digits_fp32_onnx, digit_images, tmp_path, capsys):
    import shutil

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    names = []
    for i in range(11):  # more than the ONNX's largest batch: several pipelined batches
        target = folder / ("sub" if i % 2 else "") / f"{i:02d}.png"
        shutil.copy(digit_images[i % len(digit_images)], target)
        names.append(target)
    (folder / "05x.png").write_bytes(b"broken")
    code = infer_main([str(folder), "--model", str(digits_fp32_onnx), "--json"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert code == 1 and "05x.png: cannot decode" in err
    assert [r["image"] for r in rows if "top" in r] == sorted(map(str, names))
    (failed,) = [r for r in rows if "top" not in r]  # its own entry, with the error
    assert failed["image"] == str(folder / "05x.png") and "05x.png: cannot decode" in failed["error"]


@pytest.mark.parametrize(
    "command,old,new",
    [
        ("export", ["--model", "faster_vit_digits"], {"variant": "faster_vit_digits"}),
        (
            "bench",
            ["--model", "m.onnx", "--batch", "1,4", "--torch-model", "faster_vit_digits"],
            {"batch_sizes": [1, 4], "torch_variant": "faster_vit_digits"},
        ),
        (
            "eval",
            ["--data", "val", "--torch", "faster_vit_digits", "--batch", "4"],
            {"torch_variant": "faster_vit_digits", "batch_size": 4},
        ),
    ],
)
def test_renamed_flags_keep_their_old_spelling_with_a_note(command, old, new, capsys):
    """--model (a variant name) in export, --batch (a list / an int) in bench and eval, --torch-model and
    --torch were renamed so one name means one thing; the old spellings parse to the same values."""
    import importlib

    args = importlib.import_module(f"fastervit_trt.cli.{command}").parser().parse_args(old)
    err = capsys.readouterr().err
    assert {key: getattr(args, key) for key in new} == new
    assert err.count("note: ") == len(new) and "the old spelling still works" in err
