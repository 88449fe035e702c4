"""``fastervit-export``: a registered variant -> validated ONNX (+ calibration) -> engine."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..quant_formats import target as graph_target
from .build import build_after_export, planned_engine
from .common import add_options, add_quiet, command_parser, options_from, progress, run
from .reports import export_summary, sensitivity_table

if TYPE_CHECKING:
    from ..engines.timing import TensorRTTimer
    from ..export.pipeline import ExportOptions

EXAMPLES = """\
examples:
  fastervit-export                                         # faster_vit_0_224, random weights, FP16
  fastervit-export --variant faster_vit_2_224 --checkpoint fastervit_2_224_1k.pth.tar --precision fp32
  fastervit-export --checkpoint my_finetune/model_best.pth.tar --class-names classes.txt --precision int8 \
      --calib-data my_images/                              # your own model: variant, classes, transform read from it
  fastervit-export --checkpoint weights.safetensors --variant faster_vit_1_224 --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5
  fastervit-export --checkpoint model.pth --crop-mode squash --crop-pct 1   # a plain resize (DeepStream, no crop)
  fastervit-export --variant faster_vit_0_any_res --resolution 800 1216 --batch 1,2,4
  fastervit-export --precision fp16 --io-dtype fp16 --output-dir /models --force
  fastervit-export --precision fp16 --input uint8          # the engine takes uint8 NHWC crops
  fastervit-export --precision int8 --input pixels         # float 0..255 NCHW pixels (DeepStream nvinfer)
  fastervit-export --precision int8                        # calibrate on the shipped photos
  fastervit-export --precision fp8                         # FP8 E4M3 Q/DQ (compute capability 8.9+)
  fastervit-export --precision int8 --calib-data ~/imagenet/val --calib-images 512 --calib-method percentile
  fastervit-export --precision int8 --calib-cache export/faster_vit_0_224_int8.cache   # reuse scales
  fastervit-export --variant faster_vit_2_any_res --resolution 800 1216 --features      # detection backbone
  fastervit-export --variant faster_vit_0_any_res --resolution 1024 1024 --features 2,3,4 --feature-norm
"""


def parser() -> argparse.ArgumentParser:
    from ..calibration.options import CalibrationOptions
    from ..export.pipeline import ExportOptions

    parser = command_parser(
        "fastervit-export",
        EXAMPLES,
        "Export a FasterViT model to TensorRT-friendly ONNX (BatchNorm folded, "
        "position bias precomputed, static window reshapes, dynamic batch), "
        "validated against PyTorch with ONNX Runtime. Writes "
        "<output-dir>/<variant>_<precision>.onnx and a JSON report beside it.",
    )
    add_options(parser, ExportOptions)
    add_options(parser.add_argument_group("INT8 / FP8 calibration (--precision int8 or fp8)"), CalibrationOptions)
    engine = parser.add_argument_group("engine (built at the end when TensorRT or TensorRT-RTX is installed)")
    engine.add_argument(
        "--engine-dir",
        type=Path,
        metavar="DIR",
        help="where the .engine and its .json sidecar go (default: --output-dir when given, else engines)",
    )
    engine.add_argument("--no-engine", action="store_true", help="stop after the ONNX")
    engine.add_argument(
        "--triton-repo",
        type=Path,
        metavar="DIR",
        help="also write a Triton model repository (the engine if built, else the ONNX)",
    )
    add_quiet(parser)
    return parser


def _export(args: argparse.Namespace) -> int:
    from ..calibration.options import CalibrationOptions
    from ..export.pipeline import ExportOptions, export_model

    options = options_from(ExportOptions, args)
    calib = options_from(CalibrationOptions, args)
    stream = progress(args)
    engine_dir = args.engine_dir or args.output_dir or Path("engines")
    builds = graph_target(options.target).builds_engines
    engine = None if args.no_engine or not builds else planned_engine(options.onnx_path, engine_dir)
    _preflight_outputs(engine, args.triton_repo, options, args.force)
    timed = options.quantized and (not calib.no_speed or calib.speed_search)
    with tempfile.TemporaryDirectory(prefix="fastervit-timing-") as timing, contextlib.ExitStack() as stack:
        timer = _engine_timer(Path(timing), options) if timed else None
        if timer is not None:
            stack.enter_context(timer)  # its engines released before the folder goes
        result = export_model(options, stream, calib if options.quantized else None, timer)
    print(export_summary(result.report, result.report_path))
    if "sensitivity" in result.report:
        print(sensitivity_table(result.report))
    served = result.onnx_path
    if engine is not None:
        served = build_after_export(result.onnx_path, engine, options.batch, args.force, stream)
    elif not builds:
        print(
            f"engine      none: a --target {options.target} graph runs on ONNX Runtime "
            f"({shlex.join(['fastervit-infer', 'IMAGE', '--model', str(result.onnx_path)])})"
        )
    elif not args.no_engine:
        print(
            f"engine      no TensorRT installed here; build later with: "
            f"{shlex.join(['fastervit-build', str(result.onnx_path)])}"
        )
    if args.triton_repo:
        from ..triton import TritonOptions, write_model_repository

        folder = write_model_repository(served, args.triton_repo, TritonOptions(force=args.force))
        print(
            f"triton      {folder}  (serve: "
            f"{shlex.join(['tritonserver', '--model-repository', str(args.triton_repo)])})"
        )
    return 0


def _engine_timer(folder: Path, options: ExportOptions) -> TensorRTTimer | None:
    """TensorRT's timer for the speed line where TensorRT can build and run the graph on this
    machine's GPU and the graph is TensorRT's; None otherwise (the export times on ONNX
    Runtime's CPU provider)."""
    if not graph_target(options.target).builds_engines:
        return None
    from ..tensorrt_import import import_tensorrt

    if import_tensorrt() is None:  # the engines package needs TensorRT's bindings
        return None
    from ..engines.timing import engine_timer

    return engine_timer(folder, options.batch, options.precision)


def _preflight_outputs(engine: Path | None, triton_repo: Path | None, options: ExportOptions, force: bool) -> None:
    """Fail in the first second when a later stage's output exists, or holds a model of other
    weights (the export's own are checked by its preflight)."""
    from ..artifacts import check_same_weights, check_writable
    from ..export.stages import weights_sha256
    from ..sidecar import sidecar_path

    outputs = [engine, sidecar_path(engine)] if engine is not None else []
    if engine is not None:
        check_same_weights(sidecar_path(engine), weights_sha256(options), engine)
    if triton_repo is not None:
        served = engine or options.onnx_path
        outputs.append(triton_repo / served.stem / "config.pbtxt")
    check_writable(outputs, force)


def main(argv: Sequence[str] | None = None) -> int:
    return run(_export, parser, argv, "fastervit-export")


if __name__ == "__main__":
    sys.exit(main())
