"""Bad input, table-driven: every command refuses each invalid value with one line that names
the argument and the valid range, exit 2 (usage) or 1 (error), no traceback, no file written."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fastervit_trt import cli

# What every case saw; tests/conftest.py prints it at the end of the run.
TALLY: Counter = Counter()


def record(err: str, left: list) -> None:
    """Count one bad-input case: its stderr and the files it left behind (should be none)."""
    TALLY["cases"] += 1
    TALLY["tracebacks"] += "Traceback" in err
    TALLY["files left behind"] += len(left)


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
    ("export", ["--resolution", "0", "0"], "--resolution: 0 is out of range (valid: at least 1)"),
    ("build", ["x.onnx", "--workspace", "-1"], "--workspace: -1 is out of range (valid: at least 1)"),
    ("build", ["x.onnx", "--compute-capability", "sm89"], "expected compute capabilities like 8.9 or 8.9,12.0"),
    ("export", ["--precision", "fp4"], "invalid choice: 'fp4'"),
    ("export", ["--features", "0,5"], "--features: expected distinct stages among 1,2,3,4"),
    ("export", ["--features", "2,2"], "--features: expected distinct stages among 1,2,3,4"),
    ("bench", ["--model", "x.onnx", "--batch", "0"], "--batch: expected positive batch sizes"),
    ("bench", ["--model", "x.onnx", "--iters", "0"], "--iters: 0 is out of range"),
    ("infer", ["x.jpg", "--model", "m.onnx", "--topk", "-2"], "--topk: -2 is out of range"),
    ("eval", ["--data", "d", "--model", "m.onnx", "--batch", "0"], "--batch: 0 is out of range"),
    ("eval", ["--data", "d", "--model", "m.onnx", "--limit", "-5"], "--limit: -5 is out of range"),
    ("triton", ["m.onnx", "--repo", "r", "--instances", "0"], "--instances: 0 is out of range"),
    ("triton", ["m.onnx", "--repo", "r", "--max-queue-delay-us", "-5"], "--max-queue-delay-us"),
    ("serve", ["--model", "m.onnx", "--port", "70000"], "--port: 70000 is out of range (valid: 0 to 65535)"),
    ("serve", ["--model", "m.onnx", "--max-queue", "0"], "--max-queue: 0 is out of range"),
    ("serve", ["--model", "m.onnx", "--timeout-s", "0"], "--timeout-s: 0 is out of range (valid: above 0)"),
    ("serve", ["--model", "m.onnx", "--max-delay-ms", "-1"], "--max-delay-ms: -1 is out of range"),
    ("deepstream", ["m.onnx", "--out", "d", "--threshold", "2"], "--threshold: 2 is out of range (valid: 0 to 1)"),
    ("deepstream", ["m.onnx", "--out", "d", "--process-mode", "tertiary"], "invalid choice: 'tertiary'"),
]


@pytest.mark.parametrize("command,argv,fragment", USAGE, ids=[f"{c}{' '.join(a)}" for c, a, _ in USAGE])
def test_invalid_values_are_refused_by_the_parser(command, argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        getattr(cli, f"{command}_main")(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    record(err, list(tmp_path.iterdir()))
    assert exit_info.value.code == 2 and len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_npy_of_raw_pixels_is_refused(dtype, tmp_path, monkeypatch, capsys):
    """A uint8 array of pixels once calibrated a 31 % model with exit 0."""
    monkeypatch.chdir(tmp_path)
    np.save("pixels.npy", np.zeros((16, 3, 128, 128), dtype))
    code = cli.export_main(
        [
            "--variant",
            "faster_vit_digits",
            "--precision",
            "int8",
            "--calib-data",
            "pixels.npy",
            "--output-dir",
            "out",
            "--no-engine",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    record(err, _left(tmp_path, tmp_path / "pixels.npy"))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "pixels.npy" in lines[0] and "float32" in lines[0], err
    assert not (tmp_path / "out").exists() or not any(
        p.suffix in (".onnx", ".cache") for p in (tmp_path / "out").iterdir()
    )


@pytest.mark.parametrize(
    "model,size,nearest",
    [("faster_vit_0_any_res", "230 230", "224 224"), ("faster_vit_0_224", "250 250", "224 224 or 448 448")],
)
def test_resolution_the_reference_cannot_run_names_the_nearest_valid_ones(model, size, nearest, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.export_main(["--model", model, "--resolution", *size.split(), "--output-dir", str(out), "--quiet"])
    _one_error(
        code,
        capsys.readouterr().err,
        f"resolution {size.replace(' ', 'x')}",
        f"nearest valid --resolution: {nearest}",
        left=_left(tmp_path),
    )
    assert not out.exists()


@pytest.mark.slow
def test_float64_npy_is_converted_and_held_out_inputs_are_independent(tmp_path, monkeypatch, capsys):
    """A float64 array calibrates (converted, with a warning); the accuracy figures come from the
    shipped photos, not from the array itself, so a badly scaled array cannot hide."""
    from fastervit_trt.export.pipeline import ExportOptions
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    np.save(tmp_path / "inputs.npy", np.random.default_rng(0).standard_normal((16, 3, 128, 128)))
    result = export_quantized(
        ExportOptions(model="faster_vit_digits", precision="int8", output_dir=str(tmp_path / "out")),
        CalibrationOptions(data=str(tmp_path / "inputs.npy"), images=16, batch=8, cache=str(tmp_path / "c.cache")),
    )
    assert (tmp_path / "c.cache").is_file()
    assert (
        "calibration" in result.report["accuracy"]["inputs"] and "inputs.npy" not in result.report["accuracy"]["inputs"]
    )


def test_python_api_takes_str_paths(tmp_path):
    from pathlib import Path

    from fastervit_trt.calibration.options import CalibrationOptions
    from fastervit_trt.engines import BuildConfig
    from fastervit_trt.export.pipeline import ExportOptions

    options = ExportOptions(model="faster_vit_0_224", output_dir="out", checkpoint="w.pth")
    assert options.onnx_path == Path("out/faster_vit_0_224_fp16.onnx") and options.checkpoint == Path("w.pth")
    calib = CalibrationOptions(data="photos", cache="c.cache")
    assert calib.cache_path(options) == Path("c.cache") and calib.data == Path("photos")
    assert BuildConfig(timing_cache="t.cache").timing_cache == Path("t.cache")


# ---------------------------------------------------------------- interrupted = exit 130, nothing new


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.mark.parametrize(
    "precision,stage", [("fp32", "validate"), ("int8", "_accuracy"), ("int8", "collect_histograms")]
)
@pytest.mark.slow
def test_ctrl_c_at_the_last_steps_leaves_nothing_new(precision, stage, tmp_path, monkeypatch, capsys):
    """Ctrl-C during validation (or the last INT8 step) once left an unvalidated ONNX and a
    cache without a report, and the next run refused "already exists"."""
    from fastervit_trt.export import pipeline
    from fastervit_trt.export import quantized as int8_pipeline

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    module = pipeline if stage == "validate" else int8_pipeline
    monkeypatch.setattr(module, stage, interrupt)
    out = tmp_path / "out"
    code = cli.export_main(
        [
            "--variant",
            "faster_vit_digits",
            "--precision",
            precision,
            "--calib-images",
            "16",
            "--output-dir",
            str(out),
            "--no-engine",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    record(err, _left(out) if out.exists() else [])
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _visible(out) == []
    monkeypatch.undo()
    assert (
        cli.export_main(
            [
                "--variant",
                "faster_vit_digits",
                "--precision",
                precision,
                "--calib-images",
                "16",
                "--output-dir",
                str(out),
                "--no-engine",
                "--quiet",
            ]
        )
        == 0
    )


def test_build_output_must_be_an_engine_file(tmp_path, capsys):
    """--output m.json once reported success while the sidecar overwrote the engine."""
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"placeholder")  # the output is checked before the ONNX is read
    for output in (tmp_path / "m.json", tmp_path):
        code = cli.build_main([str(onnx_path), "--output", str(output), "--force", "--quiet"])
        err = capsys.readouterr().err
        record(err, _left(tmp_path, onnx_path))
        assert code == 1 and "must be a file ending in .engine or .plan" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_ctrl_c_during_an_engine_build_exits_130_without_an_engine(tmp_path, exported):
    """TensorRT swallowed the KeyboardInterrupt and reported "failed to build"."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import has_tensorrt

    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    onnx_path = exported("fp32").onnx_path
    engine = tmp_path / "e.engine"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from fastervit_trt.cli import build_main; sys.exit(build_main(sys.argv[1:]))",
            str(onnx_path),
            "--output",
            str(engine),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in child.stderr:  # wait until the builder runs
        if "builder:" in line:
            break
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    rest = child.stderr.read()
    record(rest, [p for p in (engine, engine.with_suffix(".json")) if p.exists()])
    assert child.wait(timeout=120) == 130, rest
    assert "interrupted" in rest and "failed to build" not in rest
    assert not engine.exists() and not engine.with_suffix(".json").exists()


