#!/usr/bin/env python3
"""Which graph for which runtime: FP32, FP16, INT8 for each target, FP8 and ONNX Runtime's own
``quantize_static`` on the same weights, timed against each other on ONNX Runtime's CPU
provider (the runtime at hand here), with each graph's logit cosine and top-1 agreement
with FP32 on held-out photos, and the picture of that trade-off.

Every graph is exported by the toolkit (INT8 / FP8: entropy calibration on 64 inputs of the
shipped photos); ``quantize_static`` gets the same 64 inputs (QDQ, per-channel, U8
activations / S8 weights, MinMax, as its documentation recommends for x86). Each graph runs
through the runtime (``fastervit_trt.runtime.load``, CPU provider), as ``fastervit-infer``
would run it: an FP8 file unoptimized, the others with ONNX Runtime's graph optimizations.
Timing: all graphs of a batch size interleaved in one process, after a warm-up, median of
``--repeats``; with ``--runs N`` the whole timing is repeated N times and each cell is the
median of the N medians. Cosine and top-1: 32 held-out crops of the shipped photos.

  python bench/quantized_speed.py --runs 3                          # faster_vit_0_224, the docs' table
  python bench/quantized_speed.py --variant faster_vit_1_224 --runs 3
  python bench/quantized_speed.py --smoke --out /tmp/q              # seconds: the digits fixture
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from fastervit_trt.calibration.dataset import DEFAULT_DATA, CalibrationData
from fastervit_trt.compare import compare
from fastervit_trt.export.pipeline import CalibrationOptions, ExportOptions, export_model
from fastervit_trt.graph.timing import cpu_features, time_runners
from fastervit_trt.runtime import load

ROOT = Path(__file__).resolve().parents[1]
# label -> (precision, target); None: ONNX Runtime's quantize_static of the FP32 graph
GRAPHS = {
    "FP32": ("fp32", "tensorrt"),
    "FP16": ("fp16", "tensorrt"),
    "INT8 --target tensorrt (default)": ("int8", "tensorrt"),
    "INT8 --target onnxruntime-cpu": ("int8", "onnxruntime-cpu"),
    "FP8 (E4M3, --target tensorrt)": ("fp8", "tensorrt"),
    "ONNX Runtime quantize_static": None,
}


def export_graphs(variant: str, folder: Path, calib_images: int, heldout: int) -> dict[str, Path]:
    """Every graph of ``GRAPHS`` for ``variant`` in ``folder``."""
    paths = {}
    for label, spec in GRAPHS.items():
        if spec is None:
            continue
        precision, target = spec
        options = ExportOptions(
            model=variant, precision=precision, target=target, output_dir=folder / f"{precision}_{target}"
        )
        calib = CalibrationOptions(images=calib_images, heldout=heldout, no_speed=True)
        paths[label] = export_model(options, None, calib if options.quantized else None).onnx_path
        print(f"exported {label}: {paths[label]}", file=sys.stderr)
    paths["ONNX Runtime quantize_static"] = ort_quantized(paths["FP32"], folder / "ort_qdq.onnx", calib_images)
    return paths


def ort_quantized(fp32: Path, out: Path, images: int) -> Path:
    """ONNX Runtime's own static quantization of ``fp32`` on the calibration inputs ours use."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = load(fp32, backend="onnxruntime", provider="cpu")
    data = CalibrationData(DEFAULT_DATA, model.preprocess, images)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(range(len(data)))

        def get_next(self) -> dict | None:
            index = next(self.items, None)
            return None if index is None else {"input": data.sample(index)[None]}

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def accuracy(paths: dict[str, Path], heldout: int) -> dict[str, dict]:
    """Each graph's logits against FP32's on held-out crops of the shipped photos."""
    models = {label: load(path, backend="onnxruntime", provider="cpu") for label, path in paths.items()}
    preprocess = models["FP32"].preprocess
    data = CalibrationData(DEFAULT_DATA, preprocess, heldout, split="heldout")
    inputs = np.stack([data.sample(i) for i in range(len(data))])
    reference = models["FP32"].run(inputs)
    return {label: compare(reference, model.run(inputs)).as_dict() for label, model in models.items()}


