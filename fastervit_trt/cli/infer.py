"""``fastervit-infer``: classify image files with an engine or ONNX file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import FasterViTTRTError
from .common import (
    EXIT_ERROR,
    add_decoding,
    add_json,
    add_model_file,
    add_runtime_options,
    command_parser,
    positive,
    run,
    runtime_options,
)

EXAMPLES = """\
examples:
  fastervit-infer cat.jpg dog.png --model engines/faster_vit_0_224_fp16.engine
  fastervit-infer photos/ --model export/faster_vit_0_224_fp32.onnx --topk 1 --json
  fastervit-infer cat.jpg --model export/faster_vit_0_224_fp32.onnx --provider cpu
"""


def parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "fastervit-infer",
        EXAMPLES,
        "Classify images with an engine or ONNX file (preprocessing and class names from its sidecar/metadata; "
        "a headless model answers each image's embedding). "
        "Images are decoded on a thread pool, the next batch while the model runs this one.",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files, or folders (read recursively)")
    add_model_file(parser)
    parser.add_argument("--topk", type=positive, default=5, help="classes shown per image")
    add_decoding(parser)
    add_json(parser)
    add_runtime_options(parser)
    return parser


def _infer(args: argparse.Namespace) -> int:
    from ..preprocess import IMAGE_SUFFIXES
    from ..runtime import load

    model = load(args.model, **asdict(runtime_options(args)))
    print(model.summary, file=sys.stderr)
    if args.exact_preprocess:
        model.preprocess = replace(model.preprocess, jpeg_draft=False)
    model.exif_rotate = not args.no_exif_rotate
    paths = [
        found
        for path in args.images
        for found in (
            sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        )
    ]
    failed, rows = [], []
    for path, answer in zip(paths, model.logits_each(paths)):
        if isinstance(answer, FasterViTTRTError):
            print(f"error: {answer}", file=sys.stderr)
            failed.append((path, answer))
        else:
            rows.append((path, answer))
    errors = [{"image": str(path), "error": str(error)} for path, error in failed]
    if model.is_embedding:
        _print_embeddings(rows, args.json, errors)
    else:
        _print_classes([(path, model.top(row[None], topk=args.topk)[0]) for path, row in rows], args.json, errors)
    if not paths:
        print("error: no images found in the given folders", file=sys.stderr)
    return EXIT_ERROR if failed or not paths else 0


def _print_classes(tops: list, as_json: bool, errors: list[dict]) -> None:
    """A classifier's answer: each image's top classes, most probable first (JSON: a file that
    failed has its own entry with the error)."""
    if as_json:
        found = [{"image": str(path), "top": [p.__dict__ for p in top]} for path, top in tops]
        print(json.dumps(found + errors, indent=2))
        return
    for path, top in tops:
        print(path)
        for rank, p in enumerate(top, 1):
            print(f"  {rank}. {p.probability:7.2%}  {p.name}  ({p.index})")


def _print_embeddings(rows: list, as_json: bool, errors: list[dict]) -> None:
    """A headless model's answer: each image's embedding (JSON: every value, and a failed
    file's error; text: a summary)."""
    if as_json:
        print(json.dumps([{"image": str(path), "embedding": row.tolist()} for path, row in rows] + errors, indent=2))
        return
    for path, row in rows:
        head = ", ".join(f"{v:.4f}" for v in row[:4])
        print(
            f"{path}\n  embedding: {row.size} values, L2 norm {float((row.astype('float64') ** 2).sum()) ** 0.5:.4f}: [{head}, ...]"
        )


def main(argv: Sequence[str] | None = None) -> int:
    return run(_infer, parser, argv, "fastervit-infer")


if __name__ == "__main__":
    sys.exit(main())
