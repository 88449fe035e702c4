"""``fastervit-eval``: top-1 / top-5 of engines, ONNX files and PyTorch side by side."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import EvaluationError, OptionsError
from .common import (
    add_json,
    add_runtime_options,
    add_torch_variant,
    command_parser,
    positive,
    renamed,
    run,
    runtime_options,
    torch_variant_name,
)


def parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "fastervit-eval",
        "examples:\n  fastervit-eval --data ~/imagenet/val --model engines/faster_vit_0_224_int8.engine "
        "--model export/faster_vit_0_224_fp32.onnx --limit 5000\n"
        "  fastervit-eval --data digits/heldout --model export/faster_vit_digits_int8.onnx "
        "--torch-variant faster_vit_digits --checkpoint tests/fixtures/faster_vit_digits.pth --json",
        "Top-1 / top-5 accuracy of engines, ONNX files and PyTorch models side by side on a "
        "labelled folder (<data>/<class>/<image>), with pairwise top-1 agreement and logit cosine.",
    )
    parser.add_argument("--data", type=Path, required=True, help="labelled image folder")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], metavar="FILE", help=".engine or .onnx (repeatable)"
    )
    add_torch_variant(parser, "also evaluate PyTorch eager of this variant", old="--torch")
    parser.add_argument(
        "--labels",
        type=Path,
        help="'<folder> <class index>' lines, for folders named neither as the model's class names nor as "
        "ImageNet synsets",
    )
    parser.add_argument("--limit", type=positive, help="evaluate N images spread evenly over the folder")
    parser.add_argument("--batch-size", type=positive, default=32, metavar="N", help="images per model call")
    renamed(parser, "--batch", "--batch-size", type=positive, metavar="N")
    add_json(parser, "tables")
    add_runtime_options(parser)
    return parser


def _eval(args: argparse.Namespace) -> int:

    from ..evaluate import TORCH_RUNS_ON, evaluate, labelled_samples, torch_runner
    from ..runtime import load

    torch_variant = torch_variant_name(args)
    if not args.model and not torch_variant:
        raise OptionsError("nothing to evaluate: pass --model FILE and/or --torch-variant NAME (or --checkpoint)")
    options = asdict(runtime_options(args))
    models = [load(path, **options) for path in args.model]
    names = models[0].names if models else None
    for model in models[1:]:
        if model.names != names:
            raise EvaluationError(
                f"{model.source}: its class names differ from {models[0].source}'s; evaluate models of the same classes"
            )
    samples = labelled_samples(args.data, args.labels, args.limit, names)
    runners: dict[str, Callable[[list[Path]], np.ndarray]] = {str(m.source): m.logits for m in models}
    runs_on = {str(m.source): m.runs_on for m in models}
    if torch_variant:
        transform = models[0].preprocess if models else None  # the export's own record
        runners[f"pytorch:{torch_variant}"] = torch_runner(torch_variant, args.checkpoint, transform)
        runs_on[f"pytorch:{torch_variant}"] = TORCH_RUNS_ON
    report = evaluate(runners, samples, args.batch_size, None if args.json else sys.stderr)
    for name, row in report["models"].items():
        row.update(provider=runs_on[name].provider, device=runs_on[name].device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['images']} images from {args.data}")
    print(f"{'model':60s} {'top-1 %':>8s} {'top-5 %':>8s}  runs on")
    for name, row in report["models"].items():
        print(f"{name:60s} {row['top1']:8.2f} {row['top5']:8.2f}  {row['provider']} on {row['device']}")
    for pair in report["pairs"]:
        print(
            f"{pair['a']}  vs  {pair['b']}: top-1 agreement {pair['top1_agreement']:.2f} %, "
            f"mean cosine {pair['mean_cosine']:.5f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_eval, parser, argv, "fastervit-eval")


if __name__ == "__main__":
    sys.exit(main())
