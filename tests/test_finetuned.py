"""Your own FasterViT: models fine-tuned elsewhere (the official package, saved as timm's
CheckpointSaver does, as a plain state dict and as safetensors) go through export, the
runtime, eval and the CLI with no flag beyond the checkpoint (and a names file).

The reference is independent of this toolkit: the official ``fastervit`` model holding the
same weights, fed timm's own eval transform built from the checkpoint's recorded settings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fastervit_trt.cli import eval_main, export_main, infer_main
from fastervit_trt.compare import compare
from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.models import create_model
from fastervit_trt.preprocess import SAMPLE_IMAGES, Preprocess, load_image
from fastervit_trt.runtime import load
from fastervit_trt.sidecar import read_metadata
from tests.parity import randomize_

FORMATS = ("timm", "plain", "safetensors")
# a transform no official FasterViT uses: mean/std 0.5, bilinear, crop 0.95 (what the run recorded)
TRAINED = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 0.95}
NAMES = ["cat", "dog", "bird", "fish", "horse", "sheep", "cow", "frog", "ship", "truck"]
# PNG photos only: a large JPEG takes the runtime's reduced-scale decode (within 2 levels of timm's)
PHOTOS = sorted(SAMPLE_IMAGES.glob("*.png"))[:4]


def _official(num_classes: int, seed: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastervit import create_model as official_create

        return randomize_(official_create("faster_vit_0_224", num_classes=num_classes).eval(), seed)


def _save(model: torch.nn.Module, folder: Path, fmt: str, args: argparse.Namespace | None = None) -> Path:
    """``model``'s weights as a user would have them: through timm's own CheckpointSaver (with
    EMA weights and the run's args), a plain state dict, or safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "plain":
        path = folder / "weights.pth"
        torch.save(model.state_dict(), path)
        return path
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = folder / "weights.safetensors"
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
        return path
    from timm.utils import CheckpointSaver, ModelEmaV3

    ema = ModelEmaV3(model)  # a copy: the EMA weights differ once the model's move
    with torch.no_grad():
        for tensor in ema.module.parameters():
            tensor.mul_(0.5)
    optimizer = torch.optim.AdamW(model.parameters())
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder), max_history=1)
    saver.save_checkpoint(epoch=3, metric=91.5)
    return folder / "model_best.pth.tar"


def _args(num_classes: int, **transform) -> argparse.Namespace:
    """The settings timm's train.py records (the data-config ones that matter here)."""
    unset = {
        "input_size": None,
        "img_size": None,
        "mean": None,
        "std": None,
        "interpolation": "",
        "crop_pct": None,
        "crop_mode": None,
    }
    return argparse.Namespace(
        model="faster_vit_0_224", num_classes=num_classes, lr=1e-3, epochs=30, **{**unset, **transform}
    )


def _timm_inputs(official: torch.nn.Module, args: argparse.Namespace | None) -> torch.Tensor:
    """The photos through timm's own eval transform, resolved from the run's args."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(vars(args) if args else {}, model=official)
    transform = create_transform(**config)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in PHOTOS])


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A 10-class faster_vit_0_224 with its own normalisation, saved all three ways."""
    folder = tmp_path_factory.mktemp("finetuned")
    official = _official(10, seed=3)
    args = _args(10, **TRAINED)
    paths = {fmt: _save(official, folder / fmt, fmt, args) for fmt in FORMATS}
    names = folder / "classes.txt"
    names.write_text("\n".join(NAMES) + "\n")
    inputs = {"timm": _timm_inputs(official, args), "plain": _timm_inputs(official, None)}  # no record: the variant's
    inputs["safetensors"] = inputs["plain"]
    with torch.no_grad():
        reference = {fmt: official(x).numpy() for fmt, x in inputs.items()}
    return {"paths": paths, "names": names, "inputs": inputs, "reference": reference, "folder": folder}


