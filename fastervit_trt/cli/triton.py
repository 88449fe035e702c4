"""``fastervit-triton``: a Triton Inference Server model repository for an engine or ONNX file."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import add_force, add_options, command_parser, options_from, run


def parser() -> argparse.ArgumentParser:
    from ..triton import TritonOptions

    parser = command_parser(
        "fastervit-triton",
        "examples:\n  fastervit-triton engines/faster_vit_0_224_fp16.engine --repo models\n"
        "  fastervit-triton export/faster_vit_0_224_fp32.onnx --repo models --kind cpu --instances 2\n"
        "  tritonserver --model-repository models",
        "Write a Triton Inference Server model repository (config.pbtxt + 1/model.plan or "
        "1/model.onnx) for an engine (TensorRT backend) or ONNX file (ONNX Runtime backend); a "
        "classifier also gets labels.txt, its class names for Triton's classification extension.",
    )
    parser.add_argument("model", type=Path, help=".engine (with its sidecar) or .onnx")
    parser.add_argument("--repo", type=Path, required=True, help="model repository folder")
    add_options(parser, TritonOptions)
    add_force(parser, "an existing model folder")
    return parser


def _triton(args: argparse.Namespace) -> int:
    from ..triton import LABELS_FILE, TritonOptions, write_model_repository

    options = options_from(TritonOptions, args)
    folder = write_model_repository(args.model, args.repo, options)
    model_file = next(p for p in (folder / "1").iterdir() if p.suffix in (".plan", ".onnx"))
    print(f"wrote {folder / 'config.pbtxt'} and {model_file}")
    if (folder / LABELS_FILE).is_file():
        print(
            f"wrote {folder / LABELS_FILE}: the class names Triton's classification extension answers "
            "(request the output with class_count=k: 'score:index:name')"
        )
    if args.image_bytes:
        print(
            f"wrote {folder.with_name(folder.name + '_preprocess')} and {folder.with_name(folder.name + '_bytes')} "
            "(send encoded images to the _bytes ensemble; the server's Python needs pip install fastervit-trt)"
        )
    print(f"serve: {shlex.join(['tritonserver', '--model-repository', str(args.repo)])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_triton, parser, argv, "fastervit-triton")


if __name__ == "__main__":
    sys.exit(main())
