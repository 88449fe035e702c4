"""``fastervit-bench``: latency and throughput per batch size, optionally against PyTorch eager."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from .common import (
    PROFILE_TEXT,
    add_json,
    add_model_file,
    add_runtime_options,
    add_torch_variant,
    batch_sizes,
    command_parser,
    number,
    positive,
    renamed,
    run,
    runtime_options,
    torch_variant_name,
)


def parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "fastervit-bench",
        "examples:\n  fastervit-bench --model engines/faster_vit_0_224_fp16.engine --batch-sizes 1,8,32\n"
        "  fastervit-bench --model engines/faster_vit_0_224_fp16.engine --batch-sizes 1 --cuda-graphs\n"
        "  fastervit-bench --model export/faster_vit_0_224_fp32.onnx --torch-variant faster_vit_0_224 "
        "--checkpoint fastervit_0_224_1k.pth.tar --json",
        "Latency percentiles and throughput per batch size, optionally against PyTorch eager "
        "of the same weights measured in the same run.",
    )
    add_model_file(parser)
    parser.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=PROFILE_TEXT,
        metavar="B1,B2,...",
        help="batch sizes to time, one after another",
    )
    renamed(parser, "--batch", "--batch-sizes", type=batch_sizes, metavar="B1,B2,...")
    parser.add_argument("--iters", type=positive, default=50, help="timed calls per batch size")
    parser.add_argument("--warmup", type=number(int, 0), default=5)
    add_torch_variant(
        parser,
        "also time PyTorch eager FP32 of this variant (on the GPU when torch sees "
        "one, else the CPU; the row names the device)",
        old="--torch-model",
    )
    add_json(parser)
    add_runtime_options(parser)
    renamed(parser, "--cuda-graph", "--cuda-graphs", nargs="?", const=True, choices=[True])
    return parser


def _bench(args: argparse.Namespace) -> int:
    from ..runtime import load
    from ..runtime.benchmark import benchmark

    model = load(args.model, **asdict(runtime_options(args)))
    run = model.features if model.is_backbone else model.run  # a backbone: every feature map
    name = str(args.model.name) + (" (CUDA graph)" if args.cuda_graphs else "")
    runners = {name: run}
    runs_on = {name: (model.runs_on.provider, model.runs_on.device)}  # each row's provider and device
    preprocess = model.preprocess
    torch_variant = torch_variant_name(args)
    if torch_variant:
        import torch

        from ..models import Backbone, create_model

        classifier = create_model(torch_variant, checkpoint=args.checkpoint, resolution=preprocess.input_size)
        eager: torch.nn.Module = classifier
        if model.is_backbone:  # the same stages (and norms) as the exported backbone
            config = model.feature_config or {}
            stages = config.get("stages") or [int(name.removeprefix("stage")) for name in model.output_shapes]
            eager = Backbone(classifier, tuple(stages), bool(config.get("norm"))).eval()

        device = "cuda" if torch.cuda.is_available() else "cpu"  # like with like: the GPU when there is one
        eager = eager.to(device)

        def torch_run(batch):
            batch = preprocess.normalized(batch)  # what a --input uint8 / pixels graph computes first
            with torch.inference_mode():  # from the host, as the engine is fed
                out = eager(torch.from_numpy(batch).to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        eager_name = f"pytorch eager {device} ({torch_variant})"
        runners[eager_name] = torch_run
        runs_on[eager_name] = (f"pytorch {torch.__version__}", device)
    rows = benchmark(runners, preprocess.input_shape, args.batch_sizes, args.iters, args.warmup, preprocess.input_dtype)
    for row in rows:
        row["provider"], row["device"] = runs_on[row["model"]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'model':42s} {'provider':24s} {'device':7s} {'batch':>5s} {'p50 ms':>8s} {'p90 ms':>8s} "
        f"{'p99 ms':>8s} {'img/s':>9s}"
    )
    for row in rows:
        print(
            f"{row['model']:42s} {row['provider']:24s} {row['device']:7s} {row['batch']:5d} {row['p50_ms']:8.2f} "
            f"{row['p90_ms']:8.2f} {row['p99_ms']:8.2f} {row['img_per_s']:9.1f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_bench, parser, argv, "fastervit-bench")


if __name__ == "__main__":
    sys.exit(main())
