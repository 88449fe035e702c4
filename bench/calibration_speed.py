#!/usr/bin/env python3
"""INT8 calibration cost, measured against plain inference in the same run.

1. Calibration (histograms of every quantized layer's input over N images) vs plain
   ONNX Runtime inference of the FP32 graph over the same N preprocessed images
   (target: calibration <= 2x inference). Preprocessing is done once, outside both timings.
2. The whole `fastervit-export --precision int8` of the model with 64 images (target <= 60 s
   on 2 cores; ModelOpt's ONNX PTQ takes about 290 s here).
3. ONNX Runtime CPU throughput of the Q/DQ INT8 model vs the FP32 model (report only:
   ONNX Runtime's CPU int8 path is not what TensorRT runs).

  python bench/calibration_speed.py                 # faster_vit_0_224, 256 images
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastervit_trt.calibration.collect import collect_histograms
from fastervit_trt.calibration.dataset import DEFAULT_DATA, CalibrationData
from fastervit_trt.calibration.qdq import placement
from fastervit_trt.calibration.ranges import compute_amax
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.models import get_variant
from fastervit_trt.preprocess import Preprocess


class Preloaded(CalibrationData):
    """The same inputs, preprocessed once, so both timings measure only the model work."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.inputs, self.count, self.source = inputs, len(inputs), Path("<memory>")

    def sample(self, index: int) -> np.ndarray:
        return self.inputs[index]


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def throughput(session, inputs: np.ndarray, batch: int) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: inputs[:batch]})
    start = time.perf_counter()
    for i in range(0, len(inputs) - batch + 1, batch):
        session.run(None, {name: inputs[i : i + batch]})
    return (len(inputs) // batch * batch) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster_vit_0_224")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--int8-images", type=int, default=64, help="calibration inputs of the whole INT8 export")
    parser.add_argument("--json", type=Path, default=Path("bench/results/calibration_speed.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes in seconds (faster_vit_digits, 16 images)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.images, args.int8_images = "faster_vit_digits", 16, 16
    preprocess = Preprocess.from_config(get_variant(args.model).eval)
    data = CalibrationData(DEFAULT_DATA, preprocess, args.images)
    inputs = np.stack([data.sample(i) for i in range(args.images)])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = export_model(ExportOptions(model=args.model, precision="fp32", output_dir=tmp / "fp32"))
        import onnx

        activations = placement(onnx.load(str(fp32.onnx_path)), "int8").activations

        session = ort_session(fp32.onnx_path, args.threads)
        inference_s = len(inputs) / throughput(session, inputs, args.batch)
        start = time.perf_counter()
        histograms, _ = collect_histograms(fp32.onnx_path, activations, Preloaded(inputs), args.batch, None)
        amax = {name: compute_amax(h, "entropy") for name, h in histograms.items()}
        calibration_s = time.perf_counter() - start

        start = time.perf_counter()
        int8 = export_quantized(
            ExportOptions(model=args.model, precision="int8", output_dir=tmp / "int8"),
            CalibrationOptions(images=args.int8_images, no_speed=True),
        )
        whole_int8_s = time.perf_counter() - start

        fp32_rate = throughput(session, inputs[: args.int8_images], args.batch)
        int8_rate = throughput(ort_session(int8.onnx_path, args.threads), inputs[: args.int8_images], args.batch)

    ratio = calibration_s / inference_s
    print(f"\n{args.model}, {args.images} images, batch {args.batch}, {args.threads} threads")
    print(f"{'plain ORT inference (FP32)':40s} {inference_s:8.1f} s")
    print(
        f"{'entropy calibration (' + str(len(amax)) + ' tensors)':40s} {calibration_s:8.1f} s   "
        f"{ratio:.2f}x inference (target <= 2x)"
    )
    print(
        f"{f'whole INT8 export, {args.int8_images} images':40s} {whole_int8_s:8.1f} s   (target <= 60 s; ModelOpt ~290 s)"
    )
    print(f"{'ORT CPU throughput FP32':40s} {fp32_rate:8.1f} img/s")
    print(
        f"{'ORT CPU throughput INT8 Q/DQ over FP16':40s} {int8_rate:8.1f} img/s   "
        f"{int8_rate / fp32_rate:.2f}x FP32 (report only)"
    )
    payload = {
        "model": args.model,
        "images": args.images,
        "batch": args.batch,
        "threads": args.threads,
        "inference_seconds": inference_s,
        "calibration_seconds": calibration_s,
        "calibration_over_inference": ratio,
        "whole_int8_export_seconds": whole_int8_s,
        "whole_int8_export_images": args.int8_images,
        "ort_img_per_s": {"fp32": fp32_rate, "int8_qdq_fp16": int8_rate},
        "int8_accuracy": int8.report["accuracy"]["summary"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