# ---------------------------------------------------------------- foreign ONNX files (other tools' exports)


def _foreign_onnx(path, input_shape, output: str = "float", batch_out=None):
    """A tiny classifier as other tools write them: pooled channels as logits (or their ArgMax)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    out_name, out_type, out_shape = "logits", TensorProto.FLOAT, [batch_out or "N", 3]
    if output == "argmax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
        out_name, out_type, out_shape = "label", TensorProto.INT64, [batch_out or "N"]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(out_name, out_type, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _images(folder, count=3):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        Image.new("RGB", (16, 12), (40 * i, 90, 200)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _left(folder, *inputs):
    """Files under ``folder`` (hidden ones included) other than the case's own inputs."""
    keep = {str(p) for p in inputs}
    return [p for p in folder.rglob("*") if p.is_file() and not any(str(p).startswith(k) for k in keep)]


def _one_error(code, err, *fragments, left=()):
    record(err, list(left))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.mark.parametrize(
    "command,argv,fragment",
    [
        ("serve", ["--model", "missing.onnx"], "missing.onnx: no such model file"),
        ("serve", ["--model", "w.pth"], "w.pth: expected an .engine/.plan or .onnx model"),
        ("deepstream", ["missing.onnx", "--out", "ds"], "missing.onnx: no such model file"),
        ("deepstream", ["w.pth", "--out", "ds"], "w.pth: expected an .onnx export or an .engine with its sidecar"),
    ],
)
def test_serve_and_deepstream_refuse_a_model_they_cannot_read(command, argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"weights")
    code = getattr(cli, f"{command}_main")(argv)
    _one_error(code, capsys.readouterr().err, fragment, left=_left(tmp_path, tmp_path / "w.pth"))


