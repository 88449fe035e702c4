"""What ``InferenceModel`` needs of a backend, the options it is opened with, and the registry
that chooses one for a file.

A backend is a module with ``open_backend(path, options) -> Backend`` and one entry in
``BACKENDS``: its name, the file suffixes ``backend="auto"`` gives it, and the
``RuntimeOptions`` fields it reads (any other field left at its default, or one clear error)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ModelFileError, OptionsError


@dataclass(frozen=True)
class RunsOn:
    """Where a loaded model runs: its backend, the provider inside it (ONNX Runtime's
    first-choice execution provider: nodes it cannot run go to the next one; or the TensorRT
    flavour and version) and the device."""

    backend: str  # "onnxruntime", "tensorrt"
    provider: str  # "CPUExecutionProvider", "CUDAExecutionProvider" (the first choice), "tensorrt-rtx 1.2.0", ...
    device: str  # "cpu", "cuda:0"; "default": a provider that picks its own

    def __str__(self) -> str:
        return f"{self.backend} ({self.provider}) on {self.device}"


class Backend(Protocol):
    """A loaded engine or ONNX file that runs batches of the model's input."""

    input_name: str
    output_names: list[str]
    input_dtype: np.dtype
    input_shape: tuple[int, ...]  # one input's shape, without the batch axis
    output_shapes: dict[str, tuple[int, ...]]  # each output's shape per input
    max_batch: int  # the most inputs one ``infer_all`` call takes
    metadata: dict  # what the file records of the model: an engine's sidecar, an ONNX file's metadata; {}: none

    @property
    def device(self) -> int | None:
        """The CUDA device index it runs on (None: the current one, or the CPU)."""
        ...

    @property
    def runs_on(self) -> RunsOn: ...

    def infer(self, batch: Any) -> np.ndarray:
        """The first output (a classifier's logits) of ``batch``."""
        ...

    def infer_all(self, batch: Any) -> dict[str, np.ndarray]:
        """Every output of ``batch`` (at most ``max_batch`` inputs), by name."""
        ...

    def close(self) -> None: ...


# ONNX Runtime's providers by --provider name, each falling back on those after it for nodes it cannot run
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


@dataclass(frozen=True)
class BackendKind:
    """One registered backend: the module that opens it, the files it runs, the options it reads."""

    module: str  # with ``open_backend(path, options) -> Backend``; ".name": of this package
    suffixes: tuple[str, ...]
    files: str  # what those files are, for messages
    reads: tuple[str, ...]  # the RuntimeOptions fields it applies
    gpu: bool  # whether it always needs a GPU

    def open(self, path: Path, options: RuntimeOptions) -> Backend:
        return importlib.import_module(self.module, __package__).open_backend(path, options)


BACKENDS = {
    "tensorrt": BackendKind(
        ".tensorrt_backend",
        suffixes=(".engine", ".plan"),
        files="TensorRT engines",
        reads=("contexts", "cuda_graphs", "device"),
        gpu=True,
    ),
    "onnxruntime": BackendKind(
        ".onnxruntime_backend", suffixes=(".onnx",), files="ONNX files", reads=("provider", "device"), gpu=False
    ),
}


class BackendNames:
    """``auto`` and the registered backends' names, read from ``BACKENDS`` when asked, so a
    backend registered after import is offered too (``--backend``'s choices)."""

    def __iter__(self) -> Iterator[str]:
        return iter(("auto", *BACKENDS))

    def __contains__(self, name: object) -> bool:
        return name == "auto" or name in BACKENDS


