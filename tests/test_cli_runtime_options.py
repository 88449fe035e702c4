"""The one runtime group of infer, bench, eval, serve and batch: the same flags, parsed into the
same ``RuntimeOptions``, and each command saying which provider and device ran."""

from __future__ import annotations

import json

import pytest

from fastervit_trt.cli import batch, bench, eval, infer, serve
from fastervit_trt.cli.common import runtime_options
from fastervit_trt.runtime import RuntimeOptions

COMMANDS = {
    "infer": (infer, ["x.jpg", "--model", "m.onnx"]),
    "bench": (bench, ["--model", "m.onnx"]),
    "eval": (eval, ["--data", "d"]),
    "serve": (serve, ["--model", "m.onnx"]),
    "batch": (batch, ["x.jpg", "--model", "m.onnx", "--output", "out"]),
}
FLAGS = ["--backend", "onnxruntime", "--provider", "cuda", "--contexts", "3", "--cuda-graphs", "--device", "1"]


@pytest.fixture(scope="module")
def digit_image(digits_folders):
    return sorted(digits_folders["heldout"].glob("7/*.png"))[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_the_runtime_group(command):
    module, required = COMMANDS[command]
    assert runtime_options(module.parser().parse_args(required)) == RuntimeOptions()
    given = runtime_options(module.parser().parse_args([*required, *FLAGS]))
    assert given == RuntimeOptions(backend="onnxruntime", provider="cuda", contexts=3, cuda_graphs=True, device=1)


def test_providers_by_their_own_name_and_unknown_ones(capsys):
    parser = infer.parser()
    assert parser.parse_args(["x.jpg", "--model", "m", "--provider", "CUDAExecutionProvider"]).provider == (
        "CUDAExecutionProvider"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["x.jpg", "--model", "m", "--provider", "gpu"])
    assert "'gpu': expected auto, tensorrt, cuda, cpu or an ONNX Runtime provider's name" in capsys.readouterr().err


def test_bench_keeps_the_old_cuda_graph_spelling(capsys):
    args = bench.parser().parse_args(["--model", "m.engine", "--cuda-graph"])
    assert runtime_options(args).cuda_graphs is True
    assert "--cuda-graph is now --cuda-graphs" in capsys.readouterr().err


def test_infer_says_where_the_model_runs(digits_fp32_onnx, digit_image, capsys):
    assert infer.main([str(digit_image), "--model", str(digits_fp32_onnx), "--provider", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["top"][0]["name"] == "7"
    assert err == f"{digits_fp32_onnx.name}: classifier, 10 classes, onnxruntime (CPUExecutionProvider) on cpu\n"


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--cuda-graphs"], "CUDA graphs apply to TensorRT engines; pass an .engine"),
        (["--provider", "tensorrt"], "'tensorrt' (TensorrtExecutionProvider) is not in this onnxruntime"),
        (["--backend", "tensorrt"], "the tensorrt backend runs TensorRT engines (.engine/.plan), not ONNX files"),
    ],
)
def test_options_that_cannot_apply_are_one_line(digits_fp32_onnx, digit_image, flags, fragment, capsys):
    assert infer.main([str(digit_image), "--model", str(digits_fp32_onnx), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


def test_bench_rows_name_the_provider_and_device(digits_fp32_onnx, capsys):
    argv = ["--model", str(digits_fp32_onnx), "--batch-sizes", "1", "--iters", "2", "--warmup", "0"]
    assert bench.main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["provider"], r["device"]) for r in rows] == [("CPUExecutionProvider", "cpu")]
    assert bench.main(argv) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["model", "provider", "device"]
    assert row.split()[:3] == [digits_fp32_onnx.name, "CPUExecutionProvider", "cpu"]


def test_batch_refuses_a_device_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Ray gives each actor its own GPU as device 0: the command says so in one line, Ray untouched."""
    import ray

    def started(*args, **kwargs):
        raise AssertionError("Ray was started before the options were checked")

    monkeypatch.setattr(ray, "init", started)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    code = batch.main(["x.jpg", "--model", str(model), "--output", str(tmp_path / "out"), "--device", "1"])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        "error: device 1: Ray assigns each actor its GPU (CUDA_VISIBLE_DEVICES: device 0 inside it); drop --device"
    )
