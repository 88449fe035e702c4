"""A quantized graph for the runtime that runs it (``--target``), attention quantized, and the
speed line every quantized export prints: on the trained digits fixture (seconds) and on
faster_vit_0_224 (slow)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from fastervit_trt.calibration.qdq import quantized_attention
from fastervit_trt.cli import export_main
from fastervit_trt.export.quantized import CalibrationOptions, ExportOptions, export_quantized
from fastervit_trt.graph import timing
from fastervit_trt.runtime import load
from tests.calibration.test_speed import Clock, CostTimer
from tests.conftest import requires_tensorrt

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger"}


def _optimized_ops(path: Path, tmp_path: Path) -> list[str]:
    """The op types of ONNX Runtime's optimized CPU graph of ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]


def _export_cli(folder: Path, *argv: str) -> dict:
    args = ["--precision", "int8", "--output-dir", str(folder), "--calib-images", "16", "--calib-heldout", "4"]
    assert export_main(["--variant", "faster_vit_digits", *args, "--quiet", *argv]) == 0
    return json.loads(next(folder.glob("*.report.json")).read_text())


def test_cpu_target_writes_a_graph_onnx_runtime_runs_on_integer_kernels(tmp_path, capsys, caplog):
    report = _export_cli(tmp_path, "--target", "onnxruntime-cpu")
    out = capsys.readouterr().out
    path = tmp_path / "faster_vit_digits_int8_cpu.onnx"
    assert path.is_file() and not list(tmp_path.glob("*.engine"))  # a graph for ONNX Runtime: no engine
    assert "engine      none: a --target onnxruntime-cpu graph runs on ONNX Runtime" in out
    assert "trtexec" not in out
    quant = report["quantization"]
    assert quant["target"] == "onnxruntime-cpu" and quant["qdq_base"] == "fp32"
    assert quant["attention_products"] == quant["attention_products_in_graph"] > 0  # on by default here
    assert quant["layer_outputs"] > 0
    assert report["accuracy"]["attention"]["quantized"]
    ops = _optimized_ops(path, tmp_path)
    assert {"QLinearConv", "MatMulIntegerToFloat"} <= set(ops) and "Conv" not in ops and "Cast" not in ops
    assert report["accuracy"]["quantized_vs_fp32_ort_int8_kernels"]["mean_cosine"] > 0.999
    speed = report["speed"]
    assert set(speed["speedup_vs_fp32"]) == {"1", "8"} and speed["runtime"].startswith("onnxruntime")
    assert f"speed       {speed['summary']}" in out and speed["summary"].startswith("INT8 ")
    assert "x FP32 at batch 1, " in speed["summary"] and speed["summary"].endswith("median of 5")
    with caplog.at_level(logging.WARNING):
        load(path, backend="onnxruntime", provider="cpu")
    assert "shaped for" not in caplog.text  # the runtime's wrong-graph warning is for the other target


def test_tensorrt_graph_on_the_cpu_provider_is_named_the_wrong_graph(tmp_path, caplog):
    _export_cli(tmp_path, "--no-engine", "--no-speed")
    with caplog.at_level(logging.WARNING):
        load(tmp_path / "faster_vit_digits_int8.onnx", backend="onnxruntime", provider="cpu")
    assert (
        "faster_vit_digits_int8.onnx: this INT8 graph is shaped for tensorrt and runs slower than FP32 on "
        "ONNX Runtime's CPU provider; export one for the CPU: fastervit-export --precision int8 --target "
        "onnxruntime-cpu"
    ) in caplog.text
    assert caplog.text.count("shaped for") == 1


