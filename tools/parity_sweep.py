#!/usr/bin/env python3
"""Parity of every registered variant with the official implementation, as a table.

Builds the official model with random weights, loads them into ours through a checkpoint
file, and compares eval-mode logits (float32, batch 2, random input).

  python tools/parity_sweep.py                          # all 22 names, default resolutions
  python tools/parity_sweep.py --models 'faster_vit_0*' --json parity.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from fastervit_trt.models import get_variant, list_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.parity: the official model, the oracle
from tests.parity import check_parity

TOLERANCE = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="*", help="shell pattern of model names")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    names = list_models(args.models, official_only=True)
    if not names:
        print(f"error: no model matches {args.models!r}", file=sys.stderr)
        return 2
    rows, failed = [], 0
    print(
        f"{'model':30s} {'resolution':>10s} {'max|diff|':>10s} {'max|logit|':>10s} "
        f"{'rel diff':>9s} {'top-1':>6s} {'time s':>7s}  result"
    )
    for name in names:
        start = time.perf_counter()
        report = check_parity(name, batch=args.batch)
        h, w = get_variant(name).arch.resolution
        ok = report.relative_diff <= TOLERANCE
        failed += not ok
        row = {
            "model": name,
            "resolution": [h, w],
            **report.as_dict(),
            "seconds": time.perf_counter() - start,
            "ok": ok,
        }
        rows.append(row)
        print(
            f"{name:30s} {f'{h}x{w}':>10s} {report.max_abs_diff:10.2e} {report.max_abs_reference:10.3f} "
            f"{report.relative_diff:9.1e} {report.top1_agreement:6.2f} {row['seconds']:7.1f}  "
            f"{'ok' if ok else 'FAIL'}",
            flush=True,
        )
        gc.collect()
    print(f"{len(rows) - failed} passed, {failed} failed (tolerance: max|diff| <= {TOLERANCE} x max|logit|)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