def _export_argv(checkpoint: Path, out: Path, precision: str, *extra: str, names: Path | None = None) -> list[str]:
    """fastervit-export's arguments for ``checkpoint`` (and its names file) into ``out``, no engine."""
    named = ["--class-names", str(names)] if names else []
    return [
        "--checkpoint",
        str(checkpoint),
        *named,
        "--precision",
        precision,
        "--output-dir",
        str(out),
        *extra,
        "--no-engine",
        "--quiet",
    ]


def _export(checkpoint: Path, out: Path, precision: str = "fp32", *extra: str, names: Path | None = None) -> str:
    """Export as ``_export_argv`` says; returns what the command printed (its summary)."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert export_main(_export_argv(checkpoint, out, precision, *extra, names=names)) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def named_fp32(finetuned, tmp_path_factory) -> tuple[Path, str]:
    """The timm checkpoint exported to FP32 with its names file (the common case), and its summary."""
    out = tmp_path_factory.mktemp("named_fp32")
    summary = _export(finetuned["paths"]["timm"], out, names=finetuned["names"])
    return out / "faster_vit_0_224_fp32.onnx", summary


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_export_from_the_checkpoint_alone_matches_the_official_model(fmt, finetuned, named_fp32, tmp_path):
    """No --variant, no --num-classes, no transform flag: the variant, the head and (from timm's
    args) the transform come from the checkpoint; ONNX Runtime on the export's own
    preprocessing matches the official model fed timm's transform within 1e-4 relative."""
    if fmt == "timm":
        onnx_path, summary = named_fp32
    else:
        summary = _export(finetuned["paths"][fmt], tmp_path, names=finetuned["names"])
        onnx_path = tmp_path / "faster_vit_0_224_fp32.onnx"
    metadata = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    assert metadata["arch"]["num_classes"] == 10 and metadata["class_names"] == NAMES
    recorded = metadata["preprocess"]
    if fmt == "timm":
        assert {k: recorded[k] for k in TRAINED} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in TRAINED.items()
        }
        assert metadata["preprocess_from"]["mean"] == "checkpoint's training args"
        assert "from the checkpoint's training args" in summary and "cat, dog, bird, fish" in summary
        assert metadata["weights"]["key"] == "state_dict"
    else:
        assert recorded["mean"] == [0.485, 0.456, 0.406] and recorded["crop_pct"] == 0.875
        assert set(metadata["preprocess_from"].values()) == {"variant"}
    model = load(onnx_path)
    report = compare(finetuned["reference"][fmt], model.run(finetuned["inputs"][fmt].numpy()))
    assert report.relative_diff <= 1e-4, report
    # the runtime decoding the files itself: its default fast resize (jpeg_draft) strays by up
    # to 2 levels from timm's full resize (--exact-preprocess: bitwise), hence the looser bound
    decoded = compare(finetuned["reference"][fmt], model.logits(PHOTOS))
    assert decoded.relative_diff <= 1e-3 and decoded.top1_agreement == 1.0, decoded
    assert model.predict(PHOTOS, topk=1)[0][0].name in NAMES


@pytest.mark.slow
def test_the_export_preprocessing_is_timms_transform(finetuned):
    """The one recorded transform, applied by the runtime, equals timm's eval transform of the
    run's settings (crop 0.95, bilinear, mean/std 0.5) on the same photos."""
    checkpoint = finetuned["paths"]["timm"]
    official = _official(10, seed=3)
    expected = _timm_inputs(official, torch.load(checkpoint, weights_only=False)["args"]).numpy()
    preprocess = Preprocess.from_config(create_model("faster_vit_0_224", checkpoint=checkpoint).variant.eval)
    ours = np.stack([preprocess(load_image(p)) for p in PHOTOS])
    assert np.abs(ours - expected).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8"])
