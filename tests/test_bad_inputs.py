"""Bad input, table-driven: every command refuses each invalid value with one line that names
the argument and the valid range, exit 2 (usage) or 1 (error), no traceback, no file written."""
from __future__ import annotations

import numpy as np
import pytest

from fastervit_trt import cli

# (command, argv, fragment of the one error line)
USAGE = [
    ("export", ["--calib-percentile", "0"], "--calib-percentile: 0 is out of range (valid: above 50 and at most 100)"),
    ("export", ["--calib-percentile", "-3"], "valid: above 50 and at most 100"),
    ("export", ["--calib-percentile", "150"], "valid: above 50 and at most 100"),
    ("export", ["--calib-heldout", "0"], "--calib-heldout: 0 is out of range (valid: at least 1)"),
    ("export", ["--calib-images", "-1"], "--calib-images"),
    ("export", ["--calib-batch", "0"], "--calib-batch"),
    ("export", ["--opset", "30"], "--opset: 30 is out of range (valid: 17 to 21)"),
    ("export", ["--opset", "16"], "valid: 17 to 21"),
    ("export", ["--accuracy-budget", "-1"], "--accuracy-budget"),
    ("export", ["--batch", "0,1,2"], "--batch"),
    ("export", ["--seed", "x"], "--seed: 'x' is not an integer"),
    ("build", ["x.onnx", "--workspace", "-1"], "--workspace: -1 is out of range (valid: at least 1)"),
    ("bench", ["--model", "x.onnx", "--batch", "0"], "--batch: expected positive batch sizes"),
    ("bench", ["--model", "x.onnx", "--iters", "0"], "--iters: 0 is out of range"),
    ("infer", ["x.jpg", "--model", "m.onnx", "--topk", "-2"], "--topk: -2 is out of range"),
    ("eval", ["--data", "d", "--model", "m.onnx", "--batch", "0"], "--batch: 0 is out of range"),
    ("eval", ["--data", "d", "--model", "m.onnx", "--limit", "-5"], "--limit: -5 is out of range"),
    ("triton", ["m.onnx", "--repo", "r", "--instances", "0"], "--instances: 0 is out of range"),
    ("triton", ["m.onnx", "--repo", "r", "--max-queue-delay-us", "-5"], "--max-queue-delay-us"),
]


@pytest.mark.parametrize("command,argv,fragment", USAGE, ids=[f"{c}{' '.join(a)}" for c, a, _ in USAGE])
def test_invalid_values_are_refused_by_the_parser(command, argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        getattr(cli, f"{command}_main")(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_npy_of_raw_pixels_is_refused(dtype, tmp_path, monkeypatch, capsys):
    """A uint8 array of pixels once calibrated a 31 % model with exit 0."""
    monkeypatch.chdir(tmp_path)
    np.save("pixels.npy", np.zeros((16, 3, 128, 128), dtype))
    code = cli.export_main(["--model", "faster_vit_digits", "--precision", "int8", "--calib-data", "pixels.npy",
                            "--output-dir", "out", "--no-engine", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "pixels.npy" in lines[0] and "float32" in lines[0], err
    assert not (tmp_path / "out").exists() or not any(p.suffix in (".onnx", ".cache") for p in (tmp_path / "out").iterdir())


def test_float64_npy_is_converted_and_held_out_inputs_are_independent(tmp_path, monkeypatch, capsys):
    """A float64 array calibrates (converted, with a warning); the accuracy figures come from the
    shipped photos, not from the array itself, so a badly scaled array cannot hide."""
    from fastervit_trt.calibration.pipeline import CalibrationOptions, export_int8
    from fastervit_trt.export.pipeline import ExportOptions
    np.save(tmp_path / "inputs.npy", np.random.default_rng(0).standard_normal((16, 3, 128, 128)))
    result = export_int8(ExportOptions(model="faster_vit_digits", precision="int8", output_dir=str(tmp_path / "out")),
                         CalibrationOptions(data=str(tmp_path / "inputs.npy"), images=16, batch=8,
                                            cache=str(tmp_path / "c.cache")))
    assert (tmp_path / "c.cache").is_file()
    assert "calibration" in result.report["accuracy"]["inputs"] and "inputs.npy" not in result.report["accuracy"]["inputs"]


def test_python_api_takes_str_paths(tmp_path):
    from fastervit_trt.calibration.pipeline import CalibrationOptions
    from fastervit_trt.engines import BuildConfig
    from fastervit_trt.export.pipeline import ExportOptions
    from pathlib import Path
    options = ExportOptions(output_dir="out", checkpoint="w.pth")
    assert options.onnx_path == Path("out/faster_vit_0_224_fp16.onnx") and options.checkpoint == Path("w.pth")
    calib = CalibrationOptions(data="photos", cache="c.cache")
    assert calib.cache_path(options) == Path("c.cache") and calib.data == Path("photos")
    assert BuildConfig(timing_cache="t.cache").timing_cache == Path("t.cache")
