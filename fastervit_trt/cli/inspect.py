"""``fastervit-inspect``: what is inside an ONNX file or an engine."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import add_json, command_parser, run


def parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "fastervit-inspect",
        "examples:\n  fastervit-inspect export/faster_vit_0_224_int8.onnx\n"
        "  fastervit-inspect engines/faster_vit_0_224_fp16.engine",
        "What is inside an ONNX file (ops, Q/DQ, float16 share, external data, export "
        "report) or an engine (sidecar, and its layers with precisions via TensorRT's "
        "engine inspector when a GPU is present).",
    )
    parser.add_argument("path", type=Path, help=".onnx or .engine")
    add_json(parser, "text")
    return parser


def _inspect(args: argparse.Namespace) -> int:
    from ..inspect import inspect_path

    info = inspect_path(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            elif isinstance(value, list):
                print(f"{key}: ({len(value)})")
                for item in value[:400]:
                    print(f"  {item}")
            else:
                print(f"{key}: {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_inspect, parser, argv, "fastervit-inspect")


if __name__ == "__main__":
    sys.exit(main())