def test_fp16_int8_and_fp8_exports_need_no_flag_beyond_the_checkpoint(precision, finetuned, tmp_path):
    checkpoint = finetuned["paths"]["timm"]
    extra = ["--calib-images", "32", "--calib-heldout", "8"] if precision in ("int8", "fp8") else []
    _export(checkpoint, tmp_path, precision, *extra, names=finetuned["names"])
    model = load(tmp_path / f"faster_vit_0_224_{precision}.onnx")
    assert model.names == NAMES and model.preprocess.mean == (0.5, 0.5, 0.5)
    report = compare(finetuned["reference"]["timm"], model.logits(PHOTOS))
    assert report.mean_cosine > (0.999 if precision == "fp16" else 0.99), report
    assert len(model.top(model.logits(PHOTOS[:1]), topk=10)[0]) == 10
    if precision == "int8":  # the calibration cache remembers the transform it was made under
        record = json.loads((tmp_path / "faster_vit_0_224_int8.cache.json").read_text())
        assert record["preprocess"]["mean"] == [0.5, 0.5, 0.5] and record["num_classes"] == 10


@pytest.mark.slow
def test_a_cache_made_under_another_transform_is_not_reused(finetuned, tmp_path, capsys):
    checkpoint = finetuned["paths"]["timm"]
    argv = _export_argv(checkpoint, tmp_path, "int8", "--calib-images", "16", "--calib-heldout", "4")
    assert export_main(argv) == 0
    code = export_main([*argv, "--std", "0.25", "0.25", "0.25", "--force"])
    err = capsys.readouterr().err
    assert code == 1 and "preprocess.std [0.5, 0.5, 0.5] -> [0.25, 0.25, 0.25]" in err and "--recalibrate" in err


