"""Calibration runs the graph once per image, cut into segments that fit the activation budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastervit_trt.calibration.collect import ChannelMeans, collect_histograms
from fastervit_trt.calibration.qdq import input_channel_axes, quant_targets
from fastervit_trt.graph.ort_cpu import cpu_session
from fastervit_trt.graph.segments import split_graph


class Arrays:
    """Calibration data from an array (``CalibrationData``'s interface)."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, size: int):
        for start in range(0, len(self.inputs) // size * size, size):
            yield self.inputs[start : start + size]


@pytest.fixture(scope="module")
def fp32_graph(exported):
    result = exported("fp32")
    model = onnx.load(str(result.onnx_path), load_external_data=False)
    return result.onnx_path, model, sorted({t.activation for t in quant_targets(model)})


@pytest.mark.slow
def test_segments_cover_the_requested_tensors_in_graph_order_within_budget(fp32_graph):
    _, model, tensors = fp32_graph
    budget = 1 << 22  # 4 MB: a 224x224 FasterViT-0 needs about 18 MB
    segments = split_graph(model, tensors, budget)
    assert len(segments) > 3
    assert sorted(t for s in segments for t in s.requested) == sorted(t for t in tensors if t != "input")
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    positions = [order[n.name] for s in segments for n in s.nodes]
    assert positions == sorted(positions)  # consecutive cuts of the graph, each node once
    for segment in segments:
        assert segment.bytes_per_image <= budget or len(segment.requested) == 1
    weights = {w.name for w in model.graph.initializer}
    for index, later in enumerate(segments[1:], 1):  # a segment reads only what earlier ones pass on
        passed = {t for s in segments[:index] for t in s.outputs} | {"input"}
        assert set(later.inputs) <= passed and not set(later.inputs) & weights
        assert set(later.inputs) <= segments[index - 1].carried  # kept alive until it runs
    head = {n.name for n in model.graph.node} - {n.name for s in segments for n in s.nodes}
    assert head  # nodes after the last quantized input (the logits' Gemm/Add) are not run


@pytest.mark.slow
def test_segmented_histograms_match_one_session_over_the_whole_graph(fp32_graph, tmp_path):
    path, model, tensors = fp32_graph
    inputs = np.random.default_rng(0).standard_normal((6, 3, 224, 224)).astype(np.float32)
    means = ChannelMeans(input_channel_axes(model, quant_targets(model)))
    histograms, seen = collect_histograms(
        path, tensors, Arrays(inputs), batch_size=3, stream=None, budget=1 << 22, means=means
    )
    assert seen == 6 and set(means.means()) == set(tensors)

    whole = onnx.load(str(path), load_external_data=False)  # the reference: every tensor a graph output
    del whole.graph.output[:]
    whole.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    reference_path = path.parent / "reference_all_outputs.onnx"
    reference_path.write_bytes(whole.SerializeToString())
    values = dict(zip(tensors, cpu_session(reference_path).run(tensors, {"input": inputs})))
    for name in tensors:
        amax = float(np.abs(values[name]).max())
        assert histograms[name].amax == pytest.approx(amax, rel=1e-4, abs=1e-6), name
        assert histograms[name].counts.sum() == values[name].size, name
        channels = (0, 2, 3) if means.axes[name] == 1 else tuple(range(values[name].ndim - 1))
        np.testing.assert_allclose(
            means.means()[name], values[name].astype(np.float64).mean(axis=channels), rtol=1e-5, atol=1e-6, err_msg=name
        )
