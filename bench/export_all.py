#!/usr/bin/env python3
"""Export every official variant and measure what it costs on this machine.

Each export runs in a fresh process (so its peak resident memory is its own): FP32 and
FP16 for every variant at its default resolution (the 21K-768 any-res one at 768x768), and
INT8 (64 calibration inputs from the shipped photos) for FasterViT-0, 4, 6 and 4_21k_768.
Weights are random (seeded): memory and time do not depend on their values. No engine is
built. Prints a table, writes JSON and a Markdown table; rows are appended as they finish,
so an interrupted run keeps what it measured (``--resume`` skips rows already there).

The memory bound checked per row: at a variant's default resolution, 2.5 x its FP32 weight
bytes + 1.5 GB; at another resolution (where activations, not weights, dominate), FP16 and
INT8 within 1.5 x the FP32 export's peak at that resolution.

  python bench/export_all.py                                  # everything (hours on 2 cores)
  python bench/export_all.py --models 'faster_vit_0_*' --precisions fp32 fp16
  python bench/export_all.py --models faster_vit_4_any_res --resolution 800 1216
  python bench/export_all.py --models faster_vit_digits --precisions fp32 --json /tmp/x.json   # smoke
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INT8_MODELS = ("faster_vit_0_224", "faster_vit_4_224", "faster_vit_6_224", "faster_vit_4_21k_768")
RESOLUTION = {"faster_vit_4_21k_768_any_res": (768, 768)}
GB = 1e9


def default_resolution(model: str) -> tuple[int, int]:
    from fastervit_trt.models import get_variant

    return get_variant(model).arch.resolution


def bound_bytes(weight_bytes: int) -> float:
    return 2.5 * weight_bytes + 1.5 * GB


def plan(patterns: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """(model, precision) jobs; the default run takes the official variants, INT8 for a few."""
    from fastervit_trt.models import list_models

    everything = patterns == ["*"]
    names = [n for n in list_models(official_only=everything) if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return [
        (name, precision)
        for name in names
        for precision in precisions
        if precision != "int8" or name in INT8_MODELS or not everything
    ]


def export_one(model: str, precision: str, folder: Path, resolution: tuple[int, int] | None = None) -> dict:
    """Run inside the child process: one export, its numbers and this process's peak RSS."""
    import torch

    from fastervit_trt.export.pipeline import ExportOptions, export_model
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
    from fastervit_trt.models import create_model

    options = ExportOptions(
        model=model, precision=precision, output_dir=folder, resolution=resolution or RESOLUTION.get(model), force=True
    )
    with torch.device("meta"):
        shapes = create_model(model, resolution=options.resolution)
    parameters = sum(p.numel() for p in shapes.parameters())
    weight_bytes = sum(
        t.numel() * t.element_size() for t in [*shapes.parameters(), *shapes.buffers()] if t.is_floating_point()
    )
    start = time.perf_counter()
    error = None
    try:
        if precision == "int8":
            result = export_quantized(options, CalibrationOptions(images=64, no_speed=True))
        else:
            result = export_model(options)
        report = result.report
    except Exception as exc:  # noqa: BLE001 - the table records the failure
        report, error = {}, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    verdict = error or (report.get("validation", {}).get("verdict") or report.get("accuracy", {}).get("summary", ""))
    return {
        "model": model,
        "precision": precision,
        "resolution": list(shapes.variant.arch.resolution),
        "parameters": parameters,
        "fp32_weight_bytes": weight_bytes,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peak,
        "peak_over_weights": round(peak / weight_bytes, 2),
        "within_bound": peak <= bound_bytes(weight_bytes),
        "nodes": report.get("onnx", {}).get("nodes"),
        "onnx_bytes": report.get("onnx", {}).get("bytes"),
        "passed": error is None and report.get("validation", {}).get("passed", True),
        "verdict": verdict,
        "commit": commit(),
    }