@pytest.mark.slow
def test_headless_checkpoint_exports_a_pooled_embedding(tmp_path, capsys):
    """A feature extractor (timm's num_classes=0): the output is the pooled embedding, which
    the runtime, the batcher and fastervit-infer answer as vectors."""
    official = _official(0, seed=5)
    checkpoint = _save(official, tmp_path / "ckpt", "plain")
    _export(checkpoint, tmp_path)
    onnx_path = tmp_path / "faster_vit_0_224_fp32_embedding.onnx"  # the name says it is an embedding model
    model = load(onnx_path)
    assert model.kind == "embedding" and model.output_shapes == {"embedding": (512,)} and model.names == []
    with torch.no_grad():
        expected = official(_timm_inputs(official, None)).numpy()
    assert compare(expected, model.embed(PHOTOS)).relative_diff <= 1e-4
    with model.batcher(max_delay_ms=1) as batcher:
        row = batcher.submit(PHOTOS[0]).result(timeout=60)
    assert row.shape == (512,) and np.allclose(row, expected[0], rtol=1e-3, atol=1e-4)
    with pytest.raises(FasterViTTRTError, match="embedding model.*embed"):
        model.predict(PHOTOS[:1])
    capsys.readouterr()
    assert infer_main([str(PHOTOS[0]), "--model", str(onnx_path), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer[0]["embedding"]) == 512


@pytest.mark.parametrize("num_classes", [2, 20000])
def test_heads_of_any_size_load_from_the_checkpoint(num_classes, tmp_path):
    official = _official(num_classes, seed=num_classes)
    checkpoint = _save(official, tmp_path, "plain")
    ours = create_model("faster_vit_0_224", checkpoint=checkpoint)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        report = compare(official(x).numpy(), ours(x).numpy())
    assert ours.head.out_features == num_classes and report.relative_diff <= 1e-4, report


def test_wrong_head_width_or_names_are_one_line(finetuned, tmp_path, capsys):
    checkpoint = str(finetuned["paths"]["plain"])
    out = tmp_path / "out"
    assert export_main(["--checkpoint", checkpoint, "--num-classes", "1000", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its head has 10 classes, not num_classes=1000" in err
    names = tmp_path / "nine.txt"
    names.write_text("\n".join(NAMES[:9]))
    assert export_main(["--checkpoint", checkpoint, "--class-names", str(names), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nine.txt: 9 class names" in err and "has 10 classes" in err
    assert not out.exists()


@pytest.mark.slow
def test_named_classes_reach_infer_and_eval(finetuned, named_fp32, tmp_path, capsys):
    """fastervit-infer prints the export's names; fastervit-eval takes a folder whose
    sub-folders are those names without a mapping file, and PyTorch from the checkpoint alone."""
    checkpoint = finetuned["paths"]["timm"]
    onnx_path = str(named_fp32[0])
    capsys.readouterr()
    assert infer_main([str(PHOTOS[0]), "--model", onnx_path, "--topk", "3"]) == 0
    shown = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]  # "  1.  41.20%  cat  (0)"
    assert len(shown) == 3 and set(shown) <= set(NAMES)
    data = tmp_path / "data"
    for name, photos in (("cat", PHOTOS[:2]), ("horse", PHOTOS[2:])):
        (data / name).mkdir(parents=True)
        for photo in photos:
            shutil.copy(photo, data / name / photo.name)
    assert eval_main(["--data", str(data), "--model", onnx_path, "--checkpoint", str(checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and set(report["models"]) == {onnx_path, "pytorch:faster_vit_0_224"}
    (pair,) = report["pairs"]
    assert pair["top1_agreement"] == 100.0 and pair["mean_cosine"] > 0.99999


@pytest.mark.slow
def test_backbone_bench_and_re_export_command_from_a_finetuned_checkpoint(finetuned, tmp_path, capsys):
    """--features from a 10-class checkpoint; fastervit-bench's PyTorch row from the checkpoint
    alone; the re-export command an artifact suggests keeps the options the checkpoint cannot
    give again (the names file, an explicit transform setting)."""
    from fastervit_trt.cli import bench_main
    from fastervit_trt.sidecar import export_command

    checkpoint = finetuned["paths"]["timm"]
    _export(checkpoint, tmp_path, "fp32", "--features", "3,4")
    backbone = load(tmp_path / "faster_vit_0_224_fp32_features.onnx")
    assert backbone.kind == "backbone" and set(backbone.output_shapes) == {"stage3", "stage4"}
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5)
    _export(checkpoint, tmp_path, "fp32", "--crop-pct", "0.9", names=finetuned["names"])
    onnx_path = tmp_path / "faster_vit_0_224_fp32.onnx"
    capsys.readouterr()
    args = ["--model", str(onnx_path), "--checkpoint", str(checkpoint), "--batch-sizes", "1", "--iters", "2", "--json"]
    assert bench_main([*args, "--warmup", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in rows][1].startswith("pytorch eager cpu (faster_vit_0_224)")
    metadata = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    command = export_command(metadata, "fp16")
    assert f"--class-names {finetuned['names']}" in command and "--crop-pct 0.9" in command
    assert "--mean" not in command  # the checkpoint gives it again


def test_a_recorded_transform_the_toolkit_cannot_apply_asks_for_the_flag(tmp_path):
    """timm's "border" crop mode: the model builds (the setting is not applied), and the export
    stops in its preflight asking for --crop-mode, until the flag chooses one."""
    from fastervit_trt.export.stages import ExportOptions, preflight
    from fastervit_trt.preprocess import TransformOptions

    state = torch.load(Path(__file__).parent / "fixtures" / "faster_vit_digits.pth")
    path = tmp_path / "border.pth.tar"
    torch.save(
        {
            "state_dict": state,
            "args": argparse.Namespace(model="faster_vit_digits", crop_mode="border", mean=(0.5, 0.5, 0.5)),
        },
        path,
    )
    assert create_model("faster_vit_digits", checkpoint=path).variant.eval.crop_mode == "squash"
    options = ExportOptions(checkpoint=path, output_dir=tmp_path / "out")
    assert options.model == "faster_vit_digits"
    with pytest.raises(FasterViTTRTError, match=r"border\.pth\.tar: .*crop mode 'border'.*pass --crop-mode to choose"):
        preflight(options)
    plan = preflight(
        ExportOptions(checkpoint=path, output_dir=tmp_path / "out", transform=TransformOptions(crop_mode="center"))
    )
    assert plan.preprocess.crop_mode == "center" and plan.preprocess.mean == (0.5, 0.5, 0.5)
    assert plan.transform_from["crop_mode"] == "options" and plan.transform_from["mean"] == "checkpoint's training args"
