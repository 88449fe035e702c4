#!/usr/bin/env python3
"""FasterViT as a detection backbone (``fastervit-export --features``) at a detection size.

For each model and precision: export the four-stage feature graph in a fresh process (its
peak resident memory is its own; INT8 and FP8 calibrated on the shipped photos), build a
TensorRT-RTX engine from it (batch 1, on this CPU), and time ONNX Runtime on the CPU at
batch 1 against PyTorch eager of the same backbone in the same run, calls interleaved.
Weights are random (seeded): time and memory do not depend on their values. Prints a table
and writes JSON and Markdown.

  python bench/backbone.py                                   # 0 and 2 any-res at 800x1216 (~1 h on 2 cores)
  python bench/backbone.py --models faster_vit_0_any_res --precisions fp32 fp16
  python bench/backbone.py --smoke --json /tmp/b.json        # 128x192, FP32, in a minute
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9


def export_one(model: str, precision: str, folder: Path, resolution: tuple[int, int], calib_images: int) -> dict:
    """Run inside the child process: one feature export, its numbers and its peak RSS."""
    from fastervit_trt.export.pipeline import ExportOptions, export_model
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    options = ExportOptions(
        model=model,
        precision=precision,
        output_dir=folder,
        resolution=resolution,
        features=(1, 2, 3, 4),
        batch=(1, 1, 1),
        force=True,
    )
    start = time.perf_counter()
    if precision in ("int8", "fp8"):
        result = export_quantized(options, CalibrationOptions(images=calib_images, heldout=8, no_speed=True))
    else:
        result = export_model(options)
    report = result.report
    return {
        "model": model,
        "precision": precision,
        "resolution": list(resolution),
        "onnx": str(result.onnx_path),
        "export_s": round(time.perf_counter() - start, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "nodes": report["onnx"]["nodes"],
        "onnx_bytes": report["onnx"]["bytes"],
        "verdict": (report.get("validation") or {}).get("verdict") or report["accuracy"]["summary"],
    }


def build(row: dict, folder: Path) -> None:
    """A batch-1 TensorRT-RTX engine of the row's graph: build seconds and engine size."""
    from fastervit_trt.engines import BuildConfig, build_engine

    sidecar = build_engine(
        Path(row["onnx"]), folder / (Path(row["onnx"]).stem + ".engine"), BuildConfig(batch=(1, 1, 1), force=True)
    )
    row["build_s"], row["engine_bytes"] = sidecar["build"]["seconds"], sidecar["engine"]["bytes"]
    row["compute_capabilities"] = sidecar["build"]["compute_capabilities"]


def time_against_eager(rows: list[dict], iters: int) -> None:
    """ONNX Runtime (CPU) at batch 1 for each row of one model, and PyTorch eager of the
    same backbone, in one interleaved run: p50 latency and the ratio eager / ONNX Runtime."""
    import torch

    from fastervit_trt.models import Backbone, create_model
    from fastervit_trt.runtime import load
    from fastervit_trt.runtime.benchmark import benchmark

    model, resolution = rows[0]["model"], tuple(rows[0]["resolution"])
    torch.manual_seed(0)
    eager = Backbone(create_model(model, resolution=resolution), (1, 2, 3, 4)).eval()

    def eager_run(batch):
        with torch.inference_mode():
            return eager(torch.from_numpy(batch))

    runners = {"eager": eager_run}
    for row in rows:
        runners[row["precision"]] = load(row["onnx"], provider="cpu").features
    timed = {r["model"]: r for r in benchmark(runners, (3, *resolution), [1], iters=iters, warmup=1)}
    for row in rows:
        row["ort_cpu_ms"], row["eager_ms"] = timed[row["precision"]]["p50_ms"], timed["eager"]["p50_ms"]
        row["eager_over_ort"] = round(row["eager_ms"] / row["ort_cpu_ms"], 2)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | res | precision | nodes | export s | export peak RSS (GB) | TensorRT-RTX build s | "
        "engine MB | ORT CPU ms (batch 1) | PyTorch eager ms | eager / ORT |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['resolution'][0]}x{r['resolution'][1]} | {r['precision']} | {r['nodes']} | "
            f"{r['export_s']:.0f} | {r['peak_rss_bytes'] / GB:.2f} | {r.get('build_s', float('nan')):.1f} | "
            f"{r.get('engine_bytes', 0) / 1e6:.1f} | {r.get('ort_cpu_ms', float('nan')):.0f} | "
            f"{r.get('eager_ms', float('nan')):.0f} | {r.get('eager_over_ort', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["faster_vit_0_any_res", "faster_vit_2_any_res"])
    parser.add_argument("--resolution", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "fp16", "int8", "fp8"], choices=("fp32", "fp16", "int8", "fp8")
    )
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed batch-1 calls per runner")
    parser.add_argument("--json", type=Path, default=Path("bench/results/backbone.json"))
    parser.add_argument("--smoke", action="store_true", help="faster_vit_0_any_res at 128x192, FP32, 2 calls")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "PRECISION", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = export_one(args.one[0], args.one[1], Path(args.one[2]), tuple(args.resolution), args.calib_images)
        print(json.dumps(row))
        return 0
    if args.smoke:
        args.models, args.resolution, args.precisions, args.iters = ["faster_vit_0_any_res"], [128, 192], ["fp32"], 2
    from fastervit_trt.engines import load_tensorrt

    flavour, trt = load_tensorrt()
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            model_rows = []
            for precision in args.precisions:
                print(f"exporting {model} {precision} ...", file=sys.stderr, flush=True)
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        model,
                        precision,
                        tmp,
                        "--resolution",
                        *map(str, args.resolution),
                        "--calib-images",
                        str(args.calib_images),
                    ],
                    capture_output=True,
                    text=True,
                )
                if child.returncode != 0:
                    print(child.stderr[-2000:], file=sys.stderr)
                    return 1
                row = json.loads(child.stdout.strip().splitlines()[-1])
                print(f"building {model} {precision} ...", file=sys.stderr, flush=True)
                build(row, Path(tmp))
                model_rows.append(row)
            print(f"timing {model} ...", file=sys.stderr, flush=True)
            time_against_eager(model_rows, args.iters)
            rows += model_rows
    print(table(rows))
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{len(rows)} exports and builds ({flavour} {trt.__version__}), {minutes:.1f} min")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"builder": f"{flavour} {trt.__version__}", "minutes": round(minutes, 1), "rows": rows}, indent=2)
        + "\n"
    )
    args.json.with_suffix(".md").write_text(table(rows) + "\n")
    print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
