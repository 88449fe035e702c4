"""What every command shares: argument types and groups, help formatting, renamed flags,
and the one place that turns errors into one line and an exit code."""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..errors import FasterViTTRTError
from ..sidecar import DEFAULT_BATCH_PROFILE

EXIT_ERROR = 1
PROFILE_TEXT = ",".join(map(str, DEFAULT_BATCH_PROFILE))

# the extra that brings each optional module, for the message when it is missing
_EXTRAS = {
    "torch": "export",
    "torchvision": "export",
    "onnxslim": "export",
    "safetensors": "export",
    "onnx": "onnxruntime",
    "onnxruntime": "onnxruntime",
    "tensorrt": "tensorrt",
    "tensorrt_rtx": "tensorrt-rtx",
    "tensorrt_rtx_bindings": "tensorrt-rtx",
    "pycuda": "pycuda",
    "pytriton": "triton",
    "tritonclient": "triton",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "ray": "ray",
    "pyarrow": "ray",
}


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows the code's defaults (never a hand-written copy of them), examples verbatim."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


def command_parser(prog: str, examples: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``prog``: the house help format, ``examples`` after the options."""
    return argparse.ArgumentParser(prog=prog, formatter_class=Formatter, epilog=examples, description=description)


# ---------------------------------------------------------------- argument types


def number(
    kind: type, low: float | None = None, high: float | None = None, low_open: bool = False
) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number in [low, high] (``low_open``: above low), the valid
    range in the message."""
    if low is not None and high is not None:
        valid = f"{'above ' + format(low, 'g') if low_open else format(low, 'g')}" + (
            f" and at most {high:g}" if low_open else f" to {high:g}"
        )
    elif low is not None:
        valid = f"{'above' if low_open else 'at least'} {low:g}"
    else:
        valid = f"at most {high:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'} (valid: {valid})"
            ) from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range (valid: {valid})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive = number(int, 1)


def batch_profile(text: str) -> tuple[int, int, int]:
    """``1,8,32`` -> (1, 8, 32): MIN <= OPT <= MAX of an engine's optimization profile."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values  # three values, checked above


def batch_sizes(text: str) -> list[int]:
    """``1,8,32`` -> [1, 8, 32]: batch sizes to run one after another."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes B1,B2,..., got {text!r}")
    return values


def stages(text: str) -> tuple[int, ...]:
    """``2,3,4`` -> (2, 3, 4): distinct backbone stages."""
    try:
        chosen = tuple(int(v) for v in text.split(","))
    except ValueError:
        chosen = ()
    if not chosen or not set(chosen) <= {1, 2, 3, 4} or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"expected distinct stages among 1,2,3,4 (e.g. 2,3,4), got {text!r}")
    return tuple(sorted(chosen))


def capabilities(text: str) -> tuple[str, ...]:
    """``8.9,12.0`` -> ("8.9", "12.0"); each MAJOR.MINOR."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or not all(re.fullmatch(r"\d+\.\d+", p) for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected compute capabilities like 8.9 or 8.9,12.0")
    return parts


# ---------------------------------------------------------------- argument groups


def add_batch_profile(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None, help: str
) -> None:
    """``--batch MIN,OPT,MAX``: the engine's optimization profile (export, build)."""
    parser.add_argument("--batch", type=batch_profile, default=default, metavar="MIN,OPT,MAX", help=help)


def add_model_file(parser: argparse.ArgumentParser, help: str = ".engine or .onnx") -> None:
    """``--model FILE``: the engine or ONNX file a command runs (infer, bench, eval, serve)."""
    parser.add_argument("--model", type=Path, required=True, metavar="FILE", help=help)


def add_torch_variant(parser: argparse.ArgumentParser, what: str, old: str) -> None:
    """``--torch-variant NAME`` (+ ``--checkpoint``): PyTorch eager of a registered variant
    beside the files (bench, eval); ``old`` is the flag's former spelling."""
    parser.add_argument("--torch-variant", metavar="NAME", help=what)
    renamed(parser, old, "--torch-variant", metavar="NAME")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="weights for --torch-variant (alone: PyTorch of the variant the checkpoint was trained as)",
    )


