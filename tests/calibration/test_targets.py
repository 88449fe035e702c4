"""Q/DQ shaped for each runtime (``--target``) and attention quantized, on a small hand-built
conv + attention graph: placement, the arithmetic against a float64 NumPy emulation, and the
integer kernels ONNX Runtime fuses them into."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastervit_trt.calibration.qdq import (
    activation_qparams,
    attention_products,
    insert_qdq,
    lone_quantizers,
    placement,
    quantized_attention,
    scale_of,
    weight_amax,
)

RNG = np.random.default_rng(0)
C, T = 8, 16  # channels, tokens (a 4x4 map)
WC = (RNG.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32)
BC = RNG.standard_normal(C).astype(np.float32)
WQ = (RNG.standard_normal((C, C)) * 0.4).astype(np.float32)
WO = (RNG.standard_normal((C, 5)) * 0.4).astype(np.float32)


def _graph() -> onnx.ModelProto:
    """x (1,3,4,4) -> /levels.0 Conv(WC, BC) -> tokens (1,16,8) -> /levels.1 q = t WQ;
    softmax(q t^T) t -> WO -> mean over tokens."""
    nodes = [
        helper.make_node("Conv", ["x", "WC", "BC"], ["c"], pads=[1, 1, 1, 1], name="/levels.0/conv/Conv"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="/levels.0/Reshape"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1], name="/levels.0/Transpose"),
        helper.make_node("MatMul", ["t", "WQ"], ["q"], name="/levels.1/attn/qkv/MatMul"),
        helper.make_node("Transpose", ["t"], ["kt"], perm=[0, 2, 1], name="/levels.1/attn/Transpose"),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="/levels.1/attn/MatMul"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="/levels.1/attn/Softmax"),
        helper.make_node("MatMul", ["p", "t"], ["a"], name="/levels.1/attn/MatMul_1"),
        helper.make_node("MatMul", ["a", "WO"], ["o"], name="/levels.1/proj/MatMul"),
        helper.make_node("ReduceMean", ["o"], ["logits"], axes=[1], keepdims=0, name="/head/ReduceMean"),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for n, a in [
            ("WC", WC),
            ("BC", BC),
            ("WQ", WQ),
            ("WO", WO),
            ("shape", np.array([1, C, T], np.int64)),
        ]
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x, optimize=False) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


def _amax(model, x) -> dict[str, float]:
    """max |value| of every tensor (the ranges calibration would find with minmax)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for n in model.graph.node for o in n.output]
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    values = _run(probe, x)
    return {n: float(np.abs(values[n]).max()) for n in names} | {"x": float(np.abs(x).max())}


X = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
WEIGHTS = {"WC": WC, "WQ": WQ, "WO": WO}


def _placed(target: str, attention: bool | None = None):
    model = _graph()
    placed = placement(model, "int8", target=target, attention=attention)
    kwargs = dict(
        residuals=placed.residuals, attention=placed.attention, outputs=placed.outputs, target=target, fmt="int8"
    )
    return model, placed, insert_qdq(model, placed.targets, _amax(model, X), WEIGHTS, **kwargs)


def test_attention_products_are_the_activation_products():
    assert [a.node for a in attention_products(_graph())] == ["/levels.1/attn/MatMul", "/levels.1/attn/MatMul_1"]
    assert attention_products(_graph())[1].inputs == ("p", "t")


def test_each_target_places_its_own_pairs():
    model = _graph()
    tensorrt = placement(model, "int8")
    cpu = placement(model, "int8", target="onnxruntime-cpu")
    # TensorRT: no layer outputs, attention off by default (a GPU measurement decides it)
    assert tensorrt.outputs == [] and tensorrt.attention == []
    assert placement(model, "int8", attention=True).attention == attention_products(model)
    # ONNX Runtime CPU: Conv outputs (QLinearConv needs its output Q), attention on by default
    assert cpu.outputs == ["c"] and cpu.attention == attention_products(model)
    assert set(cpu.activations) == {"x", "c", "t", "q", "kt", "p", "a"}
    assert cpu.bounded(model) == ["p"]  # the softmax output: calibrated by its max


def test_activation_qparams_per_element():
    scale, zero = activation_qparams(2.54, "int8", "int8", False)
    assert scale == pytest.approx(0.02) and zero.dtype == np.int8 and zero == 0
    scale, zero = activation_qparams(2.54, "int8", "uint8", False)
    assert scale == pytest.approx(0.02) and zero.dtype == np.uint8 and zero == 128
    scale, zero = activation_qparams(0.51, "int8", "uint8", True)  # probabilities: all 256 levels
    assert scale == pytest.approx(0.002) and zero == 0