def commit() -> str:
    """The code that measured a row (rows from different commits can share a table)."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return found.stdout.strip() or "unknown"


def check_bounds(rows: list[dict]) -> None:
    """Set each row's ``within_bound`` and ``bound`` (see the module docstring)."""
    fp32 = {(r["model"], tuple(r["resolution"])): r["peak_rss_bytes"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if not r["peak_rss_bytes"]:
            r["within_bound"], r["bound"] = False, "killed"
        elif tuple(r["resolution"]) == tuple(default_resolution(r["model"])) or RESOLUTION.get(r["model"]):
            r["within_bound"] = r["peak_rss_bytes"] <= bound_bytes(r["fp32_weight_bytes"])
            r["bound"] = "<= 2.5x weights + 1.5 GB"
        elif r["precision"] == "fp32" or (r["model"], tuple(r["resolution"])) not in fp32:
            r["within_bound"], r["bound"] = True, "reference"
        else:
            ratio = r["peak_rss_bytes"] / fp32[(r["model"], tuple(r["resolution"]))]
            r["within_bound"], r["bound"] = ratio <= 1.5, f"{ratio:.2f}x FP32 (<= 1.5x)"


def table(rows: list[dict]) -> str:
    check_bounds(rows)
    lines = [
        "| model | res | precision | params (M) | FP32 weights (GB) | export s | peak RSS (GB) | "
        "peak / weights | memory bound | nodes | validation | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['resolution'][0]}x{r['resolution'][1]} | {r['precision']} | "
            f"{r['parameters'] / 1e6:.1f} | {r['fp32_weight_bytes'] / GB:.2f} | {r['seconds']:.0f} | "
            f"{r['peak_rss_bytes'] / GB:.2f} | {r['peak_over_weights']:.2f} | "
            f"{'yes' if r['within_bound'] else 'NO'}: {r['bound']} | {r['nodes']} | "
            f"{'pass' if r['passed'] else 'FAIL'}: {r['verdict'][:90]} | {r.get('commit', '?')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["*"],
        metavar="PATTERN",
        help="registered names or shell patterns (default: every official variant)",
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"], choices=("fp32", "fp16", "int8"))
    parser.add_argument(
        "--resolution",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="export the (any-res) models at this size instead of their default",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/export_all.json"))
    parser.add_argument("--resume", action="store_true", help="keep the passed rows already in --json")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "PRECISION", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        resolution = tuple(args.resolution) if args.resolution else None
        print(json.dumps(export_one(args.one[0], args.one[1], Path(args.one[2]), resolution)))
        return 0
    jobs = plan(args.models, args.precisions)
    rows = json.loads(args.json.read_text())["rows"] if args.resume and args.json.is_file() else []
    rows = [r for r in rows if r["passed"]]  # failed rows are tried again
    done = {(r["model"], r["precision"], tuple(r["resolution"])) for r in rows}
    started = time.perf_counter()
    for model, precision in jobs:
        resolution = tuple(args.resolution) if args.resolution else RESOLUTION.get(model)
        if (model, precision, resolution or default_resolution(model)) in done:
            continue
        size = ["--resolution", *map(str, args.resolution)] if args.resolution else []
        with tempfile.TemporaryDirectory() as tmp:
            print(f"exporting {model} {precision} ...", file=sys.stderr, flush=True)
            child = subprocess.run(
                [sys.executable, __file__, "--one", model, precision, tmp, *size], capture_output=True, text=True
            )
        if child.returncode != 0:  # killed (out of memory) or crashed: recorded, not fatal
            rows.append(
                {
                    "model": model,
                    "precision": precision,
                    "resolution": list(resolution or default_resolution(model)),
                    "parameters": 0,
                    "fp32_weight_bytes": 1,
                    "seconds": 0,
                    "peak_rss_bytes": 0,
                    "peak_over_weights": 0,
                    "within_bound": False,
                    "nodes": None,
                    "onnx_bytes": None,
                    "passed": False,
                    "verdict": f"process exited {child.returncode}: {child.stderr.strip()[-200:]}",
                }
            )
        else:
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(table(rows).splitlines()[-1], file=sys.stderr, flush=True)  # bounds of every row updated
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))
    print(
        f"\n{len(rows)} exports, {(time.perf_counter() - started) / 60:.1f} min this run; "
        f"wrote {args.json} and {args.json.with_suffix('.md')}"
    )
    return 0 if all(r["passed"] and r["within_bound"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
