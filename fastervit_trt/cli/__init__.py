"""Command-line entry points, one module per command; ``common`` holds what they share.

Each ``<command>_main`` is a console script (``fastervit-<command>``, see setup.cfg)."""

from .batch import main as batch_main
from .bench import main as bench_main
from .build import main as build_main
from .deepstream import main as deepstream_main
from .eval import main as eval_main
from .export import main as export_main
from .infer import main as infer_main
from .inspect import main as inspect_main
from .serve import main as serve_main
from .triton import main as triton_main

__all__ = [
    "batch_main",
    "bench_main",
    "build_main",
    "deepstream_main",
    "eval_main",
    "export_main",
    "infer_main",
    "inspect_main",
    "serve_main",
    "triton_main",
]