def test_cpu_graph_is_typed_as_onnx_runtime_kernels_take_it():
    model, placed, quantized = _placed("onnxruntime-cpu")
    inits = {t.name: t for t in quantized.graph.initializer}
    q_nodes = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear"]
    assert {inits[n.input[2]].data_type for n in q_nodes} == {TensorProto.UINT8}
    zero_points = {n.input[0]: int(numpy_helper.to_array(inits[n.input[2]])) for n in q_nodes}
    assert zero_points["p"] == 0 and all(z == 128 for name, z in zero_points.items() if name != "p")
    conv = next(n for n in quantized.graph.node if n.op_type == "Conv")
    bias_dq = next(n for n in quantized.graph.node if n.output[0] == conv.input[2])
    assert inits[bias_dq.input[0]].data_type == TensorProto.INT32  # QLinearConv's bias
    amax = _amax(model, X)
    expected = scale_of(amax["x"]) * scale_of(weight_amax(WC, 0))
    np.testing.assert_allclose(numpy_helper.to_array(inits[bias_dq.input[1]]), expected, rtol=1e-6)
    assert "c_quantized" in {o for n in q_nodes for o in n.output}  # the Conv output's pair


def _emulated(x: np.ndarray, target: str) -> np.ndarray:
    """The CPU graph's arithmetic in float64 NumPy: fake-quantize each tensor as its Q/DQ pair."""
    amax = _amax(_graph(), X)

    def fake(v, name, bounded=False):
        scale, zero = activation_qparams(amax[name], "int8", "uint8" if target != "tensorrt" else "int8", bounded)
        low, high = (0, 255) if zero.dtype == np.uint8 else (-128, 127)
        return (np.clip(np.round(v / scale) + int(zero), low, high) - int(zero)) * scale

    def weight(w, axis):
        scale = scale_of(weight_amax(w, axis)).reshape([-1 if i == axis else 1 for i in range(w.ndim)])
        return np.clip(np.round(w / scale), -127, 127) * scale

    from scipy.signal import correlate  # scikit-learn brings SciPy

    xq = fake(x.astype(np.float64), "x")[0]
    wc = weight(WC.astype(np.float64), 0)
    scale_b = scale_of(amax["x"]) * scale_of(weight_amax(WC, 0))
    bias = np.round(BC / scale_b) * scale_b
    padded = np.pad(xq, ((0, 0), (1, 1), (1, 1)))
    c = np.stack([sum(correlate(padded[i], wc[o, i], mode="valid") for i in range(3)) + bias[o] for o in range(C)])
    c = fake(c, "c")
    t = c.reshape(C, T).T
    q = fake(t, "t") @ weight(WQ.astype(np.float64), 1)
    s = fake(q, "q") @ fake(t.T, "kt")
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    a = fake(p, "p", bounded=True) @ fake(t, "t")
    o = fake(a, "a") @ weight(WO.astype(np.float64), 1)
    return o.mean(0)


def test_cpu_graph_arithmetic_matches_a_float64_emulation():
    _, _, quantized = _placed("onnxruntime-cpu")
    got = _run(quantized, X)["logits"][0]
    np.testing.assert_allclose(got, _emulated(X, "onnxruntime-cpu"), rtol=1e-4, atol=1e-5)
    exact = _run(_graph(), X)["logits"][0]
    assert not np.allclose(got, exact, atol=1e-6)  # it is quantized arithmetic, not the float graph


def test_onnx_runtime_fuses_the_cpu_graph_into_integer_kernels(tmp_path):
    _, _, quantized = _placed("onnxruntime-cpu")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearConv" in ops and "Conv" not in ops
    integer_matmuls = sum(op in ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger") for op in ops)
    assert integer_matmuls == 4 and "MatMul" not in ops, " ".join(ops)  # qkv, both attention products, proj
    assert "Cast" not in ops


def test_tensorrt_attention_pairs_are_symmetric_int8_and_fuse():
    _, placed, quantized = _placed("tensorrt", attention=True)
    inits = {t.name: t for t in quantized.graph.initializer}
    q_nodes = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear"]
    assert {n.input[0] for n in q_nodes} == {"x", "t", "q", "kt", "p", "a"}  # no layer outputs for TensorRT
    assert {int(numpy_helper.to_array(inits[n.input[2]])) for n in q_nodes} == {0}
    assert {inits[n.input[2]].data_type for n in q_nodes} == {TensorProto.INT8}
    assert lone_quantizers(quantized) == []  # every pair feeds a MatMul / Conv
    assert quantized_attention(quantized) == (
        ["/levels.1/attn/MatMul", "/levels.1/attn/MatMul_1"],
        ["/levels.1/attn/MatMul", "/levels.1/attn/MatMul_1"],
    )
    _, _, without = _placed("tensorrt")
    assert quantized_attention(without)[0] == []