def torch_variant_name(args: argparse.Namespace) -> str | None:
    """The variant ``--torch-variant`` names; with only ``--checkpoint``, the one it was trained as."""
    if args.torch_variant or args.checkpoint is None:
        return args.torch_variant
    from ..models import read_checkpoint, variant_of

    return variant_of(read_checkpoint(args.checkpoint))


def add_calibration_files(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cache_help: str,
    data_help: str,
    data_default: Path | None = None,
) -> None:
    """``--calib-cache`` and ``--calib-data``: where INT8 scales come from (export, build)."""
    parser.add_argument("--calib-data", type=Path, default=data_default, metavar="DIR|FILE.npy", help=data_help)
    parser.add_argument("--calib-cache", type=Path, metavar="PATH", help=cache_help)


def add_json(parser: argparse.ArgumentParser, what: str = "a table") -> None:
    parser.add_argument("--json", action="store_true", help=f"print JSON instead of {what}")


def add_force(parser: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    parser.add_argument("--force", action="store_true", help=f"overwrite {what}")


def add_decoding(parser: argparse.ArgumentParser) -> None:
    """How image files are decoded for a model (infer, batch)."""
    parser.add_argument(
        "--exact-preprocess",
        action="store_true",
        help="decode every JPEG in full and resize the whole image (bitwise timm) even "
        "where the model was exported with the fast path",
    )
    parser.add_argument(
        "--no-exif-rotate",
        action="store_true",
        help="keep the stored pixels; by default EXIF orientation is applied (phone photos upright)",
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def progress(args: argparse.Namespace) -> TextIO | None:
    """Where progress lines go: stderr, or nowhere with ``--quiet``."""
    return None if args.quiet else sys.stderr


class _Renamed(argparse.Action):
    """A flag's former spelling: still parsed into the new flag's value, with a note."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"note: {option_string} is now {self.new} (the old spelling still works, for now)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the already added ``new``."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(
        old, dest=dest, action=_Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs
    )


def add_transform_options(parser: argparse.ArgumentParser) -> None:
    """The eval-transform group of ``fastervit-export`` (``TransformOptions``'s fields, timm's names)."""
    from ..preprocess import CROP_MODES, INTERPOLATIONS

    group = parser.add_argument_group(
        "preprocessing (default: what the checkpoint's timm training args recorded, else the variant's)"
    )
    group.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="per-channel mean, 0..1 scale")
    group.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="per-channel std, 0..1 scale")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter")
    group.add_argument(
        "--crop-pct",
        type=number(float, 0, 1, low_open=True),
        metavar="F",
        help="resize to input size / F before the centre crop (1: no margin cropped)",
    )
    group.add_argument(
        "--crop-mode",
        choices=CROP_MODES,
        help="center: the shorter side is resized, then centre-cropped; squash: both sides resized "
        "(with --crop-pct 1: a plain resize to the input size, as DeepStream's nvinfer scales)",
    )


def transform_options(args: argparse.Namespace) -> Any:
    """The ``TransformOptions`` that ``add_transform_options``'s flags say."""
    from ..preprocess import TRANSFORM_SETTINGS, TransformOptions

    given: dict[str, Any] = {name: getattr(args, name) for name in TRANSFORM_SETTINGS}
    return options_or_error(lambda: TransformOptions(**given))


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    """The INT8 / FP8 calibration group of ``fastervit-export`` (``CalibrationOptions``'s fields)."""
    from ..calibration.options import PERCENTILE_RANGE, CalibrationOptions

    c = CalibrationOptions()
    calib = parser.add_argument_group("INT8 / FP8 calibration (--precision int8 or fp8)")
    add_calibration_files(
        calib,
        data_default=c.data,
        data_help="image folder (read recursively) or preprocessed NCHW float32 .npy",
        cache_help="TensorRT calibration cache; reused when it exists (default: "
        "<output-dir>/<variant>_<precision>.cache)",
    )
    calib.add_argument(
        "--calib-images",
        type=positive,
        default=c.images,
        metavar="N",
        help="calibration inputs (a small folder is expanded by crops and flips)",
    )
    calib.add_argument("--calib-batch", type=positive, default=c.batch, metavar="N")
    calib.add_argument(
        "--calib-method",
        choices=("entropy", "minmax", "percentile"),
        default=c.method,
        help="entropy: TensorRT's EntropyCalibration2 (KL divergence)",
    )
    calib.add_argument(
        "--calib-percentile",
        type=number(float, *PERCENTILE_RANGE, low_open=True),
        default=c.percentile,
        metavar="P",
        help="with --calib-method percentile",
    )
    calib.add_argument("--recalibrate", action="store_true", help="ignore an existing cache")
    calib.add_argument(
        "--qdq-base", choices=("fp16", "fp32"), default=c.qdq_base, help="float type of the layers left unquantized"
    )
    calib.add_argument(
        "--residual-qdq",
        choices=("auto", "on", "off"),
        default=c.residual_qdq,
        help="INT8: quantize the residual input of each Add after a quantized Conv so "
        "TensorRT reads it in INT8 in the fused epilogue; auto: on for classifiers, "
        "off for --features (the feature maps are that residual stream)",
    )
    calib.add_argument(
        "--bias-correction",
        choices=("on", "off"),
        default="on" if c.bias_correction else "off",
        help="subtract from each quantized layer's bias the mean output shift its weight "
        "rounding causes (from the calibration inputs' channel means, kept beside the "
        "cache as <cache>.means.npz)",
    )
    calib.add_argument(
        "--calib-heldout",
        type=positive,
        default=c.heldout,
        metavar="N",
        help="held-out inputs for the accuracy figures, sensitivity and budget",
    )
    calib.add_argument(
        "--sensitivity", action="store_true", help="rank layers by the degradation each causes when quantized alone"
    )
    calib.add_argument(
        "--accuracy-budget",
        type=number(float, 0, 100),
        metavar="POINTS",
        help="leave the most sensitive layers in FP16 until the top-1 agreement with FP32 drops by at most POINTS",
    )


def calibration_options(args: argparse.Namespace) -> Any:
    """The ``CalibrationOptions`` that ``add_calibration_options``'s flags say."""
    from ..calibration.options import CalibrationOptions

    return options_or_error(
        lambda: CalibrationOptions(
            data=args.calib_data,
            images=args.calib_images,
            batch=args.calib_batch,
            method=args.calib_method,
            percentile=args.calib_percentile,
            cache=args.calib_cache,
            recalibrate=args.recalibrate,
            qdq_base=args.qdq_base,
            heldout=args.calib_heldout,
            sensitivity=args.sensitivity,
            accuracy_budget=args.accuracy_budget,
            residual_qdq=args.residual_qdq,
            bias_correction=args.bias_correction == "on",
        )
    )


# ---------------------------------------------------------------- running a command


def options_or_error(make: Callable[[], Any]) -> Any:
    """``make()``, with the options' own ``ValueError`` as the command's one-line error."""
    try:
        return make()
    except ValueError as exc:
        raise FasterViTTRTError(str(exc)) from None


def _missing(exc: ModuleNotFoundError, prog: str) -> int:
    """One line naming the missing module and the install that brings it."""
    top = (exc.name or "").split(".")[0]
    if top not in _EXTRAS:
        raise exc
    print(
        f"error: {prog} needs {top}, which this install lacks: pip install 'fastervit-trt[{_EXTRAS[top]}]'",
        file=sys.stderr,
    )
    return EXIT_ERROR


def run(
    main: Callable[[argparse.Namespace], int],
    parser: Callable[[], argparse.ArgumentParser],
    argv: Sequence[str] | None,
    prog: str,
) -> int:
    """Parse ``argv`` with ``parser()`` and run ``main``; every expected failure is one line
    on stderr and a non-zero exit."""
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
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except OSError as exc:  # a full disk, a vanished folder: what was being written is cleaned up
        where = exc.filename or "output"
        hint = (
            "free some space or choose another output folder"
            if exc.errno == errno.ENOSPC
            else "check the path and its permissions"
        )
        print(f"error: {where}: {exc.strerror or exc}; {hint}", file=sys.stderr)
        return EXIT_ERROR
