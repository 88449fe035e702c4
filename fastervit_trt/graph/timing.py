"""How fast graphs run on the runtime at hand, against each other: one interface, a timer per
runtime (ONNX Runtime's CPU provider here; TensorRT engines in ``engines/timing.py``).

``compare_speed(timer, {"fp32": a.onnx, "int8": b.onnx}, batches=(1, 8))`` loads every graph
once, then times them interleaved (one run of each in turn, so a machine that slows down
slows them all alike), after one warm-up run each, and keeps the median of ``repeats`` runs.
Speed figures are ratios measured in one process: absolute times on a shared machine say
little, their ratio holds.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

Runner = Callable[[np.ndarray], object]
SLOW_RUN_S = 2.0  # above this per run, MIN_REPEATS only: the export's speed line costs seconds, not minutes
MIN_REPEATS = 3


class Timer(Protocol):
    """Loads a graph for one runtime and returns a callable that runs one batch."""

    @property
    def runtime(self) -> str:
        """The runtime and device, as the speed line names them."""
        ...

    @property
    def kind(self) -> str:
        """``onnxruntime-cpu`` or ``tensorrt``: which graph target is shaped for it."""
        ...

    def runner(self, path: Path) -> Runner: ...


def cpu_features() -> str:
    """The integer-dot-product support of this x86 CPU, which decides what ONNX Runtime's int8
    kernels gain: ``AVX-512 VNNI``, ``AVX-VNNI``, ``AVX2, no VNNI``, or the architecture."""
    try:
        flags = set(
            next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
        )
    except (OSError, StopIteration):
        return platform.machine() or "unknown CPU"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else platform.machine()


class OnnxRuntimeCpuTimer:
    """ONNX Runtime's CPU provider with its default session settings (graph optimizations on,
    every core), as ``fastervit-infer --backend onnxruntime --provider cpu`` runs a file."""

    kind = "onnxruntime-cpu"

    @property
    def runtime(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} CPU ({cpu_features()})"

    def runner(self, path: Path) -> Runner:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})


@dataclass(frozen=True)
class SpeedReport:
    """Median seconds per batch of each graph at each batch size, timed interleaved."""

    runtime: str
    repeats: int
    seconds: dict[int, dict[str, float]]  # batch -> graph label -> median seconds

    def ratio(self, label: str, reference: str, batch: int) -> float:
        """How many times faster ``label`` runs than ``reference`` at ``batch``."""
        return self.seconds[batch][reference] / self.seconds[batch][label]

    def as_dict(self, reference: str) -> dict:
        return {
            "runtime": self.runtime,
            "repeats": self.repeats,
            "seconds_per_batch": {str(b): times for b, times in self.seconds.items()},
            f"speedup_vs_{reference}": {
                str(b): {label: round(self.ratio(label, reference, b), 3) for label in times if label != reference}
                for b, times in self.seconds.items()
            },
        }


def time_runners(
    runners: Mapping[str, Runner], inputs: Mapping[int, np.ndarray], repeats: int = 5
) -> tuple[dict[int, dict[str, float]], int]:
    """Median seconds of each runner on each batch in ``inputs``, interleaved, after a warm-up
    run; ``MIN_REPEATS`` only where a run takes over ``SLOW_RUN_S``. Returns the medians and
    the fewest repeats used."""
    seconds: dict[int, dict[str, float]] = {}
    used = repeats
    for batch, array in inputs.items():
        runs: dict[str, list[float]] = {label: [] for label in runners}
        for label, run in runners.items():
            start = time.perf_counter()
            run(array)
            runs[label].append(time.perf_counter() - start)  # the warm-up's time only sizes the repeats
        slow = sum(r[0] for r in runs.values()) / len(runs) > SLOW_RUN_S
        count = min(repeats, MIN_REPEATS) if slow else repeats
        used = min(used, count)
        runs = {label: [] for label in runners}
        for _ in range(count):
            for label, run in runners.items():
                start = time.perf_counter()
                run(array)
                runs[label].append(time.perf_counter() - start)
        seconds[batch] = {label: statistics.median(values) for label, values in runs.items()}
    return seconds, used


def seeded_batches(batches: Sequence[int], input_shape: Sequence[int], dtype: np.dtype | type) -> dict[int, np.ndarray]:
    """A seeded random batch of each size: uint8 pixels for a uint8 input, else normal floats
    (timing needs the graph's shapes and types, not real images)."""
    rng = np.random.default_rng(0)
    inputs = {}
    for batch in dict.fromkeys(batches):
        shape = (batch, *input_shape)
        uint8 = np.dtype(dtype) == np.uint8
        inputs[batch] = (rng.integers(0, 256, shape) if uint8 else rng.standard_normal(shape)).astype(dtype)
    return inputs


def compare_speed(
    timer: Timer,
    graphs: Mapping[str, Path],
    batches: Sequence[int],
    input_shape: Sequence[int],
    dtype: np.dtype | type = np.float32,
    repeats: int = 5,
) -> SpeedReport:
    """Time ``graphs`` (label -> ONNX file) against each other on ``timer``'s runtime at each
    batch size, on seeded random inputs of ``input_shape`` (one input's shape)."""
    runners = {label: timer.runner(path) for label, path in graphs.items()}
    seconds, used = time_runners(runners, seeded_batches(batches, input_shape, dtype), repeats)
    return SpeedReport(timer.runtime, used, seconds)
