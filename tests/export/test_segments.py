"""Unoptimized checks run a graph in segments of bounded weights, computing what one session does."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

import fastervit_trt.graph.ort_eval as pipeline
from fastervit_trt.compare import compare
from fastervit_trt.graph.ort_cpu import cpu_session
from fastervit_trt.graph.segments import SegmentedGraph
from fastervit_trt.graph.weights import tensor_bytes

BUDGET = 1 << 22  # 4 MB of weights per segment: FasterViT-0 (63 MB as FP16) needs many


def _copy(exported, precision: str, folder):
    """The exported file in a folder of its own: segments are written beside it."""
    path = exported(precision).onnx_path
    for file in path.parent.glob(path.name + "*"):  # the .onnx and any .onnx.data
        shutil.copy(file, folder)
    return folder / path.name


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)


def test_segments_are_consecutive_cuts_within_the_weight_budget(exported, tmp_path):
    path = _copy(exported, "fp16", tmp_path)
    graph = SegmentedGraph(path, weight_budget=BUDGET, optimize=False)
    model = onnx.load(str(path), load_external_data=False)
    sizes = {w.name: tensor_bytes(w) for w in model.graph.initializer}
    assert len(graph.segments) > 3
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    positions = [order[n.name] for s in graph.segments for n in s.nodes]
    assert positions == list(range(len(model.graph.node)))  # every node once, in graph order
    for segment in graph.segments:
        weighted = [n for n in segment.nodes if any(i in sizes for i in n.input)]
        assert segment.weight_bytes <= BUDGET or len(weighted) == 1
        assert segment.weight_bytes == sum(sizes.get(i, 0) for n in segment.nodes for i in set(n.input))


def test_fp32_graph_in_segments_computes_what_one_session_does(exported, inputs, tmp_path):
    path = _copy(exported, "fp32", tmp_path)
    whole = cpu_session(path, optimize=False).run(None, {"input": inputs})[0]
    (segmented,) = SegmentedGraph(path, weight_budget=BUDGET, optimize=False).run(None, {"input": inputs})
    np.testing.assert_allclose(segmented, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_unoptimized_logits_of_a_large_graph_run_in_segments(exported, inputs, monkeypatch, tmp_path):
    """A graph whose weights exceed ``WEIGHT_BUDGET`` runs in segments; an FP16 graph's
    logits then differ from one session's only by FP16 rounding at the cuts (one session
    keeps float32 between the nodes the CPU computes in float32)."""
    path = _copy(exported, "fp16", tmp_path)
    whole = pipeline.ort_logits(path, inputs, optimize=False)
    assert not list(path.parent.glob("*_segment*.onnx"))  # 63 MB of weights: one session
    monkeypatch.setattr(pipeline, "WEIGHT_BUDGET", BUDGET)
    segmented = pipeline.ort_logits(path, inputs, optimize=False)
    assert len(list(path.parent.glob("*_segment*.onnx"))) > 3
    report = compare(whole, segmented)
    assert report.min_cosine > 0.99999 and report.top1_agreement == 1.0
