"""``fastervit-deepstream``: a DeepStream nvinfer classifier config and labels for an export."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import add_force, command_parser, number, options_or_error, positive, run


def parser() -> argparse.ArgumentParser:
    from ..deepstream import PROCESS_MODES, DeepStreamOptions

    d = DeepStreamOptions()
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
    parser.add_argument(
        "--process-mode",
        choices=tuple(PROCESS_MODES),
        default=d.process_mode,
        help="primary: whole frames; secondary: the objects of another nvinfer (a detector)",
    )
    parser.add_argument(
        "--threshold",
        type=number(float, 0, 1),
        default=d.threshold,
        help="classifier-threshold: the least probability at which a label is attached",
    )
    parser.add_argument("--gie-unique-id", type=positive, default=d.gie_unique_id)
    parser.add_argument(
        "--operate-on-gie-id",
        type=positive,
        default=d.operate_on_gie_id,
        help="secondary mode: the gie-unique-id of the detector whose objects are classified",
    )
    parser.add_argument("--gpu-id", type=number(int, 0), default=d.gpu_id)
    add_force(parser, "existing files")
    return parser


def _deepstream(args: argparse.Namespace) -> int:
    from ..deepstream import DeepStreamOptions, launch_example, write_deepstream

    options = options_or_error(
        lambda: DeepStreamOptions(
            process_mode=args.process_mode,
            threshold=args.threshold,
            gie_unique_id=args.gie_unique_id,
            operate_on_gie_id=args.operate_on_gie_id,
            gpu_id=args.gpu_id,
            force=args.force,
        )
    )
    config, labels = write_deepstream(args.model, args.out, options)
    print(f"wrote {config} and {labels}")
    print(f"run: {launch_example(config)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_deepstream, parser, argv, "fastervit-deepstream")


if __name__ == "__main__":
    sys.exit(main())
