"""``fastervit-build``: an exported ONNX file -> TensorRT / TensorRT-RTX engine + sidecar."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..errors import ModelFileError
from ..sidecar import DEFAULT_BATCH_PROFILE
from .common import add_options, add_quiet, command_parser, options_from, progress, run

EXAMPLES = """\
examples:
  fastervit-build export/faster_vit_0_224_fp16.onnx                 # -> engines/faster_vit_0_224_fp16.engine + .json
  fastervit-build export/faster_vit_0_224_int8.onnx --batch 1,16,64 --opt-level 5
  fastervit-build export/faster_vit_0_224_fp8.onnx --compute-capability 8.9,12.0   # TensorRT-RTX targets
  fastervit-build export/faster_vit_0_224_fp32.onnx --timing-cache engines/timing.cache
  fastervit-build export/faster_vit_0_224_fp32.onnx --precision int8 --calib-cache export/faster_vit_0_224_int8.cache   # TensorRT 10 implicit INT8
"""


def parser() -> argparse.ArgumentParser:
    from ..engines import BuildConfig

    parser = command_parser(
        "fastervit-build",
        EXAMPLES,
        "Build a TensorRT or TensorRT-RTX engine from an exported ONNX file; writes the "
        ".engine (plain, loadable by trtexec / Triton / C++) and a .json sidecar beside it.",
    )
    parser.add_argument("onnx", type=Path, help="ONNX file from fastervit-export")
    parser.add_argument("--output", type=Path, help="engine path (default: engines/<onnx name>.engine)")
    add_options(parser, BuildConfig)
    add_quiet(parser)
    return parser


def _build(args: argparse.Namespace) -> int:
    from ..engines import BuildConfig, build_engine
    from ..engines.builder import check_engine_path, onnx_facts

    if not args.onnx.is_file():
        raise ModelFileError(f"{args.onnx}: no such ONNX file; export one with fastervit-export")
    output = args.output or Path("engines") / args.onnx.with_suffix(".engine").name
    check_engine_path(output, args.onnx)
    batch = args.batch or tuple(onnx_facts(args.onnx)["metadata"].get("batch_profile") or DEFAULT_BATCH_PROFILE)
    config = options_from(BuildConfig, args, batch=batch)
    stream = progress(args)
    sidecar = build_engine(args.onnx, output, config, stream)
    trt = sidecar["tensorrt"]
    print(
        f"engine   {output}  ({sidecar['engine']['bytes'] / 1e6:.1f} MB, {sidecar['precision']}, "
        f"batch {','.join(map(str, batch))})"
    )
    print(f"sidecar  {output.with_suffix('.json')}")
    print(f"builder  {trt['flavour']} {trt['version']}, {sidecar['build']['seconds']:.1f} s")
    return 0


def planned_engine(onnx_path: Path, engine_dir: Path) -> Path | None:
    """The engine ``fastervit-export`` will build, or None when no TensorRT is installed."""
    from ..engines import EngineBuildError, load_tensorrt

    try:
        load_tensorrt()
    except EngineBuildError:
        return None
    return engine_dir / onnx_path.with_suffix(".engine").name


def build_after_export(
    onnx_path: Path, engine: Path, batch: tuple[int, int, int], force: bool, stream: TextIO | None
) -> Path:
    """Build ``engine`` from the exported ONNX; returns it (the file to serve)."""
    from ..engines import BuildConfig, build_engine

    sidecar = build_engine(onnx_path, engine, BuildConfig(batch=batch, force=force), stream)
    trt = sidecar["tensorrt"]
    print(
        f"engine      {engine}  ({trt['flavour']} {trt['version']}, {sidecar['engine']['bytes'] / 1e6:.1f} MB, "
        f"built in {sidecar['build']['seconds']:.1f} s; sidecar {engine.with_suffix('.json')})"
    )
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    return run(_build, parser, argv, "fastervit-build")


if __name__ == "__main__":
    sys.exit(main())
