#!/usr/bin/env python3
"""FP32 / FP16 / INT8 entropy / FP8 accuracy on the same held-out inputs (the README's table),
INT8 and FP8 with and without bias correction, and how FP8's error on faster_vit_0_224
spreads over its layers (``--sensitivity``: what each layer costs alone, against the whole).

faster_vit_0_224 with random weights: each quantized export's report, 64 calibration inputs
from the shipped photos, 32 held-out crops (ONNX Runtime Q/DQ arithmetic against the FP32
graph). faster_vit_digits, the trained test fixture (needs the repository's tests/ and
scikit-learn, as the test extras install): calibrated on 256 training scans, top-1 and
logit cosine against FP32 on the 360 held-out scans. Accuracy, not time: one run suffices.

  python bench/precision_accuracy.py
  python bench/precision_accuracy.py --json /tmp/precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from fastervit_trt.compare import compare
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.graph.ort_eval import ort_logits

QUANTIZED = {
    "int8": ("int8", True),
    "fp8": ("fp8", True),
    "int8_no_bias_correction": ("int8", False),
    "fp8_no_bias_correction": ("fp8", False),
}
PRECISIONS = ("fp32", "fp16", *QUANTIZED)
ROOT = Path(__file__).resolve().parents[1]


def random_init(folder: Path, calib_images: int) -> tuple[dict, dict]:
    """{precision: (mean cosine vs FP32, top-1 agreement %)} from the quantized exports' reports,
    and the FP8 export's cosine cost (1 - cosine) per layer quantized alone against the whole's."""
    reports = {
        name: export_quantized(
            ExportOptions(precision=fmt, output_dir=folder / name),
            CalibrationOptions(
                images=calib_images, bias_correction=corrected, sensitivity=name == "fp8", no_speed=True
            ),
        ).report
        for name, (fmt, corrected) in QUANTIZED.items()
    }
    accuracy = {name: report["accuracy"] for name, report in reports.items()}
    fp16 = accuracy["int8"]["fp16_vs_fp32"]  # the FP16 base graph both quantized exports share
    rows = {"fp32": (1.0, 100.0), "fp16": (fp16["mean_cosine"], fp16["top1_agreement"])}
    for p, report in accuracy.items():
        plain = report["quantized_vs_fp32_qdq_arithmetic"]
        rows[p] = (plain["mean_cosine"], 100.0 * plain["top1_agreement"])
    costs = [1.0 - row["mean_cosine"] for row in reports["fp8"]["sensitivity"]]
    spread = {
        "layers": len(costs),
        "max_layer_cost": max(costs),
        "sum_of_layer_costs": sum(costs),
        "whole_graph_cost": 1.0 - rows["fp8"][0],
    }
    return rows, spread


def digits(folder: Path) -> dict:
    """{precision: (mean cosine vs FP32, top-1 %)} of the trained fixture on its held-out scans."""
    sys.path.insert(0, str(ROOT))
    from fastervit_trt.runtime import load
    from tests.fixtures.digits import split_named, write_folder

    data = {name: write_folder(folder / name, *arrays) for name, arrays in split_named().items()}
    common = dict(model="faster_vit_digits", checkpoint=ROOT / "tests" / "fixtures" / "faster_vit_digits.pth")
    paths = {
        p: export_model(ExportOptions(precision=p, output_dir=folder / p, **common)).onnx_path for p in ("fp32", "fp16")
    }
    for name, (fmt, corrected) in QUANTIZED.items():
        paths[name] = export_quantized(
            ExportOptions(precision=fmt, output_dir=folder / name, **common),
            CalibrationOptions(data=data["train"], images=256, bias_correction=corrected, no_speed=True),
        ).onnx_path
    scans = sorted(data["heldout"].rglob("*.png"))
    labels = np.array([int(p.parent.name) for p in scans])
    inputs = np.stack([load(paths["fp32"]).preprocess.load(p) for p in scans])
    logits = {p: ort_logits(path, inputs, optimize=p in ("fp32", "fp16")) for p, path in paths.items()}
    return {
        p: (compare(logits["fp32"], out).mean_cosine, 100.0 * float((out.argmax(1) == labels).mean()))
        for p, out in logits.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--json", type=Path, default=Path("bench/results/precision_accuracy.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fv0, spread = random_init(Path(tmp) / "fv0", args.calib_images)
        tables = {
            "faster_vit_0_224 (random init), 32 held-out crops: cosine (top-1 agreement %)": fv0,
            "faster_vit_digits (trained), 360 held-out scans: cosine (top-1 %)": digits(Path(tmp) / "digits"),
        }
    for title, rows in tables.items():
        print(f"\n{title}")
        for p in PRECISIONS:
            print(f"  {p:24s} {rows[p][0]:.5f} ({rows[p][1]:6.2f})")
    print(
        f"\nfaster_vit_0_224 FP8, cosine cost (1 - cosine) of its {spread['layers']} layers, each quantized "
        f"alone: at most {spread['max_layer_cost']:.6f}, {spread['sum_of_layer_costs']:.5f} together; "
        f"all quantized at once: {spread['whole_graph_cost']:.5f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results = {
        title: {p: {"mean_cosine": rows[p][0], "top1": rows[p][1]} for p in PRECISIONS}
        for title, rows in tables.items()
    }
    args.json.write_text(json.dumps({**results, "faster_vit_0_224 fp8 sensitivity": spread}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
