"""Q/DQ placement and arithmetic on small hand-built graphs, checked with NumPy."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fastervit_trt.calibration.qdq import insert_qdq, lone_quantizers, quant_targets, scale_of, to_opset
from fastervit_trt.export.fp16 import convert_to_fp16

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 6)).astype(np.float32)
W2 = RNG.standard_normal((8, 4)).astype(np.float32)
B1 = RNG.standard_normal(6).astype(np.float32)


def _graph() -> onnx.ModelProto:
    """x -> LayerNorm -> MatMul(W1) + B1 -> y1;  LN out -> MatMul(W2) -> y2;  y1 @ y1^T -> y3."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_s", "ln_b"], ["h"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["h", "W1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "B1"], ["y1"], name="bias1"),
        helper.make_node("MatMul", ["h", "W2"], ["y2"], name="mm2"),
        helper.make_node("Transpose", ["y1"], ["y1t"], perm=[1, 0], name="t"),
        helper.make_node("MatMul", ["y1", "y1t"], ["y3"], name="act_x_act"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in
             [("W1", W1), ("W2", W2), ("B1", B1), ("ln_s", np.ones(8, np.float32)),
              ("ln_b", np.zeros(8, np.float32))]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                               for n, shape in (("y1", [5, 6]), ("y2", [5, 4]), ("y3", [5, 5]))],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_placement_follows_tensorrt_rules():
    model = _graph()
    targets = quant_targets(model)
    assert [(t.node, t.activation, t.weight, t.axis) for t in targets] == [
        ("mm1", "h", "W1", 1), ("mm2", "h", "W2", 1)]  # act x act product and bias left alone
    quantized = insert_qdq(model, targets, {"h": 3.0}, {"W1": W1, "W2": W2})
    ops = Counter(n.op_type for n in quantized.graph.node)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 3  # one shared pair for h
    weights = {i.name: i for i in quantized.graph.initializer}
    bias_add = next(n for n in quantized.graph.node if n.name == "bias1")
    assert bias_add.input[1] == "B1" and weights["B1"].data_type == TensorProto.FLOAT  # bias not quantized
    assert [n.name for n in quantized.graph.node if "act_x_act" in n.name][0] and all(
        i in ("y1", "y1t") for i in next(n for n in quantized.graph.node if n.name == "act_x_act").input)
    assert weights["W1_int8"].data_type == TensorProto.INT8
    onnx.checker.check_model(quantized, full_check=True)


def test_qdq_arithmetic_matches_numpy():
    model = _graph()
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    amax_h = 1.7
    quantized = insert_qdq(model, quant_targets(model), {"h": amax_h}, {"W1": W1, "W2": W2})
    y1, y2, _ = _run(quantized, x)
    h = _run(model, x)[0]  # recompute LN output via the float graph: y1 = h @ W1 + B1
    ln = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    s = amax_h / 127
    h_q = np.clip(np.round(ln / s), -128, 127) * s
    w_s = np.abs(W1).max(axis=0) / 127
    w_q = np.clip(np.round(W1 / w_s), -127, 127) * w_s
    assert np.allclose(y1, h_q @ w_q + B1, atol=1e-4)
    assert not np.allclose(y1, h, atol=1e-4)  # quantization really happened


def test_qdq_over_fp16_graph_uses_opset_19_and_half_scales():
    model = convert_to_fp16(to_opset(_graph(), 19))
    quantized = insert_qdq(model, quant_targets(_graph()), {"h": 3.0}, {"W1": W1, "W2": W2})
    assert max(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")) == 19
    scales = {i.name: i.data_type for i in quantized.graph.initializer if i.name.endswith(("scale", "wscale"))}
    assert scales and set(scales.values()) == {TensorProto.FLOAT16}
    onnx.checker.check_model(quantized, full_check=True)
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    reference = _run(insert_qdq(_graph(), quant_targets(_graph()), {"h": 3.0}, {"W1": W1, "W2": W2}), x)
    assert np.allclose(_run(quantized, x)[0], reference[0], atol=0.05)


def test_zero_range_gets_a_harmless_scale():
    assert scale_of(0.0) == 1.0 and np.allclose(scale_of(np.array([0.0, 12.7])), [1.0, 0.1])


def test_a_quantize_whose_value_reaches_a_float_op_is_reported_as_lone():
    """TensorRT fuses a Q/DQ pair into the Conv/MatMul/Gemm that reads it; one that also (or
    only) feeds another op would run as a lone quantize."""
    model = _graph()
    quantized = insert_qdq(model, quant_targets(model), {"h": 3.0}, {"W1": W1, "W2": W2})
    assert lone_quantizers(quantized) == []  # the toolkit's placement
    transpose = next(n for n in quantized.graph.node if n.name == "t")
    transpose.input[0] = "h_dequantized"  # the dequantized LayerNorm output now also feeds a Transpose
    assert lone_quantizers(quantized) == ["h_Q"]
