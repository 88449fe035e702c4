"""Q/DQ placement and arithmetic on small hand-built graphs, checked with NumPy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fastervit_trt.calibration.qdq import (
    in_series,
    insert_qdq,
    lone_quantizers,
    placement,
    quant_targets,
    scale_of,
    to_opset,
)
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
    inits = [
        numpy_helper.from_array(a, n)
        for n, a in [
            ("W1", W1),
            ("W2", W2),
            ("B1", B1),
            ("ln_s", np.ones(8, np.float32)),
            ("ln_b", np.zeros(8, np.float32)),
        ]
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n, shape in (("y1", [5, 6]), ("y2", [5, 4]), ("y3", [5, 5]))
        ],
        inits,
    )
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
        ("mm1", "h", "W1", 1),
        ("mm2", "h", "W2", 1),
    ]  # act x act product and bias left alone
    quantized = insert_qdq(model, targets, {"h": 3.0}, {"W1": W1, "W2": W2})
    ops = Counter(n.op_type for n in quantized.graph.node)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 3  # one shared pair for h
    weights = {i.name: i for i in quantized.graph.initializer}
    bias_add = next(n for n in quantized.graph.node if n.name == "bias1")
    assert bias_add.input[1] == "B1" and weights["B1"].data_type == TensorProto.FLOAT  # bias not quantized
    assert [n.name for n in quantized.graph.node if "act_x_act" in n.name][0] and all(
        i in ("y1", "y1t") for i in next(n for n in quantized.graph.node if n.name == "act_x_act").input
    )
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


C = 4
CONV_W = {name: RNG.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.3 for name in ("Wa", "W1", "W2", "Wb")}
HEAD_W = RNG.standard_normal((C, 3)).astype(np.float32)


def _residual_graph(residual: str = "r") -> onnx.ModelProto:
    """x -> convA -> r -> conv1 -> Relu -> conv2 -> Add(``residual``, c2) -> convB -> pool ->
    Gemm head -> logits, plus s = Sigmoid(r) for a residual no quantized layer reads."""
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["r"], name="convA", **conv),
        helper.make_node("Sigmoid", ["r"], ["s"], name="sigmoid"),
        helper.make_node("Conv", ["r", "W1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu"),
        helper.make_node("Conv", ["a1", "W2"], ["c2"], name="conv2", **conv),
        helper.make_node("Add", [residual, "c2"], ["sum"], name="add"),
        helper.make_node("Conv", ["sum", "Wb"], ["d"], name="convB", **conv),
        helper.make_node("GlobalAveragePool", ["d"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wh"], ["logits"], name="head"),
    ]
    inits = [numpy_helper.from_array(w, n) for n, w in CONV_W.items()] + [numpy_helper.from_array(HEAD_W, "Wh")]
    graph = helper.make_graph(
        nodes,
        "res",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


AMAX = {"x": 3.0, "r": 4.0, "a1": 5.0, "sum": 6.0, "f": 1.0, "s": 1.0}
WEIGHTS = {**CONV_W, "Wh": HEAD_W}


def test_layers_in_series_and_the_output_layer_stay_in_float_by_default():
    model = _residual_graph()
    assert in_series(model, quant_targets(model)) == ["convA", "convB", "head"]  # conv1/conv2 have the skip
    assert placement(model, "int8").kept == ["head"]  # writes the graph output
    assert placement(model, "fp8").kept == ["head", "convA", "convB"]
    assert [t.node for t in placement(model, "fp8").targets] == ["conv1", "conv2"]


def test_residual_input_of_an_add_after_a_quantized_conv_is_quantized():
    """TensorRT's "Q/DQ layer placement": the Add after conv2 is fused into it, and reads its
    residual in INT8; the residual r is conv1's input, so it shares conv1's Q/DQ pair."""
    model = _residual_graph()
    placed = placement(model, "int8")
    assert [(r.node, r.index, r.activation, r.conv) for r in placed.residuals] == [("add", 0, "r", "conv2")]
    assert placed.activations == ["a1", "r", "sum", "x"]
    quantized = insert_qdq(model, placed.targets, AMAX, WEIGHTS, residuals=placed.residuals)
    nodes = {n.name: n for n in quantized.graph.node}
    assert nodes["add"].input[0] == nodes["conv1"].input[0] == "r_dequantized"
    assert Counter(n.op_type for n in quantized.graph.node)["QuantizeLinear"] == 4  # x, r, a1, sum
    assert lone_quantizers(quantized) == []
    onnx.checker.check_model(quantized, full_check=True)
    x = RNG.standard_normal((1, C, 6, 6)).astype(np.float32)
    outputs = {"r": "r", "c2": "c2", "sum": "sum"}
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs)
    _, r, c2, total = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    s = AMAX["r"] / 127
    np.testing.assert_allclose(total, np.clip(np.round(r / s), -128, 127) * s + c2, rtol=1e-5, atol=1e-5)

    without_conv2 = [t for t in placed.targets if t.node != "conv2"]  # no quantized Conv before the Add
    plain = insert_qdq(model, without_conv2, AMAX, WEIGHTS, residuals=placed.residuals)
    assert next(n for n in plain.graph.node if n.name == "add").input[0] == "r"


def test_a_residual_no_layer_quantizes_gets_its_own_pair():
    model = _residual_graph(residual="s")
    placed = placement(model, "int8")
    assert [(r.node, r.activation) for r in placed.residuals] == [("add", "s")] and "s" in placed.activations
    quantized = insert_qdq(model, placed.targets, AMAX, WEIGHTS, residuals=placed.residuals)
    add = next(n for n in quantized.graph.node if n.name == "add")
    assert add.input[0] == "s_dequantized" and lone_quantizers(quantized) == []
    scales = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    assert np.isclose(scales["s_scale"], AMAX["s"] / 127)
    assert placement(model, "fp8").residuals == []  # FP8 keeps residuals in FP16


def test_a_quantized_value_reaching_an_add_without_a_quantized_conv_is_lone():
    model = _residual_graph()
    quantized = insert_qdq(model, placement(model, "int8").targets, AMAX, WEIGHTS)  # residual left float
    add = next(n for n in quantized.graph.node if n.name == "add")
    add.input[1] = "a1_dequantized"  # the Add's other input is no longer a quantized Conv's output
    assert lone_quantizers(quantized) == ["a1_Q"]
