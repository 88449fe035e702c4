"""The FP16 range check finds exactly the nodes whose activations leave half the FP16 range."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fastervit_trt.export.fp16 import FP16_MAX, find_fp16_overflows


def test_range_check_flags_the_nodes_beyond_half_the_fp16_range(tmp_path):
    from fastervit_trt.graph.weights import WeightFile

    scale = np.array([2.0, 1e6, -1e6], np.float32)  # channels 1 and 2 overflow after "big"
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["big"], name="big"),
            helper.make_node("Relu", ["big"], ["relu"], name="relu"),  # only the positive side survives
            helper.make_node("Neg", ["big"], ["negated"], name="negated"),
            helper.make_node("Tanh", ["negated"], ["y"], name="small"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(scale, "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.array([[0.1, 0.2, 0.3], [1.0, -0.1, 0.2]], np.float32)
    reference = {
        "big": x * scale,
        "relu": np.maximum(x * scale, 0),
        "negated": -(x * scale),
        "small": np.tanh(-(x * scale)),
    }
    expected = sorted(n for n, v in reference.items() if np.abs(v.astype(np.float64)).max() > 0.5 * FP16_MAX)
    assert expected == ["big", "negated", "relu"]
    assert find_fp16_overflows(model, x) == expected
    assert find_fp16_overflows(model, x, WeightFile(tmp_path)) == expected  # the file-backed probe
    # one input per pass, "relu" overflowing only in the first: running maxima, not the last pass
    assert find_fp16_overflows(model, x, chunk=1) == expected
    assert find_fp16_overflows(model, x / 10) == []
    onnx.checker.check_model(model)
