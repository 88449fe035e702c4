"""What an engine build is asked for (``BuildConfig``), how it fails (``EngineBuildError``),
and which TensorRT flavour builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..artifacts import paths_of
from ..errors import EngineBuildError
from ..quant_formats import QUANT_FORMATS
from ..sidecar import DEFAULT_BATCH_PROFILE
from ..tensorrt_import import TENSORRT_MODULES, import_tensorrt

BACKENDS = ("auto", *TENSORRT_MODULES)  # auto: TensorRT first
# a build's precision: the ONNX's own (None), or TensorRT 10's implicit flags on an FP32 graph
PRECISIONS = ("fp32", "fp16", *(f.name for f in QUANT_FORMATS.values() if f.trt_implicit_flag))
OPT_LEVELS = range(6)  # TensorRT's builder optimization levels (its default: 3)


@dataclass(frozen=True)
class BuildConfig:
    """Builder settings; the batch profile is (min, opt, max). Each field's metadata spells its
    ``fastervit-build`` flag."""

    backend: str = field(
        default="auto",
        metadata={"flag": "--backend", "choices": BACKENDS, "help": "auto: TensorRT if installed, else TensorRT-RTX"},
    )
    batch: tuple[int, int, int] = field(
        default=DEFAULT_BATCH_PROFILE,
        metadata={
            "flag": "--batch",
            "parse": "batch_profile",
            "default": None,  # unset: the profile recorded at export
            "metavar": "MIN,OPT,MAX",
            "help": "optimization profile (default: the one recorded at export, else "
            f"{','.join(map(str, DEFAULT_BATCH_PROFILE))})",
        },
    )
    precision: str | None = field(  # None: the ONNX's own; fp16/int8 on an FP32 graph: TensorRT 10 only
        default=None,
        metadata={
            "flag": "--precision",
            "choices": PRECISIONS,
            "help": "default: the ONNX's own; fp16/int8 from an FP32 graph needs TensorRT 10",
        },
    )
    workspace_mib: int | None = field(
        default=None,
        metadata={"flag": "--workspace", "range": (1, None), "metavar": "MIB", "help": "workspace memory limit"},
    )
    opt_level: int | None = field(
        default=None,
        metadata={
            "flag": "--opt-level",
            "choices": OPT_LEVELS,
            "metavar": "0-5",
            "help": "builder optimization level (TensorRT's default: 3)",
        },
    )
    timing_cache: Path | None = field(
        default=None,
        metadata={
            "flag": "--timing-cache",
            "metavar": "PATH",
            "help": "TensorRT timing cache: loaded if present, saved after the build",
        },
    )
    hardware_compat: bool = field(  # Ampere+ hardware compatibility
        default=False, metadata={"flag": "--hardware-compat", "help": "run on any Ampere+ GPU"}
    )
    version_compat: bool = field(
        default=False, metadata={"flag": "--version-compat", "help": "run on later TensorRT versions"}
    )
    compute_capabilities: tuple[str, ...] = field(  # TensorRT-RTX targets ("8.9", "12.0"); (): its default
        default=(),
        metadata={
            "flag": "--compute-capability",
            "parse": "capabilities",
            "metavar": "CC[,CC...]",
            "help": "TensorRT-RTX targets, e.g. 8.9,12.0 (default: TensorRT-RTX's own; FP8: every "
            "target from 8.9 on); TensorRT proper builds for the GPU it runs on",
        },
    )
    calib_data: Path | None = field(  # TensorRT 10 implicit INT8
        default=None,
        metadata={"flag": "--calib-data", "metavar": "DIR|FILE.npy", "help": "TensorRT 10 implicit INT8 images"},
    )
    calib_cache: Path | None = field(
        default=None,
        metadata={"flag": "--calib-cache", "metavar": "PATH", "help": "TensorRT 10 implicit INT8 scales"},
    )
    force: bool = field(default=False, metadata={"flag": "--force", "help": "overwrite an existing engine"})

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