def test_fixed_batch_onnx_runs_one_image_at_a_time(tmp_path, capsys):
    model = _foreign_onnx(tmp_path / "fixed.onnx", [1, 3, 8, 8], batch_out=1)
    code = cli.infer_main([*_images(tmp_path / "img"), "--model", str(model), "--topk", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("%") == 3  # three images, one prediction each


FOREIGN = [
    ("vector", dict(input_shape=["N", 10]), "shape ['N', 10]"),
    ("symbolic_hw", dict(input_shape=["N", 3, "H", "W"]), "fixed C, H, W"),
    ("no_shape", dict(input_shape=None), "shape unknown"),
    ("argmax", dict(input_shape=["N", 3, 8, 8], output="argmax"), "tensor(int64)"),
]


@pytest.mark.parametrize("name,spec,fragment", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_foreign_onnx_gets_one_line_from_infer(name, spec, fragment, tmp_path, capsys):
    model = _foreign_onnx(tmp_path / f"{name}.onnx", **spec)
    code = cli.infer_main([*_images(tmp_path / "img", 1), "--model", str(model)])
    _one_error(code, capsys.readouterr().err, f"{name}.onnx", fragment, left=_left(tmp_path, model, tmp_path / "img"))


@pytest.mark.parametrize(
    "name,spec",
    [
        ("fixed", dict(input_shape=[1, 3, 8, 8], batch_out=1)),
        ("symbolic_hw", dict(input_shape=["N", 3, "H", "W"])),
        ("no_shape", dict(input_shape=None)),
    ],
)
def test_foreign_onnx_gets_one_line_from_triton(name, spec, tmp_path, capsys):
    model = _foreign_onnx(tmp_path / f"{name}.onnx", **spec)
    code = cli.triton_main([str(model), "--repo", str(tmp_path / "repo")])
    _one_error(code, capsys.readouterr().err, f"{name}.onnx", "batch axis", left=_left(tmp_path, model))
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").rglob("*.pbtxt")) == []


@pytest.mark.parametrize(
    "name,spec,fragment",
    [
        ("symbolic_hw", dict(input_shape=["N", 3, "H", "W"]), "dynamic non-batch"),
        ("no_shape", dict(input_shape=None), "known rank"),
    ],
)
def test_foreign_onnx_gets_one_line_from_build(name, spec, fragment, tmp_path, capsys):
    model = _foreign_onnx(tmp_path / f"{name}.onnx", **spec)
    code = cli.build_main([str(model), "--output", str(tmp_path / "e.engine"), "--quiet"])
    _one_error(code, capsys.readouterr().err, f"{name}.onnx", fragment, left=_left(tmp_path, model))
    assert not (tmp_path / "e.engine").exists()


# ---------------------------------------------------------------- Triton repositories


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--name", "../escaped"], "stays a folder inside --repo"),
        (["--name", "a/b"], "not start"),
        (["--kind", "cpu"], None),
    ],
)
def test_triton_names_stay_inside_the_repository(argv, fragment, exported, tmp_path, capsys):
    onnx_path = exported("fp32").onnx_path
    code = cli.triton_main([str(onnx_path), "--repo", str(tmp_path / "repo"), *argv])
    err = capsys.readouterr().err
    if fragment is None:  # an ONNX model may run on CPUs
        assert code == 0, err
        return
    _one_error(code, err, "--name", left=_left(tmp_path))
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "repo").exists()