@dataclass(frozen=True)
class RuntimeOptions:
    """How ``load`` runs a model; the one group of runtime flags of infer, bench, eval, serve
    and batch, each field's metadata spelling its flag (``cli/common.py``: ``add_options``). A
    field the chosen backend does not read must keep its default."""

    backend: str = field(
        default="auto",
        metadata={
            "flag": "--backend",
            "choices": BackendNames(),
            "help": "auto: by the file's suffix ("
            + ", ".join(f"{'/'.join(kind.suffixes)} {name}" for name, kind in BACKENDS.items())
            + ")",
        },
    )
    provider: str = field(
        default="auto",
        metadata={
            "flag": "--provider",
            "parse": "provider",
            "metavar": "{auto," + ",".join(PROVIDERS) + "}",
            "help": "ONNX Runtime's execution provider (or its own name, e.g. CUDAExecutionProvider); auto: CUDA "
            "when this onnxruntime has it, else the CPU (TensorRT only when asked)",
        },
    )
    contexts: int = field(
        default=2,
        metadata={
            "flag": "--contexts",
            "range": (1, None),
            "metavar": "N",
            "help": "engines: execution contexts serving concurrent calls",
        },
    )
    cuda_graphs: bool = field(
        default=False,
        metadata={
            "flag": "--cuda-graphs",
            "help": "engines: replay CUDA graphs captured at fixed batch sizes (powers of two up to the profile's "
            "MAX, each with its own context; a batch runs padded to the next one), as trtexec --useCudaGraph",
        },
    )
    device: int | None = field(
        default=None,
        metadata={
            "flag": "--device",
            "range": (0, None),
            "metavar": "INDEX",
            "help": "CUDA device index (default: ONNX Runtime's CUDA and TensorRT providers: device 0; "
            "engines: the current device)",
        },
    )

    def __post_init__(self) -> None:
        if self.backend not in BackendNames():
            raise OptionsError(f"backend {self.backend!r}: expected auto or one of {', '.join(BACKENDS)}")
        if self.contexts < 1:
            raise OptionsError(f"contexts must be at least 1, not {self.contexts}")
        if self.device is not None and self.device < 0:
            raise OptionsError(f"device must be a CUDA device index (0, 1, ...), not {self.device}")


# what a file of another kind is, for the message refusing it
_OTHER_FILES = {
    ".json": "that is an engine's sidecar: pass the .engine beside it",
    ".pth": "that is a PyTorch checkpoint: export it with fastervit-export --checkpoint",
    ".tar": "that is a PyTorch checkpoint: export it with fastervit-export --checkpoint",
    ".safetensors": "those are PyTorch weights: export them with fastervit-export --checkpoint",
    ".cache": "that is a calibration cache: pass the engine or ONNX built with it",
}
# how an option is named in messages
_OPTION_TEXT = {
    "provider": "ONNX Runtime providers",
    "contexts": "execution contexts",
    "cuda_graphs": "CUDA graphs",
    "device": "CUDA devices",
}


def choose_backend(path: Path, options: RuntimeOptions) -> str:
    """The name of the backend that runs ``path``: the one asked for, or by its suffix; an
    option it does not read that is not at its default is refused."""
    by_suffix = next((name for name, kind in BACKENDS.items() if path.suffix in kind.suffixes), None)
    name = by_suffix if options.backend == "auto" else options.backend
    if name is None:
        runs = " or ".join("/".join(kind.suffixes) for kind in BACKENDS.values())
        raise ModelFileError(
            f"{path}: expected an {runs} model; "
            f"{_OTHER_FILES.get(path.suffix, 'export and build one with fastervit-export')}"
        )
    if by_suffix not in (None, name):
        raise ModelFileError(
            f"{path}: the {name} backend runs {BACKENDS[name].files} ({'/'.join(BACKENDS[name].suffixes)}), "
            f"not {BACKENDS[by_suffix].files}; pass backend={by_suffix!r} (--backend {by_suffix}) or 'auto'"
        )
    read = ("backend", *BACKENDS[name].reads)
    unread = [f.name for f in fields(options) if f.name not in read and getattr(options, f.name) != f.default]
    if unread:
        takers = [kind for kind in BACKENDS.values() if unread[0] in kind.reads]
        raise OptionsError(
            f"{path}: {_OPTION_TEXT[unread[0]]} apply to {' and '.join(k.files for k in takers)}; "
            f"pass an {takers[0].suffixes[0]}"
        )
    return name


def join_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of consecutive slices of one batch, joined per output."""
    return {name: np.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name] for name in parts[0]}