def timings(paths: dict[str, Path], batches: list[int], repeats: int, runs: int) -> dict[int, dict[str, float]]:
    """Median seconds per batch of each graph (the median of ``runs`` interleaved timings)."""
    models = {label: load(path, backend="onnxruntime", provider="cpu") for label, path in paths.items()}
    runners = {label: model.run for label, model in models.items()}
    shape = models["FP32"].preprocess.input_shape
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *shape)).astype(np.float32) for b in batches}
    rounds = []
    for run in range(runs):
        seconds, _ = time_runners(runners, inputs, repeats)
        rounds.append(seconds)
        print(f"timing run {run + 1}/{runs} done", file=sys.stderr)
    return {b: {label: statistics.median(r[b][label] for r in rounds) for label in runners} for b in batches}


def table(result: dict) -> str:
    """The markdown table: time per batch and ratio to FP32 at each batch size, cosine, top-1."""
    batches = result["batches"]
    head = (
        "| graph | " + " | ".join(f"batch {b}: ms (x FP32)" for b in batches) + " | cosine to FP32 | top-1 agreement |"
    )
    lines = [head, "|---|" + "---:|" * (len(batches) + 2)]
    for label in result["graphs"]:
        cells = []
        for b in batches:
            seconds = result["seconds"][str(b)][label]
            cells.append(f"{1000 * seconds:.1f} ({result['seconds'][str(b)]['FP32'] / seconds:.2f}x)")
        acc = result["accuracy"][label]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {acc['mean_cosine']:.5f} | {100 * acc['top1_agreement']:.1f} % |"
        )
    return "\n".join(lines)


def picture(result: dict, path: Path) -> None:
    """Speed (x FP32) against cosine to FP32, one point per graph and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    markers = dict(zip(result["batches"], "o^s"))
    for index, label in enumerate(result["graphs"]):
        color = plt.get_cmap("tab10")(index)
        cosine = result["accuracy"][label]["mean_cosine"]
        for b in result["batches"]:
            seconds = result["seconds"][str(b)]
            axes.scatter(
                1 - cosine + 1e-7,
                seconds["FP32"] / seconds[label],
                color=color,
                marker=markers.get(b, "o"),
                label=label if b == result["batches"][0] else None,
            )
    axes.set_xscale("log")
    axes.set_xlabel("1 - logit cosine to FP32 (held-out photos; left is closer)")
    axes.set_ylabel("speed, x FP32 (higher is faster)")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_title(
        f"{result['variant']} on {result['runtime']}\n"
        + ", ".join(f"{m} batch {b}" for b, m in markers.items())
        + f"; median of {result['runs']} runs",
        fontsize=9,
    )
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="faster_vit_0_224")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per graph and batch, per timing run")
    parser.add_argument("--runs", type=int, default=1, help="whole timing runs; each cell is their median")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for .md, .json, .png")
    parser.add_argument("--smoke", action="store_true", help="the digits fixture, batches 1,2, one repeat")
    args = parser.parse_args()
    variant, batches = args.variant, [int(b) for b in args.batches.split(",")]
    calib_images, heldout, repeats = 64, 32, args.repeats
    if args.smoke:
        variant, batches, calib_images, heldout, repeats = "faster_vit_digits", [1, 2], 16, 4, 1
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        paths = export_graphs(variant, Path(work), calib_images, heldout)
        result = {
            "variant": variant,
            "runtime": f"onnxruntime {ort.__version__} CPU ({cpu_features()}), {platform.machine()}",
            "batches": batches,
            "repeats": repeats,
            "runs": args.runs,
            "graphs": list(paths),
            "accuracy": accuracy(paths, heldout),
            "seconds": {str(b): t for b, t in timings(paths, batches, repeats, args.runs).items()},
        }
    stem = f"quantized_speed_{variant}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = (
        f"# Which graph for which runtime: {variant} on {result['runtime']}\n\n"
        f"`python bench/quantized_speed.py --variant {variant} --runs {args.runs}`: milliseconds per batch "
        f"(median of {repeats} interleaved runs, then of {args.runs} such runs) and speed against FP32 in the "
        f"same run; logit cosine and top-1 agreement with FP32 on {heldout} held-out crops.\n\n"
        + table(result)
        + f"\n\n![speed against cosine]({stem}.png)\n"
    )
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    picture(result, args.out / f"{stem}.png")
    print(table(result))
    print(f"wrote {args.out / stem}.md, .json, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
