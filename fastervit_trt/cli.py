"""Command-line entry points. The only place that turns errors into one line and an exit code."""
from __future__ import annotations

import argparse
import errno
import logging
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FasterViTTRTError

EXIT_ERROR, EXIT_USAGE = 1, 2
MIN_OPSET, MAX_OPSET = 17, 21  # 17: LayerNormalization; up to 21 the exports validate and TensorRT-RTX builds them


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


def _stages(text: str) -> tuple[int, ...]:
    try:
        stages = tuple(int(v) for v in text.split(","))
    except ValueError:
        stages = ()
    if not stages or not set(stages) <= {1, 2, 3, 4} or len(set(stages)) != len(stages):
        raise argparse.ArgumentTypeError(f"expected distinct stages among 1,2,3,4 (e.g. 2,3,4), got {text!r}")
    return tuple(sorted(stages))


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a ``kind`` number in [low, high] (``low_open``: above low), the valid
    range in the message."""
    if low is not None and high is not None:
        valid = f"{'above ' + format(low, 'g') if low_open else format(low, 'g')}" + (
            f" and at most {high:g}" if low_open else f" to {high:g}")
    elif low is not None:
        valid = f"{'above' if low_open else 'at least'} {low:g}"
    else:
        valid = f"at most {high:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'} "
                                             f"(valid: {valid})") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range (valid: {valid})")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_positive = _number(int, 1)


def _missing(exc: ModuleNotFoundError, prog: str) -> int:
    """One line naming the missing module and the install that brings it."""
    top = (exc.name or "").split(".")[0]
    if top not in _EXTRAS:
        raise exc
    print(f"error: fastervit-{prog} needs {top}, which this install lacks: "
          f"pip install 'fastervit-trt[{_EXTRAS[top]}]'", file=sys.stderr)
    return EXIT_ERROR


def _batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes B1,B2,..., got {text!r}")
    return values


# the extra that brings each optional module, for the message when it is missing
_EXTRAS = {"torch": "export", "torchvision": "export", "onnxslim": "export", "safetensors": "export",
           "onnx": "onnxruntime", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt",
           "tensorrt_rtx": "tensorrt-rtx", "tensorrt_rtx_bindings": "tensorrt-rtx", "pycuda": "pycuda",
           "pytriton": "triton", "tritonclient": "triton", "starlette": "serve", "uvicorn": "serve",
           "prometheus_client": "serve"}


def _run(main: Callable[[argparse.Namespace], int], parser: Callable[[], argparse.ArgumentParser],
         argv: Sequence[str] | None) -> int:
    prog = main.__name__.strip("_")
    try:
        args = parser().parse_args(argv)
    except ModuleNotFoundError as exc:
        return _missing(exc, prog)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return main(args)
    except ModuleNotFoundError as exc:
        return _missing(exc, prog)
    except FasterViTTRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a vanished folder: what was being written is cleaned up
        where = exc.filename or "output"
        hint = ("free some space or choose another output folder" if exc.errno == errno.ENOSPC
                else "check the path and its permissions")
        print(f"error: {where}: {exc.strerror or exc}; {hint}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into head & co.
        return 0


# ---------------------------------------------------------------- fastervit-export

EXPORT_EXAMPLES = """\
examples:
  fastervit-export                                         # faster_vit_0_224, random weights, FP16
  fastervit-export --model faster_vit_2_224 --checkpoint fastervit_2_224_1k.pth.tar --precision fp32
  fastervit-export --model faster_vit_0_any_res --resolution 800 1216 --batch 1,2,4
  fastervit-export --precision fp16 --io-dtype fp16 --output-dir /models --force
  fastervit-export --precision fp16 --input uint8          # the engine takes uint8 NHWC crops
  fastervit-export --precision int8 --input pixels         # float 0..255 NCHW pixels (DeepStream nvinfer)
  fastervit-export --precision int8                        # calibrate on the shipped photos
  fastervit-export --precision fp8                         # FP8 E4M3 Q/DQ (compute capability 8.9+)
  fastervit-export --precision int8 --calib-data ~/imagenet/val --calib-images 512 --calib-method percentile
  fastervit-export --precision int8 --calib-cache export/faster_vit_0_224_int8.cache   # reuse scales
  fastervit-export --model faster_vit_2_any_res --resolution 800 1216 --features      # detection backbone
  fastervit-export --model faster_vit_0_any_res --resolution 1024 1024 --features 2,3,4 --feature-norm
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
    parser.add_argument("--weights", choices=("model", "ema"), default=d.weights,
                        help="which weights of a training checkpoint: state_dict (as the official "
                             "validate.py without --use-ema) or state_dict_ema")
    parser.add_argument("--resolution", type=_positive, nargs=2, metavar=("H", "W"),
                        help="input size; the variant's own when omitted")
    parser.add_argument("--exact-preprocess", action="store_true",
                        help="decode every JPEG in full and resize the whole image, bitwise as timm "
                             "(calibration and, through the recorded setting, inference); default: JPEGs of "
                             "at least twice the resize size decode at a reduced scale and only the crop is "
                             "resized, several times faster")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8", "fp8"), default=d.precision,
                        help="fp16: float16 graph with FP32 islands for TensorRT's strong typing; "
                             "int8 / fp8: calibrated Q/DQ (FP8 E4M3: Ada, Hopper, Blackwell GPUs); the "
                             "classifier head stays FP16, and for FP8 also the stem and downsampling "
                             "convolutions (every path runs through them)")
    parser.add_argument("--features", type=_stages, nargs="?", const=(1, 2, 3, 4), default=(), metavar="STAGES",
                        help="export the backbone for detection: no head, one NCHW output per stage "
                             "(stage1..stage4, strides 4..32, each taken before its downsampling); "
                             "STAGES picks some, e.g. 2,3,4 (default: all four)")
    parser.add_argument("--feature-norm", action="store_true",
                        help="each feature map through its level's BatchNorm, as the official detection "
                             "backbones add it (stage 4: the trained classifier norm; stages 1-3: "
                             "BatchNorm at its initial statistics, which detection training then learns)")
    parser.add_argument("--input", choices=("float", "uint8", "pixels"), default=d.input_format, dest="input_format",
                        help="float: normalised float NCHW input; uint8: the resized, cropped uint8 "
                             "NHWC image, cast and normalised inside the graph (4x fewer bytes to the "
                             "GPU, no float math on the CPU; writes <model>_<precision>_uint8in.onnx); "
                             "pixels: the crop as float NCHW pixel values 0..255, normalised per channel "
                             "inside the graph, as DeepStream's nvinfer sends them with net-scale-factor 1 "
                             "(writes ..._pixelsin.onnx; see fastervit-deepstream)")
    parser.add_argument("--softmax", action="store_true",
                        help="a classifier's output as softmax probabilities ('probabilities') instead of "
                             "logits, as DeepStream's nvinfer classifier parser reads them; writes "
                             "<model>_<precision>_softmax.onnx")
    parser.add_argument("--batch", type=_batch_profile, default=",".join(map(str, d.batch)), metavar="MIN,OPT,MAX",
                        help="batch sizes of the engine's optimization profile")
    parser.add_argument("--opset", type=_number(int, MIN_OPSET, MAX_OPSET), default=d.opset,
                        help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET}: LayerNormalization needs 17)")
    parser.add_argument("--io-dtype", choices=("fp32", "fp16"), default=d.io_dtype,
                        help="dtype of the FP16 graph's input and output")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help=f"where the .onnx and its .report.json go (default: {d.output_dir}); "
                             "engines go there too unless --engine-dir is given")
    parser.add_argument("--seed", type=_number(int, 0), default=d.seed, help="seed of random weights and inputs")
    from .calibration.options import PERCENTILE_RANGE, CalibrationOptions
    c = CalibrationOptions()
    calib = parser.add_argument_group("INT8 / FP8 calibration (--precision int8 or fp8)")
    calib.add_argument("--calib-data", type=Path, default=c.data, metavar="DIR|FILE.npy",
                       help="image folder (read recursively) or preprocessed NCHW float32 .npy")
    calib.add_argument("--calib-images", type=_positive, default=c.images, metavar="N",
                       help="calibration inputs (a small folder is expanded by crops and flips)")
    calib.add_argument("--calib-batch", type=_positive, default=c.batch, metavar="N")
    calib.add_argument("--calib-method", choices=("entropy", "minmax", "percentile"), default=c.method,
                       help="entropy: TensorRT's EntropyCalibration2 (KL divergence)")
    calib.add_argument("--calib-percentile", type=_number(float, *PERCENTILE_RANGE, low_open=True),
                       default=c.percentile, metavar="P",
                       help="with --calib-method percentile")
    calib.add_argument("--calib-cache", type=Path, metavar="PATH",
                       help="TensorRT calibration cache; reused when it exists (default: "
                            "<output-dir>/<model>_<precision>.cache)")
    calib.add_argument("--recalibrate", action="store_true", help="ignore an existing cache")
    calib.add_argument("--qdq-base", choices=("fp16", "fp32"), default=c.qdq_base,
                       help="float type of the layers left unquantized")
    calib.add_argument("--residual-qdq", choices=("auto", "on", "off"), default=c.residual_qdq,
                       help="INT8: quantize the residual input of each Add after a quantized Conv so "
                            "TensorRT reads it in INT8 in the fused epilogue; auto: on for classifiers, "
                            "off for --features (the feature maps are that residual stream)")
    calib.add_argument("--bias-correction", choices=("on", "off"), default="on" if c.bias_correction else "off",
                       help="subtract from each quantized layer's bias the mean output shift its weight "
                            "rounding causes (from the calibration inputs' channel means, kept beside the "
                            "cache as <cache>.means.npz)")
    calib.add_argument("--calib-heldout", type=_positive, default=c.heldout, metavar="N",
                       help="held-out inputs for the accuracy figures, sensitivity and budget")
    calib.add_argument("--sensitivity", action="store_true",
                       help="rank layers by the degradation each causes when quantized alone")
    calib.add_argument("--accuracy-budget", type=_number(float, 0, 100), metavar="POINTS",
                       help="leave the most sensitive layers in FP16 until the top-1 agreement with "
                            "FP32 drops by at most POINTS")
    engine = parser.add_argument_group("engine (built at the end when TensorRT or TensorRT-RTX is installed)")
    engine.add_argument("--engine-dir", type=Path, metavar="DIR",
                        help="where the .engine and its .json sidecar go (default: --output-dir "
                             "when given, else engines)")
    engine.add_argument("--no-engine", action="store_true", help="stop after the ONNX")
    engine.add_argument("--triton-repo", type=Path, metavar="DIR",
                        help="also write a Triton model repository (the engine if built, else the ONNX)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _export(args: argparse.Namespace) -> int:
    from .calibration.options import CalibrationOptions
    from .export.pipeline import ExportOptions, export_model
    try:
        options = ExportOptions(model=args.model, checkpoint=args.checkpoint, weights=args.weights,
                                resolution=tuple(args.resolution) if args.resolution else None,
                                precision=args.precision, batch=args.batch, opset=args.opset,
                                output_dir=args.output_dir or ExportOptions.output_dir,
                                io_dtype=args.io_dtype, exact_preprocess=args.exact_preprocess,
                                input_format=args.input_format, force=args.force, seed=args.seed,
                                features=args.features, feature_norm=args.feature_norm, softmax=args.softmax)
        calib = CalibrationOptions(data=args.calib_data, images=args.calib_images,
                                   batch=args.calib_batch, method=args.calib_method,
                                   percentile=args.calib_percentile, cache=args.calib_cache,
                                   recalibrate=args.recalibrate, qdq_base=args.qdq_base,
                                   heldout=args.calib_heldout, sensitivity=args.sensitivity,
                                   accuracy_budget=args.accuracy_budget, residual_qdq=args.residual_qdq,
                                   bias_correction=args.bias_correction == "on")
    except ValueError as exc:
        raise FasterViTTRTError(str(exc)) from None
    stream = None if args.quiet else sys.stderr
    engine_dir = args.engine_dir or args.output_dir or Path("engines")
    engine = None if args.no_engine else _planned_engine(options.onnx_path, engine_dir)
    _preflight_outputs(engine, args.triton_repo, options.onnx_path, args.force)
    result = export_model(options, stream, calib if options.precision in ("int8", "fp8") else None)
    print(export_summary(result.report, result.report_path))
    if "sensitivity" in result.report:
        print(sensitivity_table(result.report))
    served = result.onnx_path
    if engine is not None:
        served = _engine_after_export(result.onnx_path, engine, options.batch, args.force, stream)
    elif not args.no_engine:
        print(f"engine      no TensorRT installed here; build later with: {shlex.join(['fastervit-build', str(result.onnx_path)])}")
    if args.triton_repo:
        from .triton import TritonOptions, write_model_repository
        folder = write_model_repository(served, args.triton_repo, TritonOptions(force=args.force))
        print(f"triton      {folder}  (serve: {shlex.join(['tritonserver', '--model-repository', str(args.triton_repo)])})")
    return 0


def _planned_engine(onnx_path: Path, engine_dir: Path) -> Path | None:
    """The engine ``fastervit-export`` will build, or None when no TensorRT is installed."""
    from .engines import EngineBuildError, load_tensorrt
    try:
        load_tensorrt()
    except EngineBuildError:
        return None
    return engine_dir / onnx_path.with_suffix(".engine").name


def _preflight_outputs(engine: Path | None, triton_repo: Path | None, onnx_path: Path, force: bool) -> None:
    """Fail in the first second when a later stage's output exists (the export's own are
    checked by its preflight)."""
    from .artifacts import check_writable
    from .sidecar import sidecar_path
    outputs = [engine, sidecar_path(engine)] if engine is not None else []
    if triton_repo is not None:
        served = engine or onnx_path
        outputs.append(triton_repo / served.stem / "config.pbtxt")
    check_writable(outputs, force)


def _engine_after_export(onnx_path: Path, engine: Path, batch: tuple[int, int, int], force: bool,
                         stream) -> Path:
    """Build ``engine`` from the exported ONNX; returns it (the file to serve)."""
    from .engines import BuildConfig, build_engine, load_tensorrt
    flavour, trt = load_tensorrt()
    sidecar = build_engine(onnx_path, engine, BuildConfig(batch=batch, force=force), stream)
    print(f"engine      {engine}  ({flavour} {trt.__version__}, {sidecar['engine']['bytes'] / 1e6:.1f} MB, "
          f"built in {sidecar['build']['seconds']:.1f} s; sidecar {engine.with_suffix('.json')})")
    return engine


def sensitivity_table(report: dict, rows: int = 15) -> str:
    """The most INT8-sensitive layers, and the mixed-precision choice when a budget was set."""
    name = report["precision"].upper()
    lines = [f"\n{name} sensitivity (only that layer quantized, vs FP32; {len(report['sensitivity'])} layers, "
             f"most sensitive first):", f"  {'cosine':>9s} {'top-1 %':>8s}  layer"]
    top1 = lambda r: f"{r['top1_agreement']:8.2f}" if r["top1_agreement"] is not None else f"{'-':>8s}"  # backbones: none
    lines += [f"  {r['mean_cosine']:9.6f} {top1(r)}  {r['layer']}" for r in report["sensitivity"][:rows]]
    mixed = report.get("mixed_precision")
    if mixed:
        lines.append(f"mixed precision: {mixed['int8_layers']} of {mixed['layers']} layers stay {name}, "
                     f"{len(mixed['excluded'])} left in FP16; top-1 agreement {mixed['top1_agreement']:.2f} % "
                     f"(budget: drop <= {mixed['budget_points']} points)")
    return "\n".join(lines)


def export_summary(report: dict, report_path: Path) -> str:
    """The closing table of ``fastervit-export``."""
    onnx_info = report["onnx"]
    shape = report["input"]["shape"]
    height, width = report["preprocess"]["input_size"]
    low, opt, high = report["batch_profile"]
    dims = "x".join(str(v) for v in shape[1:])
    trtexec = shlex.join(["trtexec", f"--onnx={onnx_info['path']}", "--stronglyTyped",
                          f"--minShapes=input:{low}x{dims}", f"--optShapes=input:{opt}x{dims}",
                          f"--maxShapes=input:{high}x{dims}",
                          f"--saveEngine={Path(onnx_info['path']).with_suffix('.engine').name}"])
    weights = "RANDOM (seeded)" if report["random_init"] else _weights_line(report["weights"])
    rows = [
        ("model", f"{report['model']}  {height}x{width}  weights: {weights}"),
        ("input", f"{report['input']['name']} ({'x'.join(map(str, shape))}): {report['input'].get('format', 'float32 NCHW')}"),
        ("outputs", ", ".join(f"{o['name']} ({'x'.join(map(str, o['shape']))})" for o in report["outputs"])),
        ("onnx", f"{onnx_info['path']}  ({onnx_info['bytes'] / 1e6:.1f} MB, {onnx_info['nodes']} "
                 f"nodes, opset {onnx_info['opset']}, batch {low}..{high})"),
        ("report", str(report_path)),
        *([("validation", report["validation"]["verdict"])] if "validation" in report else []),
        *([("cache", f"{report['quantization']['cache']}  ("
                          f"{'reused' if report['quantization']['cache_reused'] else report['quantization']['method']})"),
           ("accuracy", report["accuracy"]["summary"])] if "quantization" in report else []),
        ("time", f"{sum(report['seconds'].values()):.1f} s"),
        ("trtexec", trtexec),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _weights_line(loaded: dict) -> str:
    """``ckpt.pth.tar [state_dict_ema: 406 tensors, 31.4 M parameters; arch ..., epoch 310]``."""
    where = loaded["key"] or "top level"
    facts = [f"{where}: {loaded['tensors']} tensors, {loaded['parameters'] / 1e6:.1f} M parameters"]
    facts += [f"{k} {loaded[k]}" for k in ("arch", "epoch") if loaded.get(k) is not None]
    return f"{loaded['path']} [{'; '.join(facts)}]"


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run(_export, export_parser, argv)


# ---------------------------------------------------------------- fastervit-build

BUILD_EXAMPLES = """\
examples:
  fastervit-build export/faster_vit_0_224_fp16.onnx                 # -> engines/faster_vit_0_224_fp16.engine + .json
  fastervit-build export/faster_vit_0_224_int8.onnx --batch 1,16,64 --opt-level 5
  fastervit-build export/faster_vit_0_224_fp8.onnx --compute-capability 8.9,12.0   # TensorRT-RTX targets
  fastervit-build export/faster_vit_0_224_fp32.onnx --timing-cache engines/timing.cache
  fastervit-build export/faster_vit_0_224_fp32.onnx --precision int8 --calib-cache export/faster_vit_0_224_int8.cache   # TensorRT 10 implicit INT8
"""


def build_parser() -> argparse.ArgumentParser:
    from .engines import BuildConfig
    d = BuildConfig()
    parser = argparse.ArgumentParser(
        prog="fastervit-build", formatter_class=_formatter, epilog=BUILD_EXAMPLES,
        description="Build a TensorRT or TensorRT-RTX engine from an exported ONNX file; writes the "
                    ".engine (plain, loadable by trtexec / Triton / C++) and a .json sidecar beside it.")
    parser.add_argument("onnx", type=Path, help="ONNX file from fastervit-export")
    parser.add_argument("--output", type=Path, help="engine path (default: engines/<onnx name>.engine)")
    parser.add_argument("--backend", choices=("auto", "tensorrt", "tensorrt-rtx"), default=d.backend,
                        help="auto: TensorRT if installed, else TensorRT-RTX")
    parser.add_argument("--batch", type=_batch_profile, metavar="MIN,OPT,MAX",
                        help="optimization profile (default: the one recorded at export, else 1,8,32)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                        help="default: the ONNX's own; fp16/int8 from an FP32 graph needs TensorRT 10")
    parser.add_argument("--workspace", type=_positive, metavar="MIB", help="workspace memory limit")
    parser.add_argument("--opt-level", type=int, choices=range(6), metavar="0-5",
                        help="builder optimization level (TensorRT's default: 3)")
    parser.add_argument("--timing-cache", type=Path, metavar="PATH",
                        help="TensorRT timing cache: loaded if present, saved after the build")
    parser.add_argument("--hardware-compat", action="store_true", help="run on any Ampere+ GPU")
    parser.add_argument("--version-compat", action="store_true", help="run on later TensorRT versions")
    parser.add_argument("--compute-capability", type=_capabilities, default=(), metavar="CC[,CC...]",
                        help="TensorRT-RTX targets, e.g. 8.9,12.0 (default: TensorRT-RTX's own; FP8: every "
                             "target from 8.9 on); TensorRT proper builds for the GPU it runs on")
    parser.add_argument("--calib-cache", type=Path, metavar="PATH", help="TensorRT 10 implicit INT8 scales")
    parser.add_argument("--calib-data", type=Path, metavar="DIR", help="TensorRT 10 implicit INT8 images")
    parser.add_argument("--force", action="store_true", help="overwrite an existing engine")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _capabilities(text: str) -> tuple[str, ...]:
    """``8.9,12.0`` -> ("8.9", "12.0"); each MAJOR.MINOR."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or not all(re.fullmatch(r"\d+\.\d+", p) for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected compute capabilities like 8.9 or 8.9,12.0")
    return parts


def _build(args: argparse.Namespace) -> int:
    from .engines import BuildConfig, build_engine
    from .engines.builder import check_engine_path, onnx_facts
    if not args.onnx.is_file():
        raise FasterViTTRTError(f"{args.onnx}: no such ONNX file; export one with fastervit-export")
    output = args.output or Path("engines") / args.onnx.with_suffix(".engine").name
    check_engine_path(output, args.onnx)
    batch = args.batch or tuple(onnx_facts(args.onnx)["metadata"].get("batch_profile") or (1, 8, 32))
    config = BuildConfig(batch=batch, backend=args.backend, precision=args.precision,
                         workspace_mib=args.workspace, opt_level=args.opt_level,
                         timing_cache=args.timing_cache, hardware_compat=args.hardware_compat,
                         version_compat=args.version_compat, calib_cache=args.calib_cache,
                         calib_data=args.calib_data, compute_capabilities=args.compute_capability,
                         force=args.force)
    stream = None if args.quiet else sys.stderr
    sidecar = build_engine(args.onnx, output, config, stream)
    trt = sidecar["tensorrt"]
    print(f"engine   {output}  ({sidecar['engine']['bytes'] / 1e6:.1f} MB, {sidecar['precision']}, "
          f"batch {','.join(map(str, batch))})")
    print(f"sidecar  {output.with_suffix('.json')}")
    print(f"builder  {trt['flavour']} {trt['version']}, {sidecar['build']['seconds']:.1f} s")
    return 0


def build_main(argv: Sequence[str] | None = None) -> int:
    return _run(_build, build_parser, argv)


# ---------------------------------------------------------------- fastervit-infer

def infer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastervit-infer", formatter_class=_formatter,
        epilog="examples:\n  fastervit-infer cat.jpg dog.png --model engines/faster_vit_0_224_fp16.engine\n"
               "  fastervit-infer photos/ --model export/faster_vit_0_224_fp32.onnx --topk 1 --json",
        description="Classify images with an engine or ONNX file (preprocessing from its sidecar/metadata). "
                    "Images are decoded on a thread pool, the next batch while the model runs this one.")
    parser.add_argument("images", nargs="+", type=Path, help="image files, or folders (read recursively)")
    parser.add_argument("--model", type=Path, required=True, help=".engine or .onnx")
    parser.add_argument("--topk", type=_positive, default=5, help="classes shown per image")
    parser.add_argument("--exact-preprocess", action="store_true",
                        help="decode every JPEG in full and resize the whole image (bitwise timm) even "
                             "where the model was exported with the fast path")
    parser.add_argument("--no-exif-rotate", action="store_true",
                        help="keep the stored pixels; by default EXIF orientation is applied (phone photos upright)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _infer(args: argparse.Namespace) -> int:
    import json
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from dataclasses import replace

    from .preprocess import IMAGE_SUFFIXES, ImageError
    from .runtime import load
    from .runtime.inputs import DECODE_THREADS
    model = load(args.model)
    preprocess = replace(model.preprocess, jpeg_draft=False) if args.exact_preprocess else model.preprocess
    paths = [found for path in args.images for found in
             (sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path])]

    def decode(path: Path):
        try:
            return preprocess.load(path, exif_rotate=not args.no_exif_rotate)
        except ImageError as exc:
            return exc

    failed, rows = 0, []
    chunks = [paths[i:i + model.max_batch] for i in range(0, len(paths), model.max_batch)]
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="fastervit-decode") as decoders:
        pending = [decoders.submit(decode, p) for p in chunks[0]] if chunks else []
        for index, chunk in enumerate(chunks):
            decoded = [future.result() for future in pending]
            if index + 1 < len(chunks):  # decode the next batch while this one runs
                pending = [decoders.submit(decode, p) for p in chunks[index + 1]]
            good = [(path, x) for path, x in zip(chunk, decoded) if not isinstance(x, ImageError)]
            for error in (x for x in decoded if isinstance(x, ImageError)):
                print(f"error: {error}", file=sys.stderr)
                failed += 1
            if good:
                tops = model.top(model.run(np.stack([x for _, x in good])), topk=args.topk)
                rows += [(path, top) for (path, _), top in zip(good, tops)]
    if args.json:
        print(json.dumps([{"image": str(path), "top": [p.__dict__ for p in top]} for path, top in rows], indent=2))
    else:
        for path, top in rows:
            print(path)
            for rank, p in enumerate(top, 1):
                print(f"  {rank}. {p.probability:7.2%}  {p.name}  ({p.index})")
    if not paths:
        print("error: no images found in the given folders", file=sys.stderr)
    return EXIT_ERROR if failed or not paths else 0


def infer_main(argv: Sequence[str] | None = None) -> int:
    return _run(_infer, infer_parser, argv)


# ---------------------------------------------------------------- fastervit-bench

def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastervit-bench", formatter_class=_formatter,
        epilog="examples:\n  fastervit-bench --model engines/faster_vit_0_224_fp16.engine --batch 1,8,32\n"
               "  fastervit-bench --model engines/faster_vit_0_224_fp16.engine --batch 1 --cuda-graph\n"
               "  fastervit-bench --model export/faster_vit_0_224_fp32.onnx --torch-model faster_vit_0_224 "
               "--checkpoint fastervit_0_224_1k.pth.tar --json",
        description="Latency percentiles and throughput per batch size, optionally against PyTorch eager "
                    "of the same weights measured in the same run.")
    parser.add_argument("--model", type=Path, required=True, help=".engine or .onnx")
    parser.add_argument("--batch", type=_batch_list, default="1,8,32", metavar="B1,B2,...",
                        help="batch sizes to time")
    parser.add_argument("--iters", type=_positive, default=50, help="timed calls per batch size")
    parser.add_argument("--warmup", type=_number(int, 0), default=5)
    parser.add_argument("--cuda-graph", action="store_true",
                        help="engines: replay CUDA graphs captured at fixed batch sizes (powers of two up "
                             "to the profile's MAX, each with its own context; a batch runs padded to the "
                             "next one), as trtexec --useCudaGraph")
    parser.add_argument("--torch-model", metavar="NAME", help="also time PyTorch eager FP32 of this variant "
                        "(on the GPU when torch sees one, else the CPU; the row names the device)")
    parser.add_argument("--checkpoint", type=Path, help="weights for --torch-model")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _bench(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .runtime import load
    from .runtime.benchmark import benchmark
    model = load(args.model, cuda_graphs=args.cuda_graph)
    run = model.features if model.is_backbone else model.run  # a backbone: every feature map
    runners = {str(args.model.name) + (" (CUDA graph)" if args.cuda_graph else ""): run}
    preprocess = model.preprocess
    if args.torch_model:
        import torch

        from .models import Backbone, create_model
        eager = create_model(args.torch_model, checkpoint=args.checkpoint, resolution=preprocess.input_size)
        if model.is_backbone:  # the same stages (and norms) as the exported backbone
            config = model.feature_config or {}
            stages = config.get("stages") or [int(name.removeprefix("stage")) for name in model.output_shapes]
            eager = Backbone(eager, tuple(stages), bool(config.get("norm"))).eval()

        device = "cuda" if torch.cuda.is_available() else "cpu"  # like with like: the GPU when there is one
        eager = eager.to(device)

        def torch_run(batch):
            batch = preprocess.normalized(batch)  # what a --input uint8 / pixels graph computes first
            with torch.inference_mode():  # from the host, as the engine is fed
                out = eager(torch.from_numpy(batch).to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        runners[f"pytorch eager {device} ({args.torch_model})"] = torch_run
    rows = benchmark(runners, preprocess.input_shape, args.batch, args.iters, args.warmup, preprocess.input_dtype)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':42s} {'batch':>5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'img/s':>9s}")
    for row in rows:
        print(f"{row['model']:42s} {row['batch']:5d} {row['p50_ms']:8.2f} {row['p90_ms']:8.2f} "
              f"{row['p99_ms']:8.2f} {row['img_per_s']:9.1f}")
    return 0


def bench_main(argv: Sequence[str] | None = None) -> int:
    return _run(_bench, bench_parser, argv)


# ---------------------------------------------------------------- fastervit-inspect

def inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastervit-inspect", formatter_class=_formatter,
        epilog="examples:\n  fastervit-inspect export/faster_vit_0_224_int8.onnx\n"
               "  fastervit-inspect engines/faster_vit_0_224_fp16.engine",
        description="What is inside an ONNX file (ops, Q/DQ, float16 share, external data, export "
                    "report) or an engine (sidecar, and its layers with precisions via TensorRT's "
                    "engine inspector when a GPU is present).")
    parser.add_argument("path", type=Path, help=".onnx or .engine")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _inspect(args: argparse.Namespace) -> int:
    import json

    from .inspect import inspect_path
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


def inspect_main(argv: Sequence[str] | None = None) -> int:
    return _run(_inspect, inspect_parser, argv)


# ---------------------------------------------------------------- fastervit-triton

def triton_parser() -> argparse.ArgumentParser:
    from .triton import TritonOptions
    d = TritonOptions()
    parser = argparse.ArgumentParser(
        prog="fastervit-triton", formatter_class=_formatter,
        epilog="examples:\n  fastervit-triton engines/faster_vit_0_224_fp16.engine --repo models\n"
               "  fastervit-triton export/faster_vit_0_224_fp32.onnx --repo models --kind cpu --instances 2\n"
               "  tritonserver --model-repository models",
        description="Write a Triton Inference Server model repository (config.pbtxt + 1/model.plan or "
                    "1/model.onnx) for an engine (TensorRT backend) or ONNX file (ONNX Runtime backend).")
    parser.add_argument("model", type=Path, help=".engine (with its sidecar) or .onnx")
    parser.add_argument("--repo", type=Path, required=True, help="model repository folder")
    parser.add_argument("--name", help="model name in the repository (default: the file name)")
    parser.add_argument("--instances", type=_positive, default=d.instances, help="instance_group count")
    parser.add_argument("--kind", choices=("gpu", "cpu"), help="instance kind (default: gpu for engines, cpu for ONNX)")
    parser.add_argument("--max-queue-delay-us", type=_number(int, 0), default=d.max_queue_delay_us,
                        help="dynamic batching: how long a request may wait for others")
    parser.add_argument("--image-bytes", action="store_true",
                        help="also write <name>_preprocess (Python backend: decodes image bytes with the "
                             "model's preprocessing) and the ensemble <name>_bytes, so clients send JPEG/PNG "
                             "bytes and get logits")
    parser.add_argument("--force", action="store_true", help="overwrite an existing model folder")
    return parser


def _triton(args: argparse.Namespace) -> int:
    from .triton import TritonOptions, write_model_repository
    try:
        options = TritonOptions(name=args.name, instances=args.instances, kind=args.kind,
                                max_queue_delay_us=args.max_queue_delay_us, image_bytes=args.image_bytes,
                                force=args.force)
    except ValueError as exc:
        raise FasterViTTRTError(str(exc)) from None
    folder = write_model_repository(args.model, args.repo, options)
    model_file = next(p for p in (folder / "1").iterdir() if p.suffix in (".plan", ".onnx"))
    print(f"wrote {folder / 'config.pbtxt'} and {model_file}")
    if args.image_bytes:
        print(f"wrote {folder.with_name(folder.name + '_preprocess')} and {folder.with_name(folder.name + '_bytes')} "
              "(send encoded images to the _bytes ensemble; the server's Python needs pip install fastervit-trt)")
    print(f"serve: {shlex.join(['tritonserver', '--model-repository', str(args.repo)])}")
    return 0


def triton_main(argv: Sequence[str] | None = None) -> int:
    return _run(_triton, triton_parser, argv)


# ---------------------------------------------------------------- fastervit-eval

def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastervit-eval", formatter_class=_formatter,
        epilog="examples:\n  fastervit-eval --data ~/imagenet/val --model engines/faster_vit_0_224_int8.engine "
               "--model export/faster_vit_0_224_fp32.onnx --limit 5000\n"
               "  fastervit-eval --data digits/heldout --model export/faster_vit_digits_int8.onnx "
               "--torch faster_vit_digits --checkpoint tests/fixtures/faster_vit_digits.pth --json",
        description="Top-1 / top-5 accuracy of engines, ONNX files and PyTorch models side by side on a "
                    "labelled folder (<data>/<class>/<image>), with pairwise top-1 agreement and logit cosine.")
    parser.add_argument("--data", type=Path, required=True, help="labelled image folder")
    parser.add_argument("--model", type=Path, action="append", default=[], help=".engine or .onnx (repeatable)")
    parser.add_argument("--torch", metavar="NAME", help="also evaluate PyTorch eager of this variant")
    parser.add_argument("--checkpoint", type=Path, help="weights for --torch")
    parser.add_argument("--labels", type=Path, help="'<folder> <class index>' lines for non-ImageNet folders")
    parser.add_argument("--limit", type=_positive, help="evaluate N images spread evenly over the folder")
    parser.add_argument("--batch", type=_positive, default=32)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def _eval(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate, labelled_samples, torch_runner
    from .runtime import load
    if not args.model and not args.torch:
        raise FasterViTTRTError("nothing to evaluate: pass --model FILE and/or --torch NAME")
    samples = labelled_samples(args.data, args.labels, args.limit)
    runners = {str(path): load(path).logits for path in args.model}
    if args.torch:
        runners[f"pytorch:{args.torch}"] = torch_runner(args.torch, args.checkpoint)
    report = evaluate(runners, samples, args.batch, None if args.json else sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['images']} images from {args.data}")
    print(f"{'model':60s} {'top-1 %':>8s} {'top-5 %':>8s}")
    for name, row in report["models"].items():
        print(f"{name:60s} {row['top1']:8.2f} {row['top5']:8.2f}")
    for pair in report["pairs"]:
        print(f"{pair['a']}  vs  {pair['b']}: top-1 agreement {pair['top1_agreement']:.2f} %, "
              f"mean cosine {pair['mean_cosine']:.5f}")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    return _run(_eval, eval_parser, argv)


# ---------------------------------------------------------------- fastervit-deepstream

def deepstream_parser() -> argparse.ArgumentParser:
    from .deepstream import PROCESS_MODES, DeepStreamOptions
    d = DeepStreamOptions()
    parser = argparse.ArgumentParser(
        prog="fastervit-deepstream", formatter_class=_formatter,
        epilog="examples:\n"
               "  fastervit-export --model faster_vit_4_21k_384 --checkpoint w.pth.tar --precision int8 "
               "--input pixels --softmax\n"
               "  fastervit-deepstream engines/faster_vit_4_21k_384_int8_softmax_pixelsin.engine --out ds\n"
               "  fastervit-deepstream export/faster_vit_4_21k_384_int8_softmax_pixelsin.onnx --out ds "
               "--process-mode secondary --operate-on-gie-id 1",
        description="Write a DeepStream nvinfer classifier config ([property] key file) and labels file for an "
                    "export made with --input pixels --softmax (or its engine): every value from the export's "
                    "metadata, net-scale-factor 1 and zero offsets because the graph normalises per channel "
                    "itself. Refuses, in one line, a model whose preprocessing nvinfer cannot reproduce.")
    parser.add_argument("model", type=Path, help=".onnx export or .engine (with its sidecar)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the config and labels")
    parser.add_argument("--process-mode", choices=tuple(PROCESS_MODES), default=d.process_mode,
                        help="primary: whole frames; secondary: the objects of another nvinfer (a detector)")
    parser.add_argument("--threshold", type=_number(float, 0, 1), default=d.threshold,
                        help="classifier-threshold: the least probability at which a label is attached")
    parser.add_argument("--gie-unique-id", type=_positive, default=d.gie_unique_id)
    parser.add_argument("--operate-on-gie-id", type=_positive, default=d.operate_on_gie_id,
                        help="secondary mode: the gie-unique-id of the detector whose objects are classified")
    parser.add_argument("--gpu-id", type=_number(int, 0), default=d.gpu_id)
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def _deepstream(args: argparse.Namespace) -> int:
    from .deepstream import DeepStreamOptions, launch_example, write_deepstream
    try:
        options = DeepStreamOptions(process_mode=args.process_mode, threshold=args.threshold,
                                    gie_unique_id=args.gie_unique_id, operate_on_gie_id=args.operate_on_gie_id,
                                    gpu_id=args.gpu_id, force=args.force)
    except ValueError as exc:
        raise FasterViTTRTError(str(exc)) from None
    config, labels = write_deepstream(args.model, args.out, options)
    print(f"wrote {config} and {labels}")
    print(f"run: {launch_example(config)}")
    return 0


def deepstream_main(argv: Sequence[str] | None = None) -> int:
    return _run(_deepstream, deepstream_parser, argv)


# ---------------------------------------------------------------- fastervit-serve

def serve_parser() -> argparse.ArgumentParser:
    from .serve import ServeOptions
    d = ServeOptions()
    parser = argparse.ArgumentParser(
        prog="fastervit-serve", formatter_class=_formatter,
        epilog="examples:\n  fastervit-serve --model engines/faster_vit_0_224_fp16.engine --port 8000\n"
               "  curl -s --data-binary @cat.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/classify?topk=3\n"
               "  fastervit-serve --model export/faster_vit_0_224_fp32.onnx --max-delay-ms 5 --max-queue 64\n"
               "  curl -s localhost:8000/metrics | grep fastervit_batch_size",
        description="Serve a classifier over HTTP (Starlette + uvicorn; pip install 'fastervit-trt[serve]'): "
                    "POST image bytes (or JSON {\"images\": [base64, ...]}) to /v1/classify for the top-k "
                    "classes; concurrent requests are batched into one engine call. Also /v1/model, "
                    "/health/live, /health/ready and Prometheus /metrics. Overload is answered 503 with "
                    "Retry-After; SIGTERM finishes in-flight requests before exiting.")
    parser.add_argument("--model", type=Path, required=True, help=".engine or .onnx classifier")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="0: any free port")
    parser.add_argument("--max-batch", type=_positive, metavar="N",
                        help="largest batch the batcher forms (default: the engine's largest)")
    parser.add_argument("--max-delay-ms", type=_number(float, 0), default=d.max_delay_ms, metavar="MS",
                        help="how long the oldest waiting request may wait for others to batch with")
    parser.add_argument("--max-queue", type=_positive, default=d.max_queue, metavar="N",
                        help="requests waiting beyond this are refused at once (503)")
    parser.add_argument("--timeout-s", type=_number(float, 0, low_open=True), default=d.timeout_s, metavar="S",
                        help="a request not started by then is answered 503")
    parser.add_argument("--max-body-mb", type=_number(float, 0, low_open=True), default=d.max_body_bytes / 2**20,
                        metavar="MB", help="larger bodies are refused (413)")
    parser.add_argument("--topk", type=_positive, default=d.topk, help="classes per image unless ?topk= says")
    parser.add_argument("--graceful-s", type=_number(float, 0), default=30.0, metavar="S",
                        help="on shutdown, how long in-flight requests may take to finish")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from .runtime import load
    from .serve import ServeOptions, create_app
    options = ServeOptions(max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                           timeout_s=args.timeout_s, max_body_bytes=int(args.max_body_mb * 2**20), topk=args.topk)
    with load(args.model) as model:
        app = create_app(model, options)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                timeout_graceful_shutdown=args.graceful_s)
        server = uvicorn.Server(config)
        print(f"serving {args.model} on http://{args.host}:{args.port}: POST /v1/classify "
              f"(batches up to {options.max_batch or model.max_batch}, {options.max_delay_ms:g} ms delay)",
              file=sys.stderr, flush=True)
        # uvicorn shuts down gracefully on SIGTERM, then raises it again for the previous handler:
        # this one, so a service stopped on purpose exits 0 once its requests are answered
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return 0


def serve_main(argv: Sequence[str] | None = None) -> int:
    return _run(_serve, serve_parser, argv)


if __name__ == "__main__":
    sys.exit(export_main())