def test_triton_copy_on_a_full_disk_leaves_nothing_and_reruns(exported, tmp_path, monkeypatch, capsys):
    import errno
    import shutil

    onnx_path = exported("fp32").onnx_path
    real = shutil.copyfile

    def full_disk(src, dst, **kwargs):
        with open(dst, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    repo = tmp_path / "repo"
    code = cli.triton_main([str(onnx_path), "--repo", str(repo)])
    _one_error(code, capsys.readouterr().err, "No space left on device", "free some space", left=_left(repo))
    assert [p for p in repo.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(shutil, "copyfile", real)
    assert cli.triton_main([str(onnx_path), "--repo", str(repo)]) == 0
    assert "model.onnx" in capsys.readouterr().out


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    from fastervit_trt.graph import weights

    def full_disk(self, model, path, external):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(weights.WeightFile, "save", full_disk)
    out = tmp_path / "out"
    code = cli.export_main(
        ["--variant", "faster_vit_digits", "--precision", "fp32", "--output-dir", str(out), "--no-engine", "--quiet"]
    )
    _one_error(code, capsys.readouterr().err, "No space left on device", left=_left(out) if out.exists() else [])
    assert [p for p in out.rglob("*")] == []


@pytest.fixture()
def truncated_engine(exported, tmp_path):
    from tests.conftest import has_tensorrt

    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    engine = tmp_path / "e.engine"
    assert cli.build_main([str(exported("fp32").onnx_path), "--output", str(engine), "--quiet"]) == 0
    engine.write_bytes(engine.read_bytes()[:1_000_000])
    return engine


@pytest.mark.slow
def test_triton_and_inspect_refuse_an_engine_that_does_not_match_its_sidecar(truncated_engine, tmp_path, capsys):
    """A truncated engine once became a 1 MB model.plan with exit 0."""
    capsys.readouterr()
    code = cli.triton_main([str(truncated_engine), "--repo", str(tmp_path / "repo")])
    _one_error(
        code,
        capsys.readouterr().err,
        "sha256 does not match",
        "fastervit-build",
        left=_left(tmp_path, truncated_engine, truncated_engine.with_suffix(".json")),
    )
    assert not (tmp_path / "repo").exists()
    code = cli.inspect_main([str(truncated_engine)])
    _one_error(
        code,
        capsys.readouterr().err,
        "sha256 does not match",
        left=_left(tmp_path, truncated_engine, truncated_engine.with_suffix(".json")),
    )


@pytest.mark.slow
def test_rebuild_hint_targets_the_engine_where_it_is(truncated_engine, tmp_path, capsys, monkeypatch):
    """The hint for a copied engine once rebuilt over the original, with paths relative to
    another folder; it is now shell-quoted and names this engine and an absolute ONNX."""
    import shlex

    copy = tmp_path / "copied dir" / "e.engine"
    copy.parent.mkdir()
    copy.write_bytes(truncated_engine.read_bytes())
    copy.with_suffix(".json").write_text(truncated_engine.with_suffix(".json").read_text())
    monkeypatch.chdir(copy.parent)
    capsys.readouterr()
    code = cli.infer_main(["x.jpg", "--model", str(copy)])
    line = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")][0]
    command = shlex.split(line.split("rebuild it: ", 1)[1])
    assert code == 1 and command[command.index("--output") + 1] == str(copy)
    assert command[1].startswith("/") and command[command.index("--backend") + 1]


# ---------------------------------------------------------------- what the files and logs say


@pytest.mark.slow
def test_recorded_io_dtype_is_the_graphs(tmp_path):
    """--io-dtype fp16 --qdq-base fp32 once recorded a float16 input the graph does not have."""
    import json

    import onnx

    from fastervit_trt.sidecar import read_metadata

    out = tmp_path / "out"
    assert (
        cli.export_main(
            [
                "--variant",
                "faster_vit_digits",
                "--precision",
                "int8",
                "--io-dtype",
                "fp16",
                "--qdq-base",
                "fp32",
                "--calib-images",
                "16",
                "--output-dir",
                str(out),
                "--no-engine",
                "--quiet",
            ]
        )
        == 0
    )
    model = onnx.load(str(out / "faster_vit_digits_int8.onnx"))
    graph_type = onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type).name
    assert read_metadata(model)["input"]["dtype"] == graph_type == "float32"
    report = json.loads((out / "faster_vit_digits_int8.report.json").read_text())
    assert report["input"]["dtype"] == "float32"


@pytest.mark.slow
def test_progress_in_a_log_is_plain_lines(tmp_path):
    """Progress bars wrote carriage returns into non-terminal logs."""
    import io

    from fastervit_trt.export.pipeline import ExportOptions
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    log = io.StringIO()
    export_quantized(
        ExportOptions(model="faster_vit_digits", precision="int8", output_dir=tmp_path),
        CalibrationOptions(images=16, batch=4, no_speed=True),  # the steps as they were: 7 without timing
        stream=log,
    )
    text = log.getvalue()
    assert "\r" not in text and "calibrating: 16/16 img" in text and "[1/7] building faster_vit_digits" in text


def test_help_shows_defaults_as_typed(capsys):
    with pytest.raises(SystemExit):
        cli.export_main(["--help"])
    out = capsys.readouterr().out
    assert "(default: 1,8,32)" in out and "(1, 8, 32)" not in out