def test_no_speed_skips_the_timing(tmp_path, capsys):
    report = _export_cli(tmp_path, "--no-engine", "--no-speed")
    assert "speed" not in report and "timing INT8" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "onnxruntime-cpu", "--qdq-base", "fp16"], "drop --qdq-base fp16"),
        (["--target", "onnxruntime-cpu", "--residual-qdq", "on"], "--residual-qdq on is TensorRT's residual fusion"),
        (["--target", "onnxruntime-cpu", "--precision", "fp8"], "--target onnxruntime-cpu shapes a quantized graph"),
        (["--target", "onnxruntime-cpu", "--precision", "fp32"], "not fp32: pass --precision int8"),
    ],
)
def test_options_a_target_cannot_honour_are_refused(tmp_path, capsys, argv, message):
    args = ["--variant", "faster_vit_digits", "--precision", "int8", "--output-dir", str(tmp_path), "--quiet"]
    assert export_main([*args, *argv]) == 1
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_slower_quantized_graph_warns_and_names_the_faster_option(tmp_path, monkeypatch, caplog):
    """A stand-in runtime on which the INT8 graph takes twice FP32's time (the default TensorRT
    graph on ONNX Runtime's CPU provider: 0.45-0.6x on faster_vit_0_224)."""
    clock = Clock()
    monkeypatch.setattr(timing, "time", clock)
    timer = CostTimer(clock, lambda m: 1.0)
    timer.cost = lambda m: 0.1 if timer.loaded[-1].name == "fp32.onnx" else 0.2
    options = ExportOptions(model="faster_vit_digits", precision="int8", output_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        report = export_quantized(options, CalibrationOptions(images=16, heldout=4), timer=timer).report
    speed = report["speed"]
    assert speed["slower_than_fp32"] and speed["speedup_vs_fp32"] == {"1": {"int8": 0.5}, "8": {"int8": 0.5}}
    assert speed["summary"] == ("INT8 0.50x FP32 at batch 1, 0.50x FP32 at batch 8 on stand-in runtime, median of 5")
    assert (
        speed["faster_graph"] == "a graph for this runtime: fastervit-export --precision int8 --target onnxruntime-cpu"
    )
    assert "INT8 runs slower than FP32 on stand-in runtime (0.50x at batch 1, 0.50x at batch 8)" in caplog.text


@requires_tensorrt
def test_attention_quantized_for_tensorrt_builds(tmp_path):
    """TensorRT's placement for fused attention: both BMM inputs and the softmax output
    through Q/DQ, parsed and built by TensorRT-RTX."""
    from fastervit_trt.engines import BuildConfig, build_engine

    report = _export_cli(tmp_path, "--attention-qdq", "on", "--no-engine", "--no-speed")
    path = tmp_path / "faster_vit_digits_int8.onnx"
    quantized, products = quantized_attention(onnx.load(str(path), load_external_data=False))
    assert quantized == products and len(products) == report["quantization"]["attention_products"] > 0
    attention = report["accuracy"]["attention"]
    assert attention["quantized"] and attention["mean_cosine_without"] > 0.99 and attention["mean_cosine_with"] > 0.99
    sidecar = build_engine(path, tmp_path / "m.engine", BuildConfig(batch=(1, 2, 4)))
    assert sidecar["engine"]["bytes"] > 0


@pytest.mark.slow
def test_faster_vit_0_cpu_graph_meets_the_accuracy_goal(tmp_path, capsys):
    """faster_vit_0_224 for ONNX Runtime's CPU: cosine >= 0.9995 and top-1 agreement >= 99 % on
    held-out photos (ONNX Runtime's own quantizer: 0.9993, 90.6 %), its integer kernels fused."""
    args = ["--precision", "int8", "--target", "onnxruntime-cpu", "--output-dir", str(tmp_path)]
    assert export_main([*args, "--calib-images", "64", "--quiet"]) == 0
    report = json.loads((tmp_path / "faster_vit_0_224_int8_cpu.report.json").read_text())
    kernels = report["accuracy"]["quantized_vs_fp32_ort_int8_kernels"]
    assert kernels["mean_cosine"] >= 0.9995 and kernels["top1_agreement"] >= 0.99, report["accuracy"]["summary"]
    assert report["quantization"]["attention_products"] == 34
    ops = _optimized_ops(tmp_path / "faster_vit_0_224_int8_cpu.onnx", tmp_path)
    assert ops.count("QLinearConv") == 16 and "Conv" not in ops and "Cast" not in ops
    assert sum(op in INTEGER_OPS for op in ops) >= 16 + 100  # every Conv and MatMul but the head
