"""Latency percentiles and throughput of inference callables: interleaved per batch size, or
under closed-loop concurrent clients (a service's load)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def benchmark(
    runners: Mapping[str, Callable[[np.ndarray], object]],
    input_shape: tuple[int, ...],
    batches: list[int],
    iters: int = 50,
    warmup: int = 5,
    dtype: np.dtype = np.dtype(np.float32),
) -> list[dict]:
    """One row per (runner, batch): p50/p90/p99 latency in ms and images per second, on
    seeded random inputs of ``input_shape`` (one input) and ``dtype`` (float32 or uint8).

    Runners take turns call by call, so machine noise hits them alike.
    """
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = (
            rng.integers(0, 256, (batch, *input_shape), dtype=np.uint8)
            if dtype == np.uint8
            else rng.standard_normal((batch, *input_shape), dtype=np.float32)
        )
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
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p90_ms": float(np.percentile(ms, 90)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "img_per_s": float(batch / np.median(samples)),
                }
            )
    return rows


def closed_loop(call: Callable[[object], object], requests: list, clients: int, seconds: float) -> dict:
    """``clients`` threads each sending ``requests`` (in turn, one at a time, the next when
    the last is answered) to ``call`` for ``seconds``: requests per second and p50/p99
    latency in ms. Every call's latency counts; the run ends after ``seconds`` and the calls
    still in flight then."""
    import threading

    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        mine, sent = [], index
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            call(requests[sent % len(requests)])
            mine.append(time.perf_counter() - start)
            sent += clients
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def sample_jpegs(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``count`` JPEGs (quality 90) re-encoded at ``size`` from the shipped photos, in turn."""
    import io

    from PIL import Image

    from ..preprocess import IMAGE_SUFFIXES, SAMPLE_IMAGES

    photos = sorted(p for p in SAMPLE_IMAGES.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.open(photos[i % len(photos)]).convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def serving(
    model,
    images: list,
    clients: list[int],
    seconds: float,
    max_delay_ms: float = 2.0,
    max_batch: int | None = None,
    progress=None,
) -> list[dict]:
    """Per client count: ``closed_loop`` with one ``model.predict`` per request ("direct")
    and through ``model.batcher`` ("batcher", with its mean formed batch and engine calls)."""
    rows = []
    for count in clients:
        direct = closed_loop(lambda image: model.predict(image, topk=5), images, count, seconds)
        sizes: list[int] = []
        with model.batcher(
            max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max(256, 4 * count), observe=sizes.append
        ) as batcher:
            batched = closed_loop(lambda image: batcher.predict(image, topk=5), images, count, seconds)
        rows.append(
            {
                "clients": count,
                "direct": direct,
                "batcher": batched,
                "mean_batch": float(np.mean(sizes)),
                "engine_calls": len(sizes),
            }
        )
        if progress is not None:
            progress.write(
                f"  {count} clients: direct {direct['req_per_s']:.1f} req/s, batcher "
                f"{batched['req_per_s']:.1f} req/s (mean batch {np.mean(sizes):.1f})\n"
            )
            progress.flush()
    return rows
