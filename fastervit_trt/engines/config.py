"""What an engine build is asked for (``BuildConfig``), how it fails (``EngineBuildError``),
and which TensorRT flavour builds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..artifacts import paths_of
from ..errors import EngineBuildError
from ..sidecar import DEFAULT_BATCH_PROFILE
from ..tensorrt_import import TENSORRT_MODULES, import_tensorrt


@dataclass(frozen=True)
class BuildConfig:
    """Builder settings; the batch profile is (min, opt, max)."""

    batch: tuple[int, int, int] = DEFAULT_BATCH_PROFILE
    backend: str = "auto"  # "tensorrt", "tensorrt-rtx" or "auto" (TensorRT first)
    precision: str | None = None  # None: the ONNX's own; fp16/int8 on an FP32 graph: TensorRT 10 only
    workspace_mib: int | None = None
    opt_level: int | None = None  # builder optimization level 0..5 (TensorRT's default: 3)
    timing_cache: Path | None = None
    hardware_compat: bool = False  # Ampere+ hardware compatibility
    version_compat: bool = False
    calib_cache: Path | None = None  # TensorRT 10 implicit INT8
    calib_data: Path | None = None
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets ("8.9", "12.0"); (): its default
    force: bool = False

    def __post_init__(self) -> None:
        paths_of(self, "timing_cache", "calib_cache", "calib_data")


# TensorRT-RTX's build targets by compute capability
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}


def load_tensorrt(backend: str = "auto") -> tuple[str, ModuleType]:
    """Import the requested TensorRT flavour; (flavour name, module)."""
    if backend not in TENSORRT_MODULES and backend != "auto":
        raise EngineBuildError(f"unknown backend {backend!r}; choose tensorrt or tensorrt-rtx")
    for name in list(TENSORRT_MODULES) if backend == "auto" else [backend]:
        module = import_tensorrt(name)
        if module is not None:
            return name, module
    raise EngineBuildError(
        "no TensorRT is installed; pip install 'fastervit-trt[tensorrt]' (TensorRT) or "
        "'fastervit-trt[tensorrt-rtx]' (TensorRT-RTX, builds without a GPU)"
    )
