"""How INT8 / FP8 scales are obtained: the calibration settings of one quantized export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..artifacts import paths_of
from ..errors import OptionsError
from ..quant_formats import Target
from .dataset import DEFAULT_DATA
from .ranges import METHODS

PERCENTILE_RANGE = (50.0, 100.0)  # exclusive, inclusive
QDQ_BASES = ("fp16", "fp32")  # the float type of the layers left unquantized
RESIDUAL_QDQ = ("auto", "on", "off")  # INT8 residual inputs; auto: on unless exporting features
ATTENTION_QDQ = ("auto", "on", "off")  # attention matmuls; auto: the target's default


class Exported(Protocol):
    """What a cache's default place is derived from (an ``ExportOptions``)."""

    @property
    def onnx_path(self) -> Path: ...


@dataclass(frozen=True)
class CalibrationOptions:
    """How INT8 scales are obtained; defaults match ``fastervit-export --precision int8``, whose
    flags each field's metadata spells (``fastervit_trt/cli/common.py``: ``add_options``)."""

    data: Path = field(
        default=DEFAULT_DATA,
        metadata={
            "flag": "--calib-data",
            "metavar": "DIR|FILE.npy",
            "help": "image folder (read recursively) or preprocessed NCHW float32 .npy",
        },
    )
    cache: Path | None = field(  # default: <output_dir>/<model>_int8.cache
        default=None,
        metadata={
            "flag": "--calib-cache",
            "metavar": "PATH",
            "help": "TensorRT calibration cache; reused when it exists (default: "
            "<output-dir>/<variant>_<precision>.cache)",
        },
    )
    images: int = field(
        default=256,
        metadata={
            "flag": "--calib-images",
            "range": (1, None),
            "metavar": "N",
            "help": "calibration inputs (a small folder is expanded by crops and flips)",
        },
    )
    batch: int = field(default=8, metadata={"flag": "--calib-batch", "range": (1, None), "metavar": "N"})
    method: str = field(
        default="entropy",
        metadata={
            "flag": "--calib-method",
            "choices": METHODS,
            "help": "entropy: TensorRT's EntropyCalibration2 (KL divergence)",
        },
    )
    percentile: float = field(
        default=99.99,
        metadata={
            "flag": "--calib-percentile",
            "range": PERCENTILE_RANGE,
            "low_open": True,
            "metavar": "P",
            "help": "with --calib-method percentile",
        },
    )
    recalibrate: bool = field(default=False, metadata={"flag": "--recalibrate", "help": "ignore an existing cache"})
    qdq_base: str | None = field(  # None: the target's (fp16 for TensorRT, fp32 for ONNX Runtime CPU)
        default=None,
        metadata={
            "flag": "--qdq-base",
            "choices": QDQ_BASES,
            "help": "float type of the layers left unquantized (default: fp16 for --target tensorrt, "
            "fp32 for onnxruntime-cpu)",
        },
    )
    attention_qdq: str = field(
        default="auto",
        metadata={
            "flag": "--attention-qdq",
            "choices": ATTENTION_QDQ,
            "help": "quantize both inputs of every attention matmul (Q.K^T and softmax.V, windowed "
            "and carrier-token); auto: on for --target onnxruntime-cpu (faster there), off for "
            "tensorrt (its speed is a GPU measurement)",
        },
    )
    residual_qdq: str = field(
        default="auto",
        metadata={
            "flag": "--residual-qdq",
            "choices": RESIDUAL_QDQ,
            "help": "INT8: quantize the residual input of each Add after a quantized Conv so "
            "TensorRT reads it in INT8 in the fused epilogue; auto: on for classifiers, "
            "off for --features (the feature maps are that residual stream)",
        },
    )
    bias_correction: bool = field(
        default=True,
        metadata={
            "flag": "--bias-correction",
            "help": "subtract from each quantized layer's bias the mean output shift its weight "
            "rounding causes (from the calibration inputs' channel means, kept beside the "
            "cache as <cache>.means.npz)",
        },
    )
    heldout: int = field(
        default=32,
        metadata={
            "flag": "--calib-heldout",
            "range": (1, None),
            "metavar": "N",
            "help": "held-out inputs for the accuracy figures, sensitivity and budget",
        },
    )
    sensitivity: bool = field(
        default=False,
        metadata={
            "flag": "--sensitivity",
            "help": "rank layers by the degradation each causes when quantized alone",
        },
    )
    accuracy_budget: float | None = field(  # max top-1 agreement drop vs FP32, in points
        default=None,
        metadata={
            "flag": "--accuracy-budget",
            "range": (0, 100),
            "metavar": "POINTS",
            "help": "leave the most sensitive layers in FP16 until the top-1 agreement with FP32 "
            "drops by at most POINTS",
        },
    )

    no_speed: bool = field(
        default=False,
        metadata={
            "flag": "--no-speed",
            "help": "skip timing the quantized graph against FP32 on the runtime at hand (a few seconds)",
        },
    )
    speed_search: bool = field(
        default=False,
        metadata={
            "flag": "--speed-search",
            "help": "keep each region's Q/DQ (a stage's layers, the attention products) only where the "
            "runtime at hand runs the model measurably faster with it and the accuracy holds",
        },
    )

    def __post_init__(self) -> None:
        paths_of(self, "data", "cache")
        if self.method not in METHODS:
            raise OptionsError(f"calibration method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.attention_qdq not in ATTENTION_QDQ:
            raise OptionsError(f"--attention-qdq must be one of {', '.join(ATTENTION_QDQ)}, not {self.attention_qdq!r}")
        if self.qdq_base is not None and self.qdq_base not in QDQ_BASES:
            raise OptionsError(f"qdq_base must be fp16 or fp32, not {self.qdq_base!r}")
        if not PERCENTILE_RANGE[0] < self.percentile <= PERCENTILE_RANGE[1]:
            raise OptionsError(
                f"--calib-percentile must be above {PERCENTILE_RANGE[0]:g} and at most "
                f"{PERCENTILE_RANGE[1]:g} (the share of |x| values kept in range), not {self.percentile:g}"
            )
        if self.residual_qdq not in RESIDUAL_QDQ:
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

    def base(self, shape: Target) -> str:
        """The float type of the layers left unquantized: ``qdq_base``, else the target's."""
        return self.qdq_base or shape.base

    def quantizes_attention(self, shape: Target) -> bool:
        """Whether the attention products get Q/DQ: ``attention_qdq``, ``auto`` the target's default."""
        return shape.attention if self.attention_qdq == "auto" else self.attention_qdq == "on"

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
