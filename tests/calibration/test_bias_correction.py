"""Bias correction: each quantized layer's bias absorbs the mean output shift of its weight
rounding. Checked against float64 NumPy (the corrected biases) and on ONNX Runtime outputs
(the mean output error over inputs it was not measured on)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastervit_trt.calibration.collect import ChannelMeans
from fastervit_trt.calibration.qdq import QMAX, input_channel_axes, insert_qdq, quant_targets, to_opset
from fastervit_trt.export.fp16 import convert_to_fp16

RNG = np.random.default_rng(1)
MU = np.array([3.0, -2.0, 1.0, 0.5])  # the inputs' channel means, large against their spread
WEIGHTS = {
    "Wc": RNG.standard_normal((6, 4, 3, 3)),
    "Wg": RNG.standard_normal((6, 2, 1, 1)),
    "M1": RNG.standard_normal((4, 6)),
    "M2": RNG.standard_normal((4, 6)),
    "G": RNG.standard_normal((6, 4)),
}
WEIGHTS = {name: w.astype(np.float32) for name, w in WEIGHTS.items()}
BIASES = {"bc": RNG.standard_normal(6).astype(np.float32), "B1": RNG.standard_normal(6).astype(np.float32)}
AMAX = {"x": 6.0, "p": 6.0, "f": 6.0}  # the activation ranges the Q/DQ pairs get
OUTPUTS = {"c": ["n", 6, 3, 3], "g": ["n", 6, 5, 5], "m1": ["n", 5, 5, 6], "m2": ["n", 5, 5, 6], "gm": ["rows", 6]}


def _graph() -> onnx.ModelProto:
    """x -> Conv 3x3 + bias -> c; x -> Conv 1x1, 2 groups, no bias -> g; tokens p = x in
    NHWC -> MatMul + Add(B1) -> m1, MatMul without bias -> m2; p as rows f -> Gemm (transB,
    no C) -> gm."""
    nodes = [
        helper.make_node("Conv", ["x", "Wc", "bc"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Conv", ["x", "Wg"], ["g"], name="grouped", kernel_shape=[1, 1], group=2),
        helper.make_node("Transpose", ["x"], ["p"], name="nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["p"], ["f"], name="rows", axis=3),
        helper.make_node("MatMul", ["p", "M1"], ["mm1"], name="matmul_bias"),
        helper.make_node("Add", ["mm1", "B1"], ["m1"], name="bias"),
        helper.make_node("MatMul", ["p", "M2"], ["m2"], name="matmul"),
        helper.make_node("Gemm", ["f", "G"], ["gm"], name="gemm", transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in {**WEIGHTS, **BIASES}.items()]
    graph = helper.make_graph(
        nodes,
        "bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in OUTPUTS.items()],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _inputs(count: int) -> np.ndarray:
    return (MU[None, :, None, None] + RNG.standard_normal((count, 4, 5, 5))).astype(np.float32)


def _means(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    means = ChannelMeans(input_channel_axes(model, quant_targets(model)))
    means.update("x", x)
    means.update("p", x.transpose(0, 2, 3, 1))
    means.update("f", x.transpose(0, 2, 3, 1).reshape(-1, 4))
    return means.means()


def _quantized(model: onnx.ModelProto, fmt: str, means: dict | None) -> onnx.ModelProto:
    return insert_qdq(model, quant_targets(_graph()), AMAX, WEIGHTS, fmt=fmt, input_means=means)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [o.astype(np.float64) for o in session.run(list(OUTPUTS), {"x": x})]


def _weight_error(weight: np.ndarray, axis: int, fmt: str) -> np.ndarray:
    """Rounded minus float weight, per output channel scales as stored (float32), in NumPy."""
    other = tuple(i for i in range(weight.ndim) if i != axis)
    scale = (np.abs(weight).max(axis=other, keepdims=True) / QMAX[fmt]).astype(np.float32).astype(np.float64)
    scaled = weight / scale
    if fmt == "int8":
        rounded = np.clip(np.round(scaled), -127, 127)
    else:
        rounded = np.clip(scaled, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return rounded * scale - weight


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_corrected_biases_match_float64_math(fmt):
    model = _graph()
    means = _means(model, _inputs(64))
    biases = {
        t.name: numpy_helper.to_array(t)
        for t in _quantized(model, fmt, means).graph.initializer
        if t.name.endswith("_bias_corrected")
    }
    conv = np.einsum("ocij,c->o", _weight_error(WEIGHTS["Wc"], 0, fmt), means["x"])
    grouped_error = _weight_error(WEIGHTS["Wg"], 0, fmt)[:, :, 0, 0]  # output o reads channels 2 (o // 3) + 0, 1
    grouped = np.array([grouped_error[o] @ means["x"][2 * (o // 3) : 2 * (o // 3) + 2] for o in range(6)])
    expected = {
        "conv": BIASES["bc"] - conv,
        "grouped": -grouped,
        "matmul_bias": BIASES["B1"] - means["p"] @ _weight_error(WEIGHTS["M1"], 1, fmt),
        "matmul": -(means["p"] @ _weight_error(WEIGHTS["M2"], 1, fmt)),
        "gemm": -(_weight_error(WEIGHTS["G"], 0, fmt) @ means["f"]),
    }
    assert sorted(biases) == sorted(f"{name}_bias_corrected" for name in expected)
    for name, value in expected.items():
        np.testing.assert_allclose(biases[f"{name}_bias_corrected"], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_correction_removes_the_mean_output_error_on_other_inputs():
    """FP8 (E4M3 weights: 2.6 % RMS error); INT8's weight error is near this test's noise floor."""
    model, fmt = _graph(), "fp8"
    means = _means(model, _inputs(256))
    x = _inputs(256)  # not the inputs the means came from
    reference = _run(model, x)
    plain, corrected = _run(_quantized(model, fmt, None), x), _run(_quantized(model, fmt, means), x)
    for name, ref, before, after in zip(OUTPUTS, reference, plain, corrected):
        channel = 1 if ref.ndim == 4 else -1
        mean_error = lambda out: np.linalg.norm(
            np.moveaxis(out - ref, channel, -1).reshape(-1, ref.shape[channel]).mean(axis=0)
        )
        assert mean_error(after) < 0.3 * mean_error(before), (name, mean_error(after), mean_error(before))


def test_layers_without_a_bias_get_one_and_the_fp16_graph_keeps_its_types():
    model = convert_to_fp16(to_opset(_graph(), 19))
    means = _means(_graph(), _inputs(64))
    quantized = insert_qdq(model, quant_targets(_graph()), AMAX, WEIGHTS, fmt="fp8", input_means=means)
    onnx.checker.check_model(quantized, full_check=True)
    nodes = {n.name: n for n in quantized.graph.node}
    assert nodes["grouped"].input[2] == "grouped_bias_corrected" and nodes["gemm"].input[2] == "gemm_bias_corrected"
    assert nodes["bias"].input[1] == "matmul_bias_bias_corrected"  # the existing bias Add, not a new one
    added = nodes["matmul_bias_correction"]  # MatMul with no bias: an Add right after it, same output name
    output = next(n for n in model.graph.node if n.name == "matmul").output[0]
    assert added.output == [output] and added.input == [f"{output}_uncorrected", "matmul_bias_corrected"]
    order = [n.name for n in quantized.graph.node]
    assert order.index("matmul_bias_correction") == order.index("matmul") + 1
    types = {t.name: t.data_type for t in quantized.graph.initializer}
    assert {types[n] for n in types if n.endswith("_bias_corrected")} == {TensorProto.FLOAT16}
    x = _inputs(8)
    assert all(np.isfinite(o).all() for o in _run(quantized, x))
    unchanged = insert_qdq(model, quant_targets(_graph()), AMAX, WEIGHTS, fmt="fp8")
    assert not [t for t in unchanged.graph.initializer if t.name.endswith("_bias_corrected")]


def test_a_scaled_gemm_is_corrected_after_it():
    """Gemm with alpha 2 and beta 0.5 over a C: the shift is scaled by alpha and added after
    the Gemm (C is scaled by beta, so it cannot absorb it exactly)."""
    model = _graph()
    gemm = next(n for n in model.graph.node if n.name == "gemm")
    gemm.input.append("bc")
    gemm.attribute.extend([helper.make_attribute("alpha", 2.0), helper.make_attribute("beta", 0.5)])
    means = _means(model, _inputs(256))
    quantized = _quantized(model, "fp8", means)
    nodes = {n.name: n for n in quantized.graph.node}
    assert nodes["gemm"].input[2] == "bc" and nodes["gemm_bias_correction"].output == ["gm"]
    x = _inputs(256)
    reference, plain, corrected = (_run(m, x)[-1] for m in (model, _quantized(model, "fp8", None), quantized))
    assert np.linalg.norm((corrected - reference).mean(0)) < 0.3 * np.linalg.norm((plain - reference).mean(0))


def test_an_empty_optional_bias_input_takes_the_correction_in_place():
    model = _graph()
    grouped = next(n for n in model.graph.node if n.name == "grouped")
    grouped.input.append("")  # an absent optional input written as an empty name
    quantized = _quantized(model, "fp8", _means(model, _inputs(64)))
    onnx.checker.check_model(quantized, full_check=True)
    assert list(next(n for n in quantized.graph.node if n.name == "grouped").input) == [
        "x_dequantized",
        "Wg_dequantized",
        "grouped_bias_corrected",
    ]
