"""Your own model, checked where it is easy to get wrong without a word: a transform nobody
recorded, class names twice, a label set the names are not, failed files missing from JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fastervit_trt.cli import export_main, infer_main
from fastervit_trt.errors import OptionsError
from fastervit_trt.export.stages import ExportOptions, preflight
from fastervit_trt.runtime.labels import read_class_names
from tests.conftest import requires_tensorrt

DIGITS = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"  # a plain state dict: no transform recorded


def test_a_checkpoint_without_a_recorded_transform_gets_a_warning_and_every_source_is_named(tmp_path, capsys, caplog):
    argv = ["--checkpoint", str(DIGITS), "--variant", "faster_vit_digits", "--precision", "fp32"]
    with caplog.at_level(logging.WARNING):
        assert export_main([*argv, "--output-dir", str(tmp_path), "--no-engine", "--quiet"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "records no eval transform" in r.getMessage()]
    assert warnings == [
        f"{DIGITS} records no eval transform; using faster_vit_digits's (mean [0.485, 0.456, 0.406], "
        "std [0.229, 0.224, 0.225], interpolation bicubic, crop_pct 1, crop_mode squash): if the model was "
        "trained with another, pass --mean --std --interpolation --crop-pct --crop-mode"
    ]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("preprocess"))
    assert line.endswith("(mean, std, interpolation, crop_pct, crop_mode from the variant)")
    caplog.clear()
    given = ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--interpolation", "bilinear"]
    given += ["--crop-pct", "1", "--crop-mode", "squash", "--force"]
    with caplog.at_level(logging.WARNING):
        assert export_main([*argv, *given, "--output-dir", str(tmp_path), "--no-engine", "--quiet"]) == 0
    assert "records no eval transform" not in caplog.text  # every setting chosen: nothing silent
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("preprocess"))
    assert line.endswith("(mean, std, interpolation, crop_pct, crop_mode from the options)")


def test_a_duplicate_class_name_is_refused_with_both_lines(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("chat\nchien noir\ncheval\nchien noir\n")
    with pytest.raises(OptionsError, match=r"names\.txt: 'chien noir' is on lines 2 and 4; each class needs its own"):
        read_class_names(names)


@pytest.mark.parametrize(
    "options, label_set",
    [
        ({"model": "faster_vit_0_224"}, "imagenet-1k"),
        ({"model": "faster_vit_0_224", "num_classes": 5}, None),  # a 5-class fine-tune is not ImageNet
        ({"model": "faster_vit_digits"}, "digits"),
        ({"model": "faster_vit_digits", "class_names": tuple("abcdefghij")}, None),  # its own names
        ({"model": "faster_vit_digits", "class_names": tuple("0123456789")}, "digits"),
    ],
)
def test_label_set_is_recorded_only_when_the_names_are_that_set(tmp_path, options, label_set):
    plan = preflight(ExportOptions(output_dir=tmp_path, **options))
    assert plan.metadata()["preprocess"]["label_set"] == label_set


def test_infer_json_gives_failed_files_their_own_entry(digits_fp32_onnx, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = Path(__file__).resolve().parents[1] / "calibration" / "skimage_coffee.png"
    capsys.readouterr()
    assert infer_main([str(good), str(broken), "--model", str(digits_fp32_onnx), "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert [entry["image"] for entry in answer] == [str(good), str(broken)]
    assert "top" in answer[0] and "cannot decode the image" in answer[1]["error"]


@requires_tensorrt
def test_an_engine_built_from_a_named_export_carries_the_names(tmp_path):
    """The runtime reads an engine's class names only from its sidecar: built by TensorRT-RTX
    here from a digits export named in words with spaces and accents."""
    from fastervit_trt.engines import BuildConfig, build_engine
    from fastervit_trt.runtime.labels import model_class_names
    from fastervit_trt.runtime.tensorrt_backend import verify_engine

    names = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf à la fin"]
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(names), encoding="utf-8")
    argv = ["--variant", "faster_vit_digits", "--precision", "fp32", "--class-names", str(names_file)]
    assert export_main([*argv, "--output-dir", str(tmp_path), "--no-engine", "--quiet"]) == 0
    engine = tmp_path / "digits.engine"
    build_engine(tmp_path / "faster_vit_digits_fp32.onnx", engine, BuildConfig(batch=(1, 1, 2)))
    sidecar = verify_engine(engine, check_device=False)
    assert sidecar["class_names"] == names and sidecar["label_set"] is None
    assert model_class_names(sidecar, 10) == names
