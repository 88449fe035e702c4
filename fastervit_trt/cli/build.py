"""``fastervit-build``: an exported ONNX file -> TensorRT / TensorRT-RTX engine + sidecar."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..errors import ModelFileError
from ..quant_formats import QUANT_FORMATS
from ..sidecar import DEFAULT_BATCH_PROFILE
from .common import (
    PROFILE_TEXT,
    add_batch_profile,
    add_calibration_files,
    add_force,
    add_quiet,
    capabilities,
    command_parser,
    positive,
    progress,
    run,
)

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

    d = BuildConfig()
    parser = command_parser(
        "fastervit-build",
        EXAMPLES,
        "Build a TensorRT or TensorRT-RTX engine from an exported ONNX file; writes the "
        ".engine (plain, loadable by trtexec / Triton / C++) and a .json sidecar beside it.",
    )
    parser.add_argument("onnx", type=Path, help="ONNX file from fastervit-export")
    parser.add_argument("--output", type=Path, help="engine path (default: engines/<onnx name>.engine)")
    parser.add_argument(
        "--backend",
        choices=("auto", "tensorrt", "tensorrt-rtx"),
        default=d.backend,
        help="auto: TensorRT if installed, else TensorRT-RTX",
    )
    add_batch_profile(parser, None, f"optimization profile (default: the one recorded at export, else {PROFILE_TEXT})")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", *(f.name for f in QUANT_FORMATS.values() if f.trt_implicit_flag)),
        help="default: the ONNX's own; fp16/int8 from an FP32 graph needs TensorRT 10",
    )
    parser.add_argument("--workspace", type=positive, metavar="MIB", help="workspace memory limit")
    parser.add_argument(
        "--opt-level",
        type=int,
        choices=range(6),
        metavar="0-5",
        help="builder optimization level (TensorRT's default: 3)",
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        metavar="PATH",
        help="TensorRT timing cache: loaded if present, saved after the build",
    )
    parser.add_argument("--hardware-compat", action="store_true", help="run on any Ampere+ GPU")
    parser.add_argument("--version-compat", action="store_true", help="run on later TensorRT versions")
    parser.add_argument(
        "--compute-capability",
        type=capabilities,
        default=(),
        metavar="CC[,CC...]",
        help="TensorRT-RTX targets, e.g. 8.9,12.0 (default: TensorRT-RTX's own; FP8: every "
        "target from 8.9 on); TensorRT proper builds for the GPU it runs on",
    )
    add_calibration_files(
        parser, cache_help="TensorRT 10 implicit INT8 scales", data_help="TensorRT 10 implicit INT8 images"
    )
    add_force(parser, "an existing engine")
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
    config = BuildConfig(
        batch=batch,
        backend=args.backend,
        precision=args.precision,
        workspace_mib=args.workspace,
        opt_level=args.opt_level,
        timing_cache=args.timing_cache,
        hardware_compat=args.hardware_compat,
        version_compat=args.version_compat,
        calib_cache=args.calib_cache,
        calib_data=args.calib_data,
        compute_capabilities=args.compute_capability,
        force=args.force,
    )
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
