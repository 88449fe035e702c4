"""Latency percentiles and throughput of inference callables, interleaved per batch size."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def benchmark(runners: dict[str, Callable[[np.ndarray], np.ndarray]], input_shape: tuple[int, ...],
              batches: list[int], iters: int = 50, warmup: int = 5, dtype: np.dtype = np.dtype(np.float32)) -> list[dict]:
    """One row per (runner, batch): p50/p90/p99 latency in ms and images per second, on
    seeded random inputs of ``input_shape`` (one input) and ``dtype`` (float32 or uint8).

    Runners take turns call by call, so machine noise hits them alike.
    """
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.integers(0, 256, (batch, *input_shape), dtype=np.uint8) if dtype == np.uint8 else \
            rng.standard_normal((batch, *input_shape), dtype=np.float32)
        for run in runners.values():
            for _ in range(warmup):
                run(x)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(iters):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
        for name, samples in times.items():
            ms = np.asarray(samples) * 1e3
            rows.append({"model": name, "batch": batch, "p50_ms": float(np.percentile(ms, 50)),
                         "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                         "img_per_s": float(batch / np.median(samples))})
    return rows
