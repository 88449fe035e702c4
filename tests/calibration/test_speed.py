"""Timing graphs against each other (``graph.timing``) and the speed-gated placement search,
on a stand-in clock: a graph's run "takes" what a cost model of its Q/DQ says, so the choices
are checked exactly and never depend on this machine's speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fastervit_trt.calibration import speed_search as search_module
from fastervit_trt.calibration.qdq import placement, quantized_attention
from fastervit_trt.calibration.sensitivity import Evaluator
from fastervit_trt.calibration.speed_search import region_of, regions, speed_search
from fastervit_trt.graph import timing
from fastervit_trt.graph.timing import OnnxRuntimeCpuTimer, compare_speed, cpu_features, time_runners
from fastervit_trt.graph.weights import WeightFile
from tests.calibration.test_targets import WEIGHTS, X, _amax, _graph, _run


class Clock:
    """Stands in for ``time`` in ``graph.timing``: ``perf_counter`` reads a number the runners advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


class CostTimer:
    """A ``graph.timing.Timer`` whose runs take ``cost(model)`` stand-in seconds per input."""

    kind = "onnxruntime-cpu"
    runtime = "stand-in runtime"

    def __init__(self, clock: Clock, cost) -> None:
        self.clock, self.cost = clock, cost
        self.loaded: list[Path] = []

    def runner(self, path: Path):
        self.loaded.append(Path(path))
        seconds = self.cost(onnx.load(str(path)))

        def run(batch: np.ndarray) -> None:
            self.clock.now += seconds * len(batch)

        return run


def test_time_runners_takes_the_median_of_interleaved_runs(clock):
    costs = iter([1.5, 1.0, 1.0, 3.0, 1.0, 2.0, 1.0, 2.0, 50.0, 2.0, 1.0, 2.0])  # warm-ups first, then 5 rounds

    def runner(label):
        def run(batch):
            clock.now += next(costs)

        return run

    seconds, repeats = time_runners({"a": runner("a"), "b": runner("b")}, {1: np.zeros(1)}, repeats=5)
    assert repeats == 5
    assert seconds == {1: {"a": 1.0, "b": 2.0}}  # the warm-up (1.5 s) and the outlier (50 s) ignored


def test_slow_runs_get_fewer_repeats(clock):
    calls = []

    def run(batch):
        calls.append(1)
        clock.now += 10.0  # above SLOW_RUN_S

    seconds, repeats = time_runners({"a": run}, {8: np.zeros(8)}, repeats=5)
    assert repeats == timing.MIN_REPEATS and len(calls) == 1 + timing.MIN_REPEATS


def test_compare_speed_reports_ratios_per_batch(clock, tmp_path):
    model = _graph()
    fp32, quantized = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, fp32)
    onnx.save(model, quantized)
    timer = CostTimer(clock, lambda m: 1.0)
    timer.cost = lambda m: 1.0 if timer.loaded[-1] == fp32 else 0.25
    report = compare_speed(timer, {"fp32": fp32, "int8": quantized}, (1, 8), (3, 4, 4))
    assert report.ratio("int8", "fp32", 1) == report.ratio("int8", "fp32", 8) == pytest.approx(4.0)
    record = report.as_dict("fp32")
    assert record["speedup_vs_fp32"] == {"1": {"int8": 4.0}, "8": {"int8": 4.0}}
    assert record["seconds_per_batch"]["8"] == {"fp32": 8.0, "int8": 2.0}


def test_onnx_runtime_timer_runs_the_file_and_names_the_cpu(tmp_path):
    onnx.save(_graph(), tmp_path / "g.onnx")
    timer = OnnxRuntimeCpuTimer()
    outputs = timer.runner(tmp_path / "g.onnx")(X)
    np.testing.assert_allclose(outputs[0], _run(_graph(), X)["logits"], rtol=1e-5)
    assert cpu_features() in timer.runtime and timer.runtime.startswith("onnxruntime ")


def _evaluator(tmp_path) -> Evaluator:
    model = _graph()
    placed = placement(model, "int8", target="onnxruntime-cpu")
    return Evaluator(
        model,
        placed.targets,
        _amax(model, X),
        WEIGHTS,
        X,
        _run(model, X)["logits"],
        attention=placed.attention,
        outputs=placed.outputs,
        target="onnxruntime-cpu",
    )


def test_regions_are_top_level_modules_with_attention_apart(tmp_path):
    assert region_of("/levels.2/blocks.0/attn/qkv/MatMul", False) == "levels.2"
    assert region_of("/levels.2/blocks.0/attn/MatMul_1", True) == "levels.2 attention"
    found = regions(_evaluator(tmp_path), frozenset())
    assert found == {
        "levels.0": ["/levels.0/conv/Conv"],
        "levels.1": ["/levels.1/attn/qkv/MatMul", "/levels.1/proj/MatMul"],
        "levels.1 attention": ["/levels.1/attn/MatMul", "/levels.1/attn/MatMul_1"],
    }


def _cost(model: onnx.ModelProto) -> float:
    """10 s, less 3 with the Conv quantized and 2 with levels.1's layers, plus 1 with attention
    quantized (slower there)."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    layers = {n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.input[0] in dequantized}
    seconds = 10.0 - 3.0 * ("/levels.0/conv/Conv" in layers) - 2.0 * ("/levels.1/attn/qkv/MatMul" in layers)
    return seconds + 1.0 * bool(quantized_attention(model)[0])


def test_search_keeps_only_regions_that_run_faster(clock, tmp_path):
    evaluator, fp32 = _evaluator(tmp_path), tmp_path / "fp32.onnx"
    onnx.save(_graph(), fp32)
    found = speed_search(
        evaluator, CostTimer(clock, _cost), WeightFile(tmp_path), frozenset(), 2, (3, 4, 4), np.float32, fp32, None
    )
    assert found.dropped == {"/levels.1/attn/MatMul", "/levels.1/attn/MatMul_1"}
    record = found.record
    assert record["kept"] == ["levels.0", "levels.1"] and record["dropped"] == ["levels.1 attention"]
    assert [r["gain"] for r in record["regions"]] == [1.5, 1.333, 0.833]  # 9/6, 8/6, 5/6
    assert record["chosen"] == "searched"
    assert record["seconds"] == {"fp32": 20.0, "fixed_placement": 12.0, "searched": 10.0}  # batch 2


def test_search_never_ends_slower_than_the_fixed_placement(clock, tmp_path, monkeypatch):
    """Timing noise can drop a region whose Q/DQ did help: the final comparison undoes it."""
    evaluator, fp32 = _evaluator(tmp_path), tmp_path / "fp32.onnx"
    onnx.save(_graph(), fp32)
    timer = CostTimer(clock, _cost)
    monkeypatch.setattr(search_module, "MIN_GAIN", 10.0)  # no region passes: all dropped, i.e. FP32 (slower)
    found = speed_search(evaluator, timer, WeightFile(tmp_path), frozenset(), 2, (3, 4, 4), np.float32, fp32, None)
    assert found.dropped == frozenset() and found.record["chosen"] == "fixed placement"
    assert found.record["dropped"] == []
