"""The runtime group every command that loads a model shares (infer, bench, eval, serve, batch):
``RuntimeOptions``'s fields as flags, their choices from the backend registry and ONNX
Runtime's provider table, their defaults from the dataclass."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from ..runtime.backend import BACKENDS, RuntimeOptions
from ..runtime.onnxruntime_backend import PROVIDERS
from .common import number, positive


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--provider``, ``--contexts``, ``--cuda-graphs``, ``--device``."""
    d = RuntimeOptions()
    group = parser.add_argument_group("runtime (how the model runs)")
    group.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default=d.backend,
        help="auto: by the file's suffix ("
        + ", ".join(f"{'/'.join(kind.suffixes)} {name}" for name, kind in BACKENDS.items())
        + ")",
    )
    group.add_argument(
        "--provider",
        type=_provider,
        default=d.provider,
        metavar="{auto," + ",".join(PROVIDERS) + "}",
        help="ONNX Runtime's execution provider (or its own name, e.g. CUDAExecutionProvider); auto: CUDA "
        "when this onnxruntime has it, else the CPU (TensorRT only when asked)",
    )
    group.add_argument(
        "--contexts",
        type=positive,
        default=d.contexts,
        metavar="N",
        help="engines: execution contexts serving concurrent calls",
    )
    group.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=d.cuda_graphs,
        help="engines: replay CUDA graphs captured at fixed batch sizes (powers of two up to the profile's "
        "MAX, each with its own context; a batch runs padded to the next one), as trtexec --useCudaGraph",
    )
    group.add_argument(
        "--device",
        type=number(int, 0),
        default=d.device,
        metavar="INDEX",
        help="CUDA device index (default: the current one)",
    )


def _provider(text: str) -> str:
    """A ``PROVIDERS`` name, auto, or an execution provider's own name (``...ExecutionProvider``)."""
    if text in ("auto", *PROVIDERS) or text.endswith("ExecutionProvider"):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected auto, {', '.join(PROVIDERS)} or an ONNX Runtime provider's name (...ExecutionProvider)"
    )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The ``RuntimeOptions`` that ``add_runtime_options``'s flags say (an ``OptionsError`` is
    the command's one-line error)."""
    given: dict[str, Any] = {field.name: getattr(args, field.name) for field in fields(RuntimeOptions)}
    return RuntimeOptions(**given)
