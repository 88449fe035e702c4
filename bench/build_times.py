#!/usr/bin/env python3
"""Export and TensorRT(-RTX) build time per precision and builder optimization level.

Exports faster_vit_0_224 (random weights) as FP32, FP16, INT8 and FP8 (64 calibration
inputs), then builds each at the given optimization levels, interleaving precisions per level.

  python bench/build_times.py --levels 0 3 5
  python bench/build_times.py --smoke --json /tmp/smoke.json   # the 1 M-parameter test model, level 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fastervit_trt.engines import BuildConfig, build_engine, load_tensorrt
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster_vit_0_224")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 3, 5])
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--json", type=Path, default=Path("bench/results/build_times.json"))
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes in seconds (faster_vit_digits, level 0, 16 calibration inputs)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.model, args.levels, args.batch, args.calib_images = "faster_vit_digits", [0], "1,2,4", 16
    batch = tuple(int(b) for b in args.batch.split(","))
    flavour, trt = load_tensorrt()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exports = {
            p: export_model(ExportOptions(model=args.model, precision=p, output_dir=tmp)) for p in ("fp32", "fp16")
        }
        for p in ("int8", "fp8"):
            exports[p] = export_quantized(
                ExportOptions(model=args.model, precision=p, output_dir=tmp),
                CalibrationOptions(images=args.calib_images, no_speed=True),
            )
        graphs = {p: result.onnx_path for p, result in exports.items()}
        export_s = {p: round(sum(result.report["seconds"].values()), 1) for p, result in exports.items()}
        for level in args.levels:
            for precision, onnx_path in graphs.items():
                sidecar = build_engine(
                    onnx_path,
                    tmp / f"{precision}_{level}.engine",
                    BuildConfig(batch=batch, opt_level=level, force=True),
                )
                rows.append(
                    {
                        "precision": precision,
                        "export_s": export_s[precision],
                        "opt_level": level,
                        "seconds": sidecar["build"]["seconds"],
                        "engine_mb": round(sidecar["engine"]["bytes"] / 1e6, 1),
                    }
                )
    print(f"\n{args.model}: {flavour} {trt.__version__} build times (batch profile {args.batch})")
    print(f"{'precision':>9s} {'export s':>9s} {'opt level':>9s} {'build s':>8s} {'engine MB':>10s}")
    for row in rows:
        print(
            f"{row['precision']:>9s} {row['export_s']:9.1f} {row['opt_level']:9d} {row['seconds']:8.1f} "
            f"{row['engine_mb']:10.1f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"builder": f"{flavour} {trt.__version__}", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
