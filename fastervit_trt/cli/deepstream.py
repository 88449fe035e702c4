"""``fastervit-deepstream``: a DeepStream nvinfer classifier config and labels for an export."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import add_options, command_parser, options_from, run


def parser() -> argparse.ArgumentParser:
    from ..deepstream import DeepStreamOptions

    parser = command_parser(
        "fastervit-deepstream",
        "examples:\n"
        "  fastervit-export --variant faster_vit_4_21k_384 --checkpoint w.pth.tar --precision int8 "
        "--input pixels --softmax\n"
        "  fastervit-export --variant faster_vit_0_224 --checkpoint my_finetune.pth.tar --class-names classes.txt "
        "--crop-mode squash --crop-pct 1 --input pixels --softmax\n"
        "  fastervit-deepstream engines/faster_vit_4_21k_384_int8_softmax_pixelsin.engine --out ds\n"
        "  fastervit-deepstream export/faster_vit_4_21k_384_int8_softmax_pixelsin.onnx --out ds "
        "--process-mode secondary --operate-on-gie-id 1",
        "Write a DeepStream nvinfer classifier config ([property] key file) and labels file (the "
        "export's own class names, else its label set's) for an export made with --input pixels "
        "--softmax and a plain resize, --crop-mode squash --crop-pct 1 (the transform of nvinfer, "
        "which cannot crop), or its engine: every value from the export's metadata, "
        "net-scale-factor 1 and zero offsets because the graph normalises per channel itself. "
        "Refuses, in one line naming the export flags missing, a model whose preprocessing nvinfer "
        "cannot reproduce.",
    )
    parser.add_argument("model", type=Path, help=".onnx export or .engine (with its sidecar)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the config and labels")
    add_options(parser, DeepStreamOptions)
    return parser


def _deepstream(args: argparse.Namespace) -> int:
    from ..deepstream import DeepStreamOptions, launch_example, write_deepstream

    options = options_from(DeepStreamOptions, args)
    config, labels = write_deepstream(args.model, args.out, options)
    print(f"wrote {config} and {labels}")
    print(f"run: {launch_example(config)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_deepstream, parser, argv, "fastervit-deepstream")


if __name__ == "__main__":
    sys.exit(main())
