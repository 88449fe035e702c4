#!/usr/bin/env python3
"""Everything measurable on the first GPU, in one command: runs what the machine has and
lists what it skipped and why.

Contenders, same weights (random, seeded), batch 1, 8, 32, 128:
  PyTorch eager FP32; AMP FP16 channels-last (ours, and the official `fastervit` model);
  torch.compile (AMP); ONNX Runtime CUDA EP (FP32 ONNX); TensorRT FP16 / INT8 / FP8 engines
  through our runtime.
Models: faster_vit_0_224 and faster_vit_0_any_res at 512x512. Every engine is compared with
its ONNX on the shipped photos by Polygraphy's Comparator (TensorRT vs ONNX Runtime runners,
fed by fastervit_trt/polygraphy_data.py). PyTorch contenders time CUDA tensors already on
the GPU; ONNX Runtime and TensorRT ones take NumPy batches (host-to-device copy included).
Prints a table of p50/p99 latency and img/s, writes JSON and Markdown. Each engine is also
served to 1, 8 and 32 concurrent clients sending single JPEGs, one call per request against
the dynamic batcher (``fastervit_trt.runtime.benchmark.serving``, as bench/serving.py).

  python bench/gpu_suite.py                          # the whole suite (a GPU machine)
  python bench/gpu_suite.py --contenders eager amp official-amp --batch 128
  python bench/gpu_suite.py --smoke --json /tmp/s.json   # seconds: tiny sizes, CPU is fine
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS = [("faster_vit_0_224", None), ("faster_vit_0_any_res", (512, 512))]
CONTENDERS = ["eager", "amp", "official-amp", "compile", "ort-cuda", "trt-fp16", "trt-int8", "trt-fp8"]


class Skip(Exception):
    """A contender this machine cannot run; the message says why."""


@dataclass
class Contender:
    """What one contender runs: ``run(x)``, on "torch" or "numpy" inputs; ``engine``: the
    (engine, onnx) pair to check for parity; ``close`` frees what it holds on the GPU."""

    run: Callable
    kind: str
    engine: tuple[Path, Path] | None = None
    close: Callable[[], None] = lambda: None
    model: object = None  # an engine's runtime model: also measured under concurrent clients


def _torch_contender(model, device: str, amp: bool, channels_last: bool) -> Contender:
    import torch

    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode(), torch.autocast(device, torch.float16, enabled=amp):
            out = model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    def close() -> None:  # the weights leave the GPU before the next contender loads
        model.to("cpu")
        if device == "cuda":
            torch.cuda.empty_cache()

    return Contender(run, "torch", close=close)


def _need_cuda(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise Skip(f"{what} needs a CUDA GPU (torch sees none)")


def make_contender(contender: str, name: str, resolution, tmp: Path, device: str) -> Contender:
    """What ``contender`` runs for model ``name``."""
    from fastervit_trt.models import create_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.parity: the official model, the oracle
    from tests.parity import official_model, randomize_

    if contender == "eager":
        return _torch_contender(create_model(name, resolution=resolution), device, False, False)
    if contender in ("amp", "compile"):
        _need_cuda("AMP FP16")
        model = create_model(name, resolution=resolution)
        if contender == "compile":
            import torch

            model = torch.compile(model)
        return _torch_contender(model, device, True, True)
    if contender == "official-amp":
        _need_cuda("AMP FP16")
        try:
            official = randomize_(official_model(name, resolution))
        except Exception as exc:  # not an official variant name, or the package is absent
            raise Skip(f"no official model for {name}: {exc}") from None
        return _torch_contender(official, device, True, True)
    if contender == "ort-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("ONNX Runtime has no CUDA execution provider (pip install onnxruntime-gpu)")
        session = ort.InferenceSession(str(_export(name, resolution, tmp, "fp32")), providers=["CUDAExecutionProvider"])
        feed = session.get_inputs()[0].name
        return Contender(lambda x: session.run(None, {feed: x})[0], "numpy")
    precision = contender.split("-")[1]
    from fastervit_trt.tensorrt_import import import_tensorrt

    if import_tensorrt("tensorrt") is None:
        raise Skip("TensorRT is not installed (pip install 'fastervit-trt[tensorrt]')")
    _need_cuda("a TensorRT engine")
    return _engine_contender(_export(name, resolution, tmp, precision))


def _export(name: str, resolution, tmp: Path, precision: str) -> Path:
    from fastervit_trt.export.pipeline import ExportOptions, export_model
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    options = ExportOptions(
        model=name, resolution=resolution, precision=precision, batch=(1, 32, 128), output_dir=tmp / name, force=True
    )
    path = options.onnx_path
    if not path.is_file():
        result = (
            export_quantized(options, CalibrationOptions(images=64, no_speed=True), None)
            if precision in ("int8", "fp8")
            else export_model(options, None)
        )
        path = result.onnx_path
    return path


def _engine_contender(onnx_path: Path) -> Contender:
    from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine

    engine = onnx_path.with_suffix(".engine")
    try:
        build_engine(onnx_path, engine, BuildConfig(batch=(1, 32, 128), backend="tensorrt", force=True))
    except EngineBuildError as exc:
        raise Skip(f"engine build failed: {exc}") from None
    from fastervit_trt.runtime import load

    model = load(engine)
    return Contender(model.logits, "numpy", (engine, onnx_path), model.close, model)


def polygraphy_parity(engine: Path, onnx_path: Path) -> dict:
    """Polygraphy's Comparator: TensorRT vs ONNX Runtime on the shipped photos."""
    import os

    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    import fastervit_trt.polygraphy_data as photos

    os.environ["FASTERVIT_MODEL"] = str(onnx_path)
    runners = [
        TrtRunner(EngineFromBytes(engine.read_bytes())),
        OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"])),
    ]
    results = Comparator.run(runners, data_loader=photos.load_data())
    tolerance = 0.05 if "int8" in engine.name else 0.01
    passed = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=tolerance, rtol=tolerance)))
    return {"engine": str(engine), "tolerance": tolerance, "passed": passed}


