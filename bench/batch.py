#!/usr/bin/env python3
"""Image collections: ``fastervit-infer``'s one process against ``fastervit-batch`` on Ray Data.

Same model and files in one run, end to end (model loading and, for Ray, actor start and
the Parquet parts included), the Ray cluster started and its worker processes warmed up
(one untimed one-file run) beforehand:
  infer   - what ``fastervit-infer`` does: ``load()``, then ``logits_each`` over the paths
            (decoding on threads, the next batch while the model runs this one) and ``top``
  ray-N   - ``fastervit_trt.batch.predict_files`` with N actors (1 and 2) on a local Ray,
            a fresh output folder each
~200 JPEGs at 640x480 re-encoded from the shipped photos, faster_vit_0_224 FP32 ONNX (random
weights, batch profile 1,8,32) on ONNX Runtime (CPU). Prints images/s and the ratios to
infer (Ray's overhead at 1 actor: infer / ray-1 throughput), and writes JSON.

  python bench/batch.py
  python bench/batch.py --images 400 --actors 1 2 4
  python bench/batch.py --smoke --json /tmp/b.json      # seconds: the trained digits model
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastervit_trt.batch import predict_files
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.runtime import load
from fastervit_trt.runtime.benchmark import sample_jpegs

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faster_vit_digits.pth"


def time_infer(onnx_path: Path, files: list[str]) -> float:
    """Seconds for fastervit-infer's work over ``files``."""
    start = time.perf_counter()
    with load(onnx_path) as model:
        rows = [row for row in model.logits_each(files) if isinstance(row, np.ndarray)]
        assert len(rows) == len(files)
        model.top(np.stack(rows), topk=5)
    return time.perf_counter() - start


def time_ray(onnx_path: Path, folder: Path, output: Path, actors: int, batch_size: int) -> float:
    """Seconds for fastervit-batch's work over ``folder`` with ``actors`` actors."""
    cpus_per_actor = min(1.0, ((os.cpu_count() or 2) - 1) / actors)  # one CPU left to read files
    start = time.perf_counter()
    summary = predict_files(
        [str(folder)], onnx_path, str(output), actors=actors, cpus_per_actor=cpus_per_actor, batch_size=batch_size
    )
    seconds = time.perf_counter() - start
    assert summary.rows == summary.files and summary.errors == 0, summary
    return seconds


def table(rows: list[dict]) -> str:
    lines = ["| path | seconds | images/s | infer / path |", "|---|---:|---:|---:|"]
    reference = rows[0]["images_per_s"]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | {reference / r['images_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32, help="files per actor call")
    parser.add_argument("--json", type=Path, default=Path("bench/results/batch.json"))
    parser.add_argument("--smoke", action="store_true", help="the digits model, 24 images")
    args = parser.parse_args()
    import ray

    name, checkpoint = "faster_vit_0_224", None
    if args.smoke:
        name, checkpoint, args.images = "faster_vit_digits", FIXTURE, 24
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        onnx_path = export_model(
            ExportOptions(model=name, checkpoint=checkpoint, precision="fp32", output_dir=tmp / "model"), None
        ).onnx_path
        folder = tmp / "images"
        folder.mkdir()
        for i, jpeg in enumerate(sample_jpegs(args.images)):
            (folder / f"{i:05d}.jpg").write_bytes(jpeg)
        files = sorted(str(p) for p in folder.glob("*.jpg"))
        (tmp / "warm-up").mkdir()
        (tmp / "warm-up" / "0.jpg").write_bytes(Path(files[0]).read_bytes())
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        try:
            time_ray(onnx_path, tmp / "warm-up", tmp / "out-warm-up", 1, args.batch_size)  # worker processes
            timings = {"infer": time_infer(onnx_path, files)}
            for actors in args.actors:
                timings[f"ray-{actors}"] = time_ray(onnx_path, folder, tmp / f"out-{actors}", actors, args.batch_size)
        finally:
            ray.shutdown()
    rows = [
        {"path": path, "seconds": seconds, "images_per_s": args.images / seconds} for path, seconds in timings.items()
    ]
    by_path = {r["path"]: r for r in rows}
    overhead = by_path["infer"]["images_per_s"] / by_path["ray-1"]["images_per_s"] if "ray-1" in by_path else None
    print(
        f"\n{name} FP32 ONNX Runtime (CPU, {os.cpu_count()} cores), {args.images} 640x480 JPEGs, "
        f"batch size {args.batch_size}, end to end, {datetime.date.today()}\n"
    )
    print(table(rows))
    if overhead is not None:
        print(f"Ray's overhead at 1 actor (infer / ray-1 throughput): {overhead:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "model": name,
                "backend": "onnxruntime-cpu",
                "images": args.images,
                "batch_size": args.batch_size,
                "cpus": os.cpu_count(),
                "date": str(datetime.date.today()),
                "rows": rows,
                "ray_overhead_at_1_actor": overhead,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
