"""How INT8 / FP8 scales are obtained: the calibration settings of one quantized export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..artifacts import paths_of
from ..errors import OptionsError
from .dataset import DEFAULT_DATA
from .ranges import METHODS

PERCENTILE_RANGE = (50.0, 100.0)  # exclusive, inclusive


class Exported(Protocol):
    """What a cache's default place is derived from (an ``ExportOptions``)."""

    @property
    def onnx_path(self) -> Path: ...


@dataclass(frozen=True)
class CalibrationOptions:
    """How INT8 scales are obtained; defaults match ``fastervit-export --precision int8``."""

    data: Path = DEFAULT_DATA
    images: int = 256
    batch: int = 8
    method: str = "entropy"
    percentile: float = 99.99
    cache: Path | None = None  # default: <output_dir>/<model>_int8.cache
    recalibrate: bool = False  # ignore an existing cache
    qdq_base: str = "fp16"
    heldout: int = 32
    sensitivity: bool = False  # rank layers by the degradation each alone causes
    accuracy_budget: float | None = None  # max top-1 agreement drop vs FP32, in points
    residual_qdq: str = "auto"  # INT8 residual inputs: on, off, auto (on unless exporting features)
    bias_correction: bool = True  # biases absorb the mean output shift of weight rounding

    def __post_init__(self) -> None:
        paths_of(self, "data", "cache")
        if self.method not in METHODS:
            raise OptionsError(f"calibration method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.qdq_base not in ("fp16", "fp32"):
            raise OptionsError(f"qdq_base must be fp16 or fp32, not {self.qdq_base!r}")
        if not PERCENTILE_RANGE[0] < self.percentile <= PERCENTILE_RANGE[1]:
            raise OptionsError(
                f"--calib-percentile must be above {PERCENTILE_RANGE[0]:g} and at most "
                f"{PERCENTILE_RANGE[1]:g} (the share of |x| values kept in range), not {self.percentile:g}"
            )
        if self.residual_qdq not in ("auto", "on", "off"):
            raise OptionsError(f"--residual-qdq must be auto, on or off, not {self.residual_qdq!r}")
        if self.heldout < 1:
            raise OptionsError(f"--calib-heldout must be at least 1, not {self.heldout}")
        if self.images < 1 or self.batch < 1:
            raise OptionsError("--calib-images and --calib-batch must be positive")
        if self.accuracy_budget is not None and not 0 <= self.accuracy_budget <= 100:
            raise OptionsError("--accuracy-budget is a top-1 agreement drop in points, between 0 and 100")

    def quantizes_residuals(self, features: bool) -> bool:
        """Whether INT8 residual inputs get Q/DQ: ``auto`` for a classifier, not a backbone."""
        return self.residual_qdq == "on" or (self.residual_qdq == "auto" and not features)

    def cache_path(self, options: Exported) -> Path:
        return self.cache or options.onnx_path.with_suffix(".cache")

    def record(self) -> dict:
        """The flags that decide the scales, as written beside a cache (``<cache>.json``)."""
        return {
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "data": str(self.data.resolve()),
            "images": self.images,
            "batch": self.batch,
        }