def time_runner(run, x, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        run(x)
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        run(x)
        samples.append(time.perf_counter() - start)
    ms = np.asarray(samples) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "img_per_s": float(len(x) / np.median(samples)),
    }


def measure(
    measured: Contender, contender: str, name: str, resolution, batches: list[int], iters: int, warmup: int, device: str
) -> list[dict]:
    """One row per batch size: ``measured`` timed on seeded random inputs."""
    import torch

    size = resolution or (224, 224)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, *size), dtype=np.float32)
        feed = torch.from_numpy(x).to(device) if measured.kind == "torch" else x
        if measured.kind == "torch" and contender != "eager":
            feed = feed.contiguous(memory_format=torch.channels_last)
        rows.append(
            {
                "model": name if resolution is None else f"{name} {size[0]}x{size[1]}",
                "contender": contender,
                "batch": batch,
                **time_runner(measured.run, feed, iters, warmup),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | contender | batch | p50 ms | p99 ms | img/s |", "|---|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['model']} | {r['contender']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
        f"{r['img_per_s']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contenders", nargs="+", default=CONTENDERS, choices=CONTENDERS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument(
        "--serving-seconds",
        type=float,
        default=5.0,
        help="engines: per cell of the concurrent-clients run (1, 8, 32 clients sending one "
        "JPEG each, direct calls vs the dynamic batcher, as bench/serving.py)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/gpu_suite.json"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="faster_vit_0_any_res at 64x64, batch 1 and 2, 2 iterations: checks the script",
    )
    args = parser.parse_args()
    import torch

    models, warmup = MODELS, 5
    if args.smoke:
        models, args.batch, args.iters, warmup = [("faster_vit_0_any_res", (64, 64))], [1, 2], 2, 1
        args.serving_seconds = 0.5
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    from fastervit_trt.runtime.benchmark import sample_jpegs, serving

    rows, skipped, parity, served, jpegs = [], [], [], [], sample_jpegs(26)
    with tempfile.TemporaryDirectory() as tmp:
        for name, resolution in models:
            for contender in args.contenders:
                print(f"{name} {contender} ...", file=sys.stderr, flush=True)
                try:
                    measured = make_contender(contender, name, resolution, Path(tmp), device)
                except Skip as why:
                    skipped.append({"model": name, "contender": contender, "reason": str(why)})
                    continue
                try:
                    if measured.engine is not None:
                        parity.append({"model": name, "contender": contender, **polygraphy_parity(*measured.engine)})
                    rows += measure(measured, contender, name, resolution, args.batch, args.iters, warmup, device)
                    if measured.model is not None:
                        served += [
                            {"model": name, "contender": contender, **row}
                            for row in serving(
                                measured.model, jpegs, [1, 8, 32], args.serving_seconds, progress=sys.stderr
                            )
                        ]
                finally:  # one contender on the GPU at a time
                    measured.close()
    print(f"\n{gpu or 'no GPU: CPU only'}, {datetime.date.today()}\n")
    print(table(rows))
    for row in served:
        print(
            f"serving {row['contender']} ({row['model']}), {row['clients']} clients: direct "
            f"{row['direct']['req_per_s']:.1f} req/s, batcher {row['batcher']['req_per_s']:.1f} req/s, "
            f"mean batch {row['mean_batch']:.1f}, p50 {row['direct']['p50_ms']:.1f} -> {row['batcher']['p50_ms']:.1f} ms"
        )
    for skip in skipped:
        print(f"skipped {skip['contender']} ({skip['model']}): {skip['reason']}")
    for check in parity:
        print(
            f"parity {check['contender']} ({check['model']}): {'pass' if check['passed'] else 'FAIL'} "
            f"(Polygraphy, tolerance {check['tolerance']})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "device": gpu or "cpu",
                "date": str(datetime.date.today()),
                "rows": rows,
                "serving": served,
                "skipped": skipped,
                "parity": parity,
            },
            indent=2,
        )
        + "\n"
    )
    args.json.with_suffix(".md").write_text(table(rows) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(c["passed"] for c in parity) else 1


if __name__ == "__main__":
    sys.exit(main())
