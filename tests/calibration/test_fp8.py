"""--precision fp8: FLOAT8E4M3FN Q/DQ with scales amax / 448, checked against an E4M3
emulation in NumPy (ml_dtypes) and end to end on the trained digits fixture."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from fastervit_trt.calibration.qdq import insert_qdq, quant_targets, to_opset
from fastervit_trt.compare import compare
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.inspect import inspect_onnx
from fastervit_trt.runtime import load
from tests.calibration.test_qdq import W1, W2, _graph
from tests.conftest import requires_tensorrt

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "faster_vit_digits.pth"


def _e4m3(values: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """Quantize-dequantize through E4M3 in float64: the independent reference."""
    scaled = np.clip(values / scale, -448, 448)
    return scaled.astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * scale


def test_fp8_qdq_arithmetic_matches_an_e4m3_emulation():
    model = to_opset(_graph(), 19)
    quantized = insert_qdq(model, quant_targets(model), {"h": 3.0}, {"W1": W1, "W2": W2}, fmt="fp8")
    weights = {t.name: t for t in quantized.graph.initializer}
    assert weights["W1_fp8"].data_type == weights["W2_fp8"].data_type == TensorProto.FLOAT8E4M3FN
    assert weights["qdq_zero_point"].data_type == TensorProto.FLOAT8E4M3FN
    np.testing.assert_allclose(
        onnx.numpy_helper.to_array(weights["W1_wscale"]), np.abs(W1).max(axis=0) / 448, rtol=1e-6
    )  # per output channel
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2, _ = session.run(None, {"x": x})
    h = _e4m3(_layer_norm(x).astype(np.float64), np.float32(3.0 / 448))
    w1 = _e4m3(W1.astype(np.float64), (np.abs(W1).max(axis=0) / 448).astype(np.float32))
    w2 = _e4m3(W2.astype(np.float64), (np.abs(W2).max(axis=0) / 448).astype(np.float32))
    from tests.calibration.test_qdq import B1

    np.testing.assert_allclose(y1, h @ w1 + B1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y2, h @ w2, rtol=1e-4, atol=1e-4)
    assert np.abs(y2 - _graph_output(x)).max() > 1e-3  # quantization did change the result


def _graph_output(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[1]


def _layer_norm(x: np.ndarray) -> np.ndarray:
    """The float graph's LayerNorm output as ONNX Runtime computes it (what gets quantized)."""
    model = _graph()
    model.graph.output.append(onnx.helper.make_tensor_value_info("h", TensorProto.FLOAT, [5, 8]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["h"], {"x": x})[0]


@pytest.fixture(scope="module")
def digits_fp8(tmp_path_factory, digits_folders):
    out = tmp_path_factory.mktemp("fp8")
    options = dict(model="faster_vit_digits", checkpoint=CHECKPOINT, batch=(1, 4, 16), output_dir=out)
    fp32 = export_model(ExportOptions(precision="fp32", **options))
    calib = CalibrationOptions(
        data=digits_folders["train"],
        images=128,
        batch=16,
        heldout=16,
        method="minmax",
        sensitivity=True,
        accuracy_budget=0.5,
    )
    return fp32, export_quantized(ExportOptions(precision="fp8", **options), calib)


@pytest.mark.slow
def test_fp8_export_of_the_trained_fixture(digits_fp8, digits_folders):
    fp32, fp8 = digits_fp8
    assert fp8.onnx_path.name == "faster_vit_digits_fp8.onnx"
    model = onnx.load(str(fp8.onnx_path))
    ops = Counter(n.op_type for n in model.graph.node)
    layers = fp8.report["quantization"]["layers"]
    assert fp8.report["quantization"]["format"] == "fp8" and layers > 10
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + layers
    kept = fp8.report["quantization"]["kept_in_float_by_default"]  # the layers in series stay in FP16
    assert "/head/Gemm" in kept and any("patch_embed" in k for k in kept) and any("downsample" in k for k in kept)
    assert all(("patch_embed" in k) or ("downsample" in k) or k == "/head/Gemm" for k in kept), kept
    assert fp8.report["quantization"]["residual_inputs"] == 0
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [19]
    info = inspect_onnx(fp8.onnx_path)
    assert info["precision"] == "fp8" and info["qdq_nodes"] == ops["QuantizeLinear"] + ops["DequantizeLinear"]
    assert info["fp8_weight_share"] > 0.5
    assert info["quantized_layers"].startswith(f"{layers} layers FP8, 0 residual inputs; left in float by default: ")
    assert "/head/Gemm" in info["quantized_layers"] and info["quantized_layers"].endswith("; bias correction on")
    accuracy = fp8.report["accuracy"]
    assert accuracy["format"] == "fp8" and accuracy["quantized_vs_fp32_ort_int8_kernels"] is None
    assert accuracy["summary"].startswith("FP8 vs FP32")
    ranked = fp8.report["sensitivity"]  # every FP8 layer measured alone, worst first
    assert len(ranked) == layers + len(fp8.report["mixed_precision"]["excluded"])
    assert [r["mean_cosine"] for r in ranked] == sorted(r["mean_cosine"] for r in ranked)
    assert fp8.report["mixed_precision"]["top1_agreement"] >= 99.5
    heldout = sorted(Path(digits_folders["heldout"]).rglob("*.png"))
    labels = np.array([int(p.parent.name) for p in heldout])
    top1 = {
        name: float((load(path).logits(heldout).argmax(1) == labels).mean())
        for name, path in (("fp32", fp32.onnx_path), ("fp8", fp8.onnx_path))
    }
    assert abs(top1["fp8"] - top1["fp32"]) <= 0.01, top1
    report = compare(load(fp32.onnx_path).logits(heldout), load(fp8.onnx_path).logits(heldout))
    assert report.mean_cosine >= 0.99, report


def test_an_fp8_file_from_another_tool_also_runs_unoptimized(digits_fp8, digits_folders, tmp_path):
    """The runtime learns FP8 from the toolkit's metadata; a file without it is scanned."""
    _, fp8 = digits_fp8
    foreign = onnx.load(str(fp8.onnx_path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    ours = load(fp8.onnx_path)
    batch = np.stack([ours.preprocess.load(p) for p in sorted(Path(digits_folders["heldout"]).rglob("*.png"))[:32]])
    np.testing.assert_allclose(load(tmp_path / "foreign.onnx").run(batch), ours.run(batch), rtol=1e-5, atol=1e-5)


@requires_tensorrt
def test_tensorrt_rtx_builds_the_fp8_graph_for_fp8_gpus_only(digits_fp8, tmp_path):
    from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine

    onnx_path = digits_fp8[1].onnx_path
    default = build_engine(onnx_path, tmp_path / "all.engine", BuildConfig(batch=(1, 4, 16)))
    assert default["precision"] == "fp8" and default["build"]["compute_capabilities"] == ["8.9", "12.0", "12.1"]
    chosen = build_engine(
        onnx_path, tmp_path / "two.engine", BuildConfig(batch=(1, 4, 16), compute_capabilities=("8.9", "12.0"))
    )
    assert chosen["build"]["compute_capabilities"] == ["8.9", "12.0"]
    from fastervit_trt.sidecar import rebuild_command

    assert "--compute-capability 8.9,12.0" in rebuild_command(chosen)
    with pytest.raises(
        EngineBuildError,
        match=r"FP8 needs compute capability 8\.9 or newer \(Ada: L4.*Hopper: H100"
        r".*\); 8\.6 cannot run it",
    ):
        build_engine(
            onnx_path, tmp_path / "old.engine", BuildConfig(batch=(1, 4, 16), compute_capabilities=("8.6", "8.9"))
        )
    with pytest.raises(EngineBuildError, match=r"compute capability 9\.0 is not a TensorRT-RTX target"):
        build_engine(onnx_path, tmp_path / "h100.engine", BuildConfig(batch=(1, 4, 16), compute_capabilities=("9.0",)))
    assert not (tmp_path / "old.engine").exists() and not (tmp_path / "h100.engine").exists()


def test_fastervit_eval_compares_fp8_with_fp32(digits_fp8, digits_folders, capsys):
    import json

    from fastervit_trt.cli import eval_main

    fp32, fp8 = digits_fp8
    assert (
        eval_main(
            [
                "--data",
                str(digits_folders["heldout"]),
                "--model",
                str(fp8.onnx_path),
                "--model",
                str(fp32.onnx_path),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    top1 = {Path(name).stem: row["top1"] for name, row in report["models"].items()}
    assert (
        top1["faster_vit_digits_fp32"] > 99
        and abs(top1["faster_vit_digits_fp8"] - top1["faster_vit_digits_fp32"]) <= 0.3
    )
