#!/usr/bin/env python3
"""ONNX Runtime CPU throughput: our export vs the official package's export vs PyTorch eager.

All three run the same random weights. The official graph is exported the way the
official repository does it (TorchScript exporter, opset 17, dynamic batch); ours with
``fastervit-export --precision fp32``. Contenders are timed in interleaved rounds so that
machine noise hits them alike; the table reports the median img/s and ratios against the
official export. Also measured: export wall time and TensorRT-RTX build time.

  python bench/export_speed.py                        # faster_vit_0_224, batch 1 and 8
  python bench/export_speed.py --batch 1 8 --rounds 7 --json bench/results/export_speed.json
  python bench/export_speed.py --smoke --json /tmp/smoke.json   # seconds: the any-res model at 64x64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from fastervit_trt.export.pipeline import ExportOptions, export_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.parity: the official model, the oracle
from tests.parity import official_model, randomize_


def export_official(model: torch.nn.Module, path: Path, resolution: tuple[int, int]) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, *resolution),),
            str(path),
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return time.perf_counter() - start


def ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def torch_runner(model: torch.nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def rtx_build_seconds(path: Path, batch: tuple[int, int, int]) -> float | str:
    from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine

    try:
        with tempfile.TemporaryDirectory() as tmp:
            return build_engine(path, Path(tmp) / "e.engine", BuildConfig(batch=batch))["build"]["seconds"]
    except EngineBuildError as exc:
        return f"failed: {str(exc)[:200]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster_vit_0_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed work per contender per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--resolution",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (any-res models); the variant's own when omitted",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/export_speed.json"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes in seconds (faster_vit_0_any_res at 64x64, one short round): "
        "checks the script runs, measures nothing",
    )
    args = parser.parse_args()
    if args.smoke:
        args.model, args.resolution, args.batch, args.rounds, args.seconds = (
            "faster_vit_0_any_res",
            [64, 64],
            [1],
            1,
            0.05,
        )
    torch.set_num_threads(args.threads)
    resolution = tuple(args.resolution) if args.resolution else None

    official = randomize_(official_model(args.model, resolution))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(official.state_dict(), tmp / "weights.pth")
        official_path = tmp / "official.onnx"
        official_export_s = export_official(
            official, official_path, resolution or official.pretrained_cfg["input_size"][1:]
        )
        start = time.perf_counter()
        ours = export_model(
            ExportOptions(
                model=args.model,
                checkpoint=tmp / "weights.pth",
                resolution=resolution,
                precision="fp32",
                output_dir=tmp / "ours",
            )
        )
        ours_export_s = time.perf_counter() - start
        ours_fp16 = export_model(
            ExportOptions(
                model=args.model,
                checkpoint=tmp / "weights.pth",
                resolution=resolution,
                precision="fp16",
                output_dir=tmp / "ours",
            )
        )
        resolution = tuple(ours.report["arch"]["resolution"])
        nodes = {
            "official": len(onnx.load(str(official_path), load_external_data=False).graph.node),
            "ours": ours.report["onnx"]["nodes"],
        }
        profile = (1, max(args.batch), max(args.batch))
        builds = {
            "ours fp32": rtx_build_seconds(ours.onnx_path, profile),
            "ours fp16": rtx_build_seconds(ours_fp16.onnx_path, profile),
            "official fp32": rtx_build_seconds(official_path, profile),
        }
        runners = {
            "official onnx": ort_runner(official_path, args.threads),
            "ours onnx": ort_runner(ours.onnx_path, args.threads),
            "pytorch eager": torch_runner(official),
        }
        rng = np.random.default_rng(0)
        results = {}
        for batch in args.batch:
            x = rng.standard_normal((batch, 3, *resolution), dtype=np.float32)
            reference = runners["official onnx"](x)
            for name, run in runners.items():  # warm-up and agreement check
                assert np.allclose(run(x), reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max()), name
            rates: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(args.rounds):
                for name, run in runners.items():
                    calls, start = 0, time.perf_counter()
                    while time.perf_counter() - start < args.seconds:
                        run(x)
                        calls += 1
                    rates[name].append(calls * batch / (time.perf_counter() - start))
            results[batch] = {name: statistics.median(r) for name, r in rates.items()}

    base = "official onnx"
    print(
        f"\n{args.model}: ONNX Runtime CPU ({args.threads} threads), median img/s of {args.rounds} interleaved rounds"
    )
    print(f"{'batch':>5s}  " + "  ".join(f"{n:>14s}" for n in runners) + "   ours/official  ours/eager")
    for batch, row in results.items():
        print(
            f"{batch:5d}  "
            + "  ".join(f"{row[n]:14.1f}" for n in runners)
            + f"   {row['ours onnx'] / row[base]:13.2f}x  {row['ours onnx'] / row['pytorch eager']:9.2f}x"
        )
    print(f"\nnodes: official {nodes['official']}, ours {nodes['ours']}")
    print(
        f"export wall time: official {official_export_s:.1f} s (trace only), ours {ours_export_s:.1f} s "
        "(trace + simplify + validate)"
    )
    for name, seconds in builds.items():
        shown = f"{seconds:.1f} s" if isinstance(seconds, float) else seconds
        print(f"TensorRT-RTX build ({name}): {shown}")
    payload = {
        "model": args.model,
        "threads": args.threads,
        "rounds": args.rounds,
        "img_per_s": {str(b): r for b, r in results.items()},
        "ratio_ours_vs_official": {str(b): r["ours onnx"] / r[base] for b, r in results.items()},
        "ratio_ours_vs_eager": {str(b): r["ours onnx"] / r["pytorch eager"] for b, r in results.items()},
        "nodes": nodes,
        "export_seconds": {"official": official_export_s, "ours": ours_export_s},
        "tensorrt_rtx_build_seconds": builds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
