"""Command-line entry points. The only place that turns errors into one line and an exit code."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FasterViTTRTError

EXIT_ERROR, EXIT_USAGE = 1, 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows the code's defaults (never a hand-written copy of them), examples verbatim."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


_formatter = _Formatter


def _batch_profile(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values


def _run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
         argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return main(args)
    except FasterViTTRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- fastervit-export

EXPORT_EXAMPLES = """\
examples:
  fastervit-export                                         # faster_vit_0_224, random weights, FP16
  fastervit-export --model faster_vit_2_224 --checkpoint fastervit_2_224_1k.pth.tar --precision fp32
  fastervit-export --model faster_vit_0_any_res --resolution 800 1216 --batch 1,2,4
  fastervit-export --precision fp16 --io-dtype fp16 --output-dir /models --force
  fastervit-export --precision int8                        # calibrate on the shipped photos
  fastervit-export --precision int8 --calib-data ~/imagenet/val --calib-images 512 --calib-method percentile
  fastervit-export --precision int8 --calib-cache export/faster_vit_0_224_int8.cache   # reuse scales
"""


def export_parser() -> argparse.ArgumentParser:
    from .export.pipeline import ExportOptions
    from .models import list_models
    d = ExportOptions()
    parser = argparse.ArgumentParser(
        prog="fastervit-export", formatter_class=_formatter, epilog=EXPORT_EXAMPLES,
        description="Export a FasterViT model to TensorRT-friendly ONNX (BatchNorm folded, "
                    "position bias precomputed, static window reshapes, dynamic batch), "
                    "validated against PyTorch with ONNX Runtime. Writes "
                    "<output-dir>/<model>_<precision>.onnx and a JSON report beside it.")
    parser.add_argument("--model", default=d.model, metavar="NAME",
                        help=f"registered model name ({len(list_models())} available: "
                             "faster_vit_{0..6}_224, faster_vit_4_21k_{224,384,512,768}, "
                             "and *_any_res of each)")
    parser.add_argument("--checkpoint", type=Path, help="official .pth/.pth.tar/.safetensors "
                        "weights; without one the model is randomly initialised (seeded)")
    parser.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"),
                        help="input size; the variant's own when omitted")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=d.precision,
                        help="fp16: float16 graph with FP32 islands for TensorRT's strong typing")
    parser.add_argument("--batch", type=_batch_profile, default=d.batch, metavar="MIN,OPT,MAX",
                        help="batch sizes of the engine's optimization profile")
    parser.add_argument("--opset", type=int, default=d.opset, help="ONNX opset (>= 17 for LayerNormalization)")
    parser.add_argument("--io-dtype", choices=("fp32", "fp16"), default=d.io_dtype,
                        help="dtype of the FP16 graph's input and output")
    parser.add_argument("--output-dir", type=Path, default=d.output_dir, help="where the .onnx and .json go")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of random weights and inputs")
    from .calibration.pipeline import CalibrationOptions
    c = CalibrationOptions()
    calib = parser.add_argument_group("INT8 calibration (--precision int8)")
    calib.add_argument("--calib-data", type=Path, default=c.data, metavar="DIR|FILE.npy",
                       help="image folder (read recursively) or preprocessed NCHW float32 .npy")
    calib.add_argument("--calib-images", type=int, default=c.images, metavar="N",
                       help="calibration inputs (a small folder is expanded by crops and flips)")
    calib.add_argument("--calib-batch", type=int, default=c.batch, metavar="N")
    calib.add_argument("--calib-method", choices=("entropy", "minmax", "percentile"), default=c.method,
                       help="entropy: TensorRT's EntropyCalibration2 (KL divergence)")
    calib.add_argument("--calib-percentile", type=float, default=c.percentile, metavar="P",
                       help="with --calib-method percentile")
    calib.add_argument("--calib-cache", type=Path, metavar="PATH",
                       help="TensorRT calibration cache; reused when it exists (default: "
                            "<output-dir>/<model>_int8.cache)")
    calib.add_argument("--recalibrate", action="store_true", help="ignore an existing cache")
    calib.add_argument("--qdq-base", choices=("fp16", "fp32"), default=c.qdq_base,
                       help="float type of the layers left unquantized")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _export(args: argparse.Namespace) -> int:
    from .calibration.pipeline import CalibrationOptions, export_int8
    from .export.pipeline import ExportOptions, export_model
    try:
        options = ExportOptions(model=args.model, checkpoint=args.checkpoint,
                                resolution=tuple(args.resolution) if args.resolution else None,
                                precision=args.precision, batch=args.batch, opset=args.opset,
                                output_dir=args.output_dir, io_dtype=args.io_dtype,
                                force=args.force, seed=args.seed)
        calib = CalibrationOptions(data=args.calib_data, images=args.calib_images,
                                   batch=args.calib_batch, method=args.calib_method,
                                   percentile=args.calib_percentile, cache=args.calib_cache,
                                   recalibrate=args.recalibrate, qdq_base=args.qdq_base)
    except ValueError as exc:
        raise FasterViTTRTError(str(exc)) from None
    stream = None if args.quiet else sys.stderr
    if options.precision == "int8":
        result = export_int8(options, calib, stream)
    else:
        result = export_model(options, stream)
    print(export_summary(result.report, result.report_path))
    return 0


def export_summary(report: dict, report_path: Path) -> str:
    """The closing table of ``fastervit-export``."""
    onnx_info = report["onnx"]
    shape = report["input"]["shape"]
    low, opt, high = report["batch_profile"]
    dims = "x".join(str(v) for v in shape[1:])
    trtexec = (f"trtexec --onnx={onnx_info['path']} --stronglyTyped --minShapes=input:{low}x{dims} "
               f"--optShapes=input:{opt}x{dims} --maxShapes=input:{high}x{dims} "
               f"--saveEngine={Path(onnx_info['path']).with_suffix('.engine').name}")
    weights = "RANDOM (seeded)" if report["random_init"] else report["checkpoint"]
    rows = [
        ("model", f"{report['model']}  {shape[2]}x{shape[3]}  weights: {weights}"),
        ("onnx", f"{onnx_info['path']}  ({onnx_info['bytes'] / 1e6:.1f} MB, {onnx_info['nodes']} "
                 f"nodes, opset {onnx_info['opset']}, batch {low}..{high})"),
        ("report", str(report_path)),
        *([("validation", report["validation"]["verdict"])] if "validation" in report else []),
        *([("int8 cache", f"{report['quantization']['cache']}  ("
                          f"{'reused' if report['quantization']['cache_reused'] else report['quantization']['method']})"),
           ("accuracy", report["accuracy"]["summary"])] if "quantization" in report else []),
        ("time", f"{sum(report['seconds'].values()):.1f} s"),
        ("engine", trtexec),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run(_export, export_parser(), argv)


if __name__ == "__main__":
    sys.exit(export_main())
