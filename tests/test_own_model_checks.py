"""Your own model, checked where it is easy to get wrong without a word: a transform nobody
recorded, class names twice, a label set the names are not, failed files missing from JSON."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
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
    report = json.loads((tmp_path / "faster_vit_digits_fp32.report.json").read_text())
    assert report["preprocess_note"] == warnings[0]  # the report says the same
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


def _export(folder: Path, *argv: str) -> int:
    return export_main(["--variant", "faster_vit_digits", "--precision", "fp32", "--output-dir", str(folder), *argv])


def test_an_export_of_other_weights_is_never_overwritten(tmp_path, capsys):
    """Two models of one variant in one folder: the second is refused, --force included, with a
    way to keep both; --force still replaces an export of the same weights."""
    assert _export(tmp_path, "--quiet", "--no-engine") == 0
    onnx_path = tmp_path / "faster_vit_digits_fp32.onnx"
    first = onnx_path.read_bytes()
    capsys.readouterr()
    for force in ([], ["--force"]):
        assert _export(tmp_path, "--quiet", "--no-engine", "--seed", "1", *force) == 1
        err = capsys.readouterr().err
        assert "already holds a model made from other weights (random-init seed 0" in err
        assert "--output-dir DIR or --name STEM" in err and err.count("\n") == 1
        assert onnx_path.read_bytes() == first
    assert _export(tmp_path, "--quiet", "--no-engine", "--seed", "1", "--name", "digits_seed1") == 0
    assert (tmp_path / "digits_seed1.onnx").is_file() and onnx_path.read_bytes() == first
    assert _export(tmp_path, "--quiet", "--no-engine", "--force") == 0  # the same weights: replaced


@requires_tensorrt
def test_an_engine_of_other_weights_is_never_overwritten(tmp_path, capsys):
    engines = tmp_path / "engines"
    assert _export(tmp_path / "a", "--quiet", "--engine-dir", str(engines)) == 0
    engine = engines / "faster_vit_digits_fp32.engine"
    built = engine.read_bytes()
    capsys.readouterr()
    assert _export(tmp_path / "b", "--quiet", "--engine-dir", str(engines), "--seed", "2", "--force") == 1
    assert "faster_vit_digits_fp32.engine: already holds a model made from other weights" in capsys.readouterr().err
    assert engine.read_bytes() == built and not (tmp_path / "b").exists()


def test_a_headless_export_is_named_as_an_embedding_model(tmp_path):
    assert (
        ExportOptions(model="faster_vit_digits", num_classes=0).onnx_path.name
        == "faster_vit_digits_fp16_embedding.onnx"
    )
    assert ExportOptions(model="faster_vit_digits").onnx_path.name == "faster_vit_digits_fp16.onnx"
    assert ExportOptions(model="faster_vit_digits", name="mine").onnx_path.name == "mine.onnx"
    with pytest.raises(OptionsError, match="a file name stem, without folders"):
        ExportOptions(model="faster_vit_digits", name="a/b")


def test_advice_carries_every_option_of_the_export_it_follows(tmp_path):
    """An INT8 export with every option it can take set away from its default: the re-export
    command the toolkit prints (the builder's, DeepStream's), parsed by fastervit-export's own
    parser, gives the same options but the flags it names."""
    from fastervit_trt.calibration.options import CalibrationOptions
    from fastervit_trt.cli.common import options_from
    from fastervit_trt.cli.export import parser
    from fastervit_trt.sidecar import export_command

    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"digit {i}" for i in range(10)))
    argv = [
        "--variant", "faster_vit_digits", "--checkpoint", str(DIGITS), "--class-names", str(names),
        "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.25", "0.3", "--interpolation", "bilinear",
        "--crop-pct", "0.95", "--crop-mode", "center", "--weights", "model", "--exact-preprocess",
        "--precision", "int8", "--input", "pixels", "--batch", "1,2,4", "--opset", "18", "--seed", "3",
        "--output-dir", str(tmp_path / "out"), "--name", "my_digits", "--calib-images", "12",
        "--calib-batch", "4", "--calib-method", "percentile", "--calib-percentile", "99.9",
        "--qdq-base", "fp32", "--residual-qdq", "off", "--attention-qdq", "on", "--bias-correction", "off",
        "--calib-heldout", "4", "--no-speed",
    ]  # fmt: skip
    assert export_main([*argv, "--no-engine", "--quiet"]) == 0
    asked = parser().parse_args(argv)
    metadata = json.loads((tmp_path / "out" / "my_digits.report.json").read_text())

    def parsed(command: str):
        args = parser().parse_args(command.split()[1:])
        return options_from(ExportOptions, args), options_from(CalibrationOptions, args)

    options, calib = options_from(ExportOptions, asked), options_from(CalibrationOptions, asked)
    out = tmp_path / "out"
    again = parsed(export_command(metadata, "int8", output_dir=out))
    assert again == (options, calib)  # the recorded argv is the export, every option of it
    fp16, fp16_calib = parsed(export_command(metadata, "fp16", output_dir=out))
    assert fp16 == replace(options, precision="fp16", name="my_digits_fp16")  # its own file
    assert fp16_calib == calib
    ds, _ = parsed(export_command(metadata, "int8", {"--softmax": [], "--crop-mode": ["squash"]}, out))
    assert ds == replace(options, softmax=True, transform=replace(options.transform, crop_mode="squash"))


def test_a_refused_cache_names_the_command_that_reuses_it(tmp_path, capsys):
    from fastervit_trt.calibration.options import CalibrationOptions
    from fastervit_trt.cli.common import options_from
    from fastervit_trt.cli.export import parser

    cache = tmp_path / "digits.cache"
    common = ["--variant", "faster_vit_digits", "--precision", "int8", "--calib-cache", str(cache), "--no-speed"]
    first = [*common, "--output-dir", str(tmp_path / "a"), "--calib-method", "percentile", "--calib-percentile", "99.9"]
    assert export_main([*first, "--calib-images", "12", "--calib-heldout", "4", "--no-engine", "--quiet"]) == 0
    second = [*common, "--output-dir", str(tmp_path / "b"), "--calib-heldout", "4", "--seed", "0"]
    capsys.readouterr()
    assert export_main([*second, "--no-engine", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "calibrated with other settings" in err and "--recalibrate" in err and err.count("\n") == 0
    command = err.split("to reuse it: ", 1)[1]
    args = parser().parse_args(command.split()[1:])
    asked = parser().parse_args(second)
    reused = options_from(CalibrationOptions, args)
    assert (reused.method, reused.percentile, reused.images) == ("percentile", 99.9, 12)
    assert replace(reused, method="entropy", percentile=99.99, images=256, data=Path(reused.data)) == replace(
        options_from(CalibrationOptions, asked), data=reused.data
    )
    assert options_from(ExportOptions, args) == options_from(ExportOptions, asked)
    assert export_main([*command.split()[1:], "--no-engine", "--quiet"]) == 0  # and it does reuse it


def test_one_count_of_unreadable_files_per_export(tmp_path):
    """The calibration and held-out splits each meet some of a folder's unreadable files; the
    export's lines and report give the one count of the folder's (both splits')."""
    import shutil

    from fastervit_trt.calibration.options import CalibrationOptions
    from fastervit_trt.export.quantized import export_quantized

    photos = sorted((Path(__file__).resolve().parents[1] / "calibration").glob("*.png"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(40):  # every 8th file (index 7, 15, ...) is held out
        target = folder / f"f{index:02d}.png"
        if index in (7, 10):  # one unreadable file in each split
            target.write_bytes(b"not a png")
        else:
            shutil.copy(photos[index % len(photos)], target)
    options = ExportOptions(model="faster_vit_digits", precision="int8", output_dir=tmp_path / "out")
    calib = CalibrationOptions(data=folder, images=16, heldout=4, no_speed=True)
    report = export_quantized(options, calib).report
    lines = [report["quantization"]["calibration_inputs_from"], report["accuracy"]["inputs"]]
    assert all("2 unreadable files skipped (f07.png, f10.png)" in line for line in lines), lines
