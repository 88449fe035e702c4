#!/usr/bin/env python3
"""A service's load: C concurrent clients, each sending one JPEG at a time, for a fixed time.

Same model and images in one run, two ways of answering them:
  direct   - one model call per request (``model.predict(jpeg)``), what a service built on
             ``load()`` alone does
  batcher  - ``model.batcher(max_delay_ms=...)``: concurrent requests coalesced into one call
Clients 1, 8 and 32 (closed loop: a client sends its next request when its last is
answered), 640x480 JPEGs re-encoded from the shipped photos, faster_vit_0_224 FP32 ONNX
(random weights, batch profile 1,8,32) on ONNX Runtime. Prints requests/s, p50/p99 latency
and the batcher's mean formed batch, the checks below, and writes JSON:
  - at 32 clients the batcher's requests/s is at least direct's;
  - its mean batch is at least 0.7 x min(clients, max batch) at every client count;
  - at 1 client its p50 is at most direct's + max_delay_ms + 2 ms.
Then the overload cell: closed-loop clients four times the largest batch (each retrying a
refused request after its Retry-After, at most 50 ms), the batcher's timeout twice a full
batch's measured time; capacity = max batch / full-batch time. Checked, on the median of
``--overload-runs`` runs: goodput (answers within the timeout per second) at least 0.8 x
capacity, p99 latency of the answered within the timeout, under 5 % of computed images thrown
away (computed for callers past their deadline).

  python bench/serving.py
  python bench/serving.py --seconds 20 --clients 1 8 32 64
  python bench/serving.py --smoke --json /tmp/s.json      # seconds: the trained digits model
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.runtime import load
from fastervit_trt.runtime.batcher import Overloaded, RequestTimeout
from fastervit_trt.runtime.benchmark import sample_jpegs, serving

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faster_vit_digits.pth"


def checks(rows: list[dict], max_batch: int, max_delay_ms: float) -> dict[str, bool]:
    by_clients = {row["clients"]: row for row in rows}
    result = {
        f"mean batch >= 0.7 x min({c}, {max_batch})": r["mean_batch"] >= 0.7 * min(c, max_batch)
        for c, r in by_clients.items()
    }
    most = by_clients[max(by_clients)]
    result[f"batcher req/s >= direct at {max(by_clients)} clients"] = (
        most["batcher"]["req_per_s"] >= most["direct"]["req_per_s"]
    )
    if 1 in by_clients:
        one = by_clients[1]
        result[f"p50 at 1 client <= direct + {max_delay_ms:g} + 2 ms"] = (
            one["batcher"]["p50_ms"] <= one["direct"]["p50_ms"] + max_delay_ms + 2
        )
    return result


def overload(model, images: list, seconds: float, max_batch: int) -> dict:
    """One overload cell (see the module): goodput, p99 of the answered, shed and wasted."""
    inputs = np.stack([model.preprocess.load(images[i % len(images)]) for i in range(max_batch)])
    full_s = statistics.median(_timed(model.run, inputs) for _ in range(3))
    timeout, clients = 2 * full_s, 4 * max_batch
    capacity = max_batch / full_s
    latencies: list[float] = []
    lock, stop = threading.Lock(), time.monotonic() + seconds
    counts = {"answered": 0, "refused": 0, "late": 0}
    with model.batcher(max_batch=max_batch, timeout_s=timeout, max_queue=4 * clients) as batcher:
        batcher.probe(60)  # measured before load arrives, as the service's readiness check does

        def client(index: int) -> None:
            for turn in range(100_000):  # bounded in count as in time
                if time.monotonic() > stop:
                    return
                sent = time.monotonic()
                try:
                    future = batcher.submit(images[(index + turn) % len(images)])
                    future.result(timeout)
                except Overloaded as exc:
                    with lock:
                        counts["refused"] += 1
                    time.sleep(min(exc.retry_after_s or 0.05, 0.05))
                    continue
                except (RequestTimeout, FutureTimeout):
                    with lock:
                        counts["late"] += 1
                    continue
                with lock:
                    counts["answered"] += 1
                    latencies.append(time.monotonic() - sent)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        stats = batcher.stats
    computed = counts["answered"] + stats["computed_for_nobody"]
    return {
        "clients": clients,
        "full_batch_s": full_s,
        "timeout_s": timeout,
        "capacity_img_per_s": capacity,
        "goodput_img_per_s": counts["answered"] / seconds,
        "goodput_vs_capacity": counts["answered"] / seconds / capacity,
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None,
        "thrown_away_share": stats["computed_for_nobody"] / computed if computed else 0.0,
        **counts,
        "batcher": stats,
    }


def _timed(run, inputs) -> float:
    start = time.perf_counter()
    run(inputs)
    return time.perf_counter() - start


def overload_checks(cell: dict) -> dict[str, bool]:
    return {
        "overload: goodput >= 0.8 x capacity": cell["goodput_vs_capacity"] >= 0.8,
        "overload: p99 of the answered within the timeout": (cell["p99_ms"] or 0) <= 1000 * cell["timeout_s"],
        "overload: under 5 % of computed images thrown away": cell["thrown_away_share"] < 0.05,
    }


def overload_table(cells: list[dict]) -> str:
    keys = ("goodput_vs_capacity", "p99_ms", "thrown_away_share")
    median = {k: statistics.median(c[k] or 0 for c in cells) for k in keys}
    first = cells[0]
    return (
        "| clients | timeout s | capacity img/s | goodput / capacity | p99 ms | thrown away | runs |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {first['clients']} | {first['timeout_s']:.2f} | {first['capacity_img_per_s']:.1f} | "
        f"{median['goodput_vs_capacity']:.2f} | {median['p99_ms']:.0f} | {median['thrown_away_share']:.1%} | "
        f"{len(cells)} (medians) |"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| clients | direct req/s | batcher req/s | batcher / direct | direct p50 ms | batcher p50 ms | "
        "direct p99 ms | batcher p99 ms | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, b = r["direct"], r["batcher"]
        lines.append(
            f"| {r['clients']} | {d['req_per_s']:.1f} | {b['req_per_s']:.1f} | "
            f"{b['req_per_s'] / d['req_per_s']:.2f}x | {d['p50_ms']:.1f} | {b['p50_ms']:.1f} | "
            f"{d['p99_ms']:.1f} | {b['p99_ms']:.1f} | {r['mean_batch']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell")
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, help="the batcher's largest batch (default: the engine's)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/serving.json"))
    parser.add_argument("--smoke", action="store_true", help="the digits model, clients 1 and 4, 1 s a cell")
    parser.add_argument("--overload-runs", type=int, default=3, help="overload cells, each --seconds long")
    args = parser.parse_args()
    name, checkpoint, images = "faster_vit_0_224", None, sample_jpegs(26)
    if args.smoke:
        name, checkpoint, args.clients, args.seconds, args.overload_runs = "faster_vit_digits", FIXTURE, [1, 4], 1.0, 1
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_model(
            ExportOptions(model=name, checkpoint=checkpoint, precision="fp32", output_dir=Path(tmp)),
            None,
        ).onnx_path
        with load(onnx_path, provider="cpu") as model:  # the CPU the table names, GPU or not
            model.predict(images[:2])  # warm up the session
            rows = serving(model, images, args.clients, args.seconds, args.max_delay_ms, args.max_batch, sys.stderr)
            max_batch = args.max_batch or model.max_batch
            cells = [overload(model, images, args.seconds, max_batch) for _ in range(args.overload_runs)]
    verdicts = checks(rows, max_batch, args.max_delay_ms)
    middle = sorted(cells, key=lambda c: c["goodput_vs_capacity"])[len(cells) // 2]
    verdicts.update(
        overload_checks(
            {**middle, **{k: statistics.median(c[k] or 0 for c in cells) for k in ("p99_ms", "thrown_away_share")}}
        )
    )
    print(
        f"\n{name} FP32 ONNX Runtime (CPU), {args.seconds:g} s per cell, max_delay_ms {args.max_delay_ms:g}, "
        f"{datetime.date.today()}\n"
    )
    print(table(rows))
    print(f"\noverload ({args.seconds:g} s a run):\n{overload_table(cells)}")
    for check, passed in verdicts.items():
        print(f"{'pass' if passed else 'FAIL'}: {check}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "model": name,
                "backend": "onnxruntime-cpu",
                "seconds": args.seconds,
                "max_delay_ms": args.max_delay_ms,
                "max_batch": max_batch,
                "date": str(datetime.date.today()),
                "rows": rows,
                "overload": cells,
                "checks": verdicts,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
