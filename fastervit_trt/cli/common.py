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
from dataclasses import Field, fields
from pathlib import Path
from types import UnionType
from typing import Any, TextIO, TypeVar, Union, get_args, get_origin, get_type_hints

from ..errors import FasterViTTRTError
from ..runtime.backend import PROVIDERS, RuntimeOptions
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


def provider(text: str) -> str:
    """An ONNX Runtime provider: auto, a ``PROVIDERS`` name or its own name (``...ExecutionProvider``)."""
    if text in ("auto", *PROVIDERS) or text.endswith("ExecutionProvider"):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected auto, {', '.join(PROVIDERS)} or an ONNX Runtime provider's name (...ExecutionProvider)"
    )


# ---------------------------------------------------------------- argument groups


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


def renamed(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the already added ``new``."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(
        old, dest=dest, action=_Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs
    )


# ---------------------------------------------------------------- options dataclasses as flags

# What an options dataclass field's ``metadata`` may say about its flag (``add_options`` reads it)
FLAG_KEYS = {
    "flag": "the spelling, e.g. --calib-images",
    "dest": "the argument's name, where it is not the flag's",
    "help": "what the help says of it",
    "metavar": "the value's name in the help",
    "choices": "the values offered: the tuple the dataclass checks against",
    "nargs": "how many values (argparse's nargs)",
    "const": "the value of the flag given alone (nargs '?')",
    "range": "(low, high) of a number, None unbounded; a value outside is refused naming the range",
    "low_open": "True: the range excludes low",
    "parse": "the name of the PARSERS entry that reads the text (1,8,32 -> (1, 8, 32))",
    "default": "the flag's default, where it is not the field's (None: unset, the command decides)",
    "old": "a former spelling, still parsed, with a note",
    "group": "the field holds another options dataclass, whose flags form this argument group",
}
PARSERS = {"batch_profile": batch_profile, "stages": stages, "capabilities": capabilities, "provider": provider}
ON_OFF = ("on", "off")  # the flag of a boolean field that defaults to True

Options = TypeVar("Options")


def _flagged(cls: type) -> list[tuple[Field, type]]:
    """The fields of options dataclass ``cls`` that name a flag or a group, with their types."""
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if "flag" in f.metadata or "group" in f.metadata]


def _kind(hint: Any) -> Any:
    """What each value of a field's flag is (``int | None``: int; ``tuple[float, float] | None``: float)."""
    members = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
    return get_args(members[0])[0] if get_origin(members[0]) is tuple else members[0]


def _dest(field: Field) -> str:
    return field.metadata.get("dest") or field.metadata["flag"].lstrip("-").replace("-", "_")


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag per field of options dataclass ``cls`` whose metadata names one (``FLAG_KEYS``);
    a number with a ``range`` says the valid range when refused, a boolean is a switch (``on`` /
    ``off`` when it defaults to True), a parsed tuple shows its default as typed (``1,8,32``)."""
    for field, hint in _flagged(cls):
        meta, kind = field.metadata, _kind(hint)
        if "group" in meta:
            add_options(parser.add_argument_group(meta["group"]), hint)
            continue
        default = meta["default"] if "default" in meta else field.default
        spec: dict[str, Any] = {"dest": _dest(field), "help": meta.get("help"), "default": default}
        spec.update({key: meta[key] for key in ("metavar", "choices", "nargs", "const") if key in meta})
        if kind is bool and default is True:
            spec.update(choices=ON_OFF, default=ON_OFF[0])
        elif kind is bool:
            spec["action"] = "store_true"
        elif "parse" in meta:
            spec["type"] = PARSERS[meta["parse"]]
            if isinstance(default, tuple) and default:
                spec["default"] = ",".join(map(str, default))
        elif "range" in meta:
            low, high = meta["range"]
            spec["type"] = number(kind, low, high, low_open=meta.get("low_open", False))
        elif kind in (int, float, Path):
            spec["type"] = kind
        parser.add_argument(meta["flag"], **spec)
        if "old" in meta:
            renamed(parser, meta["old"], meta["flag"], metavar=meta.get("metavar"))


def options_from(cls: type[Options], args: argparse.Namespace, **given: Any) -> Options:
    """``cls`` as the flags of ``add_options`` say: a flag left unset (None) keeps the field's
    default, a group builds its dataclass; a field without a flag of its own takes the argument of
    its name when there is one (``--force``); ``given`` fields are the caller's."""
    flagged = dict(_flagged(cls))
    values: dict[str, Any] = {}
    for field in fields(cls):  # type: ignore[arg-type]  # an options dataclass
        if field.name in given:
            continue
        if "group" in field.metadata:
            values[field.name] = options_from(flagged[field], args)
            continue
        value = getattr(args, _dest(field) if field in flagged else field.name, None)
        if value is None:
            continue
        if value in ON_OFF and _kind(flagged.get(field)) is bool:
            value = value == ON_OFF[0]
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values, **given)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """The runtime group of every command that loads a model (infer, bench, eval, serve, batch)."""
    add_options(parser.add_argument_group("runtime (how the model runs)"), RuntimeOptions)


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The ``RuntimeOptions`` that ``add_runtime_options``'s flags say."""
    return options_from(RuntimeOptions, args)


# ---------------------------------------------------------------- running a command


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
