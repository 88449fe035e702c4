"""INT8 and FP8 export: FP32 graph -> calibration (or a reused cache) -> Q/DQ ONNX + cache.

``export_quantized(ExportOptions(precision="int8" | "fp8", ...), CalibrationOptions(...))`` writes
- ``<model>_<precision>.onnx``: explicit quantization (Q/DQ; int8, or FP8 E4M3 with scales
  amax / 448) over the FP16 graph, so the layers left unquantized run in FP16 under
  TensorRT's strong typing (``qdq_base="fp32"`` puts the Q/DQ over the FP32 graph instead,
  for accuracy debugging and ONNX Runtime on CPU);
- ``<model>_<precision>.cache``: the activation ranges as a TensorRT calibration cache
  (amax / 127, TensorRT's format), reused on the next run (checked against the graph
  before any image is read), with ``<cache>.json`` (the settings it was made with) and
  ``<cache>.means.npz`` (the quantized layers' per-channel input means, for bias correction:
  NumPy arrays ``names``, ``sizes`` and ``means``, the means of each name in turn);
- ``<model>_<precision>.report.json``: the report, with the accuracy against FP32 on
  held-out inputs.
"""
from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from onnx import TensorProto

from ..artifacts import paths_of, write_bytes, write_json
from ..compare import compare, compare_outputs
from ..errors import FasterViTTRTError
from ..export.fp16 import convert_to_fp16
from ..export.ort_cpu import release_memory
from ..export.pipeline import (QDQ_CHUNK, ExportOptions, ExportResult, export_metadata, ort_logits, output_sizes,
                               preflight, publish_onnx, trace_model, write_onnx, write_report)
from ..export.weights import scratch
from ..preprocess import Preprocess
from ..progress import Steps
from .cache import CalibrationCache, CalibrationCacheError, installed_trt_version, version_number
from .collect import ChannelMeans, collect_histograms
from .dataset import DEFAULT_DATA, CalibrationData, StoredInputs
from .qdq import FP8_MIN_OPSET, QDQ_MIN_OPSET, QMAX, input_channel_axes, placement, scale_of, to_opset
from .ranges import METHODS, compute_amax
from .sensitivity import Evaluator, layer_sensitivity, mixed_precision

log = logging.getLogger(__name__)


PERCENTILE_RANGE = (50.0, 100.0)  # exclusive, inclusive


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
            raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.qdq_base not in ("fp16", "fp32"):
            raise ValueError(f"qdq_base must be fp16 or fp32, not {self.qdq_base!r}")
        if not PERCENTILE_RANGE[0] < self.percentile <= PERCENTILE_RANGE[1]:
            raise ValueError(f"--calib-percentile must be above {PERCENTILE_RANGE[0]:g} and at most "
                             f"{PERCENTILE_RANGE[1]:g} (the share of |x| values kept in range), not {self.percentile:g}")
        if self.residual_qdq not in ("auto", "on", "off"):
            raise ValueError(f"--residual-qdq must be auto, on or off, not {self.residual_qdq!r}")
        if self.heldout < 1:
            raise ValueError(f"--calib-heldout must be at least 1, not {self.heldout}")
        if self.images < 1 or self.batch < 1:
            raise ValueError("--calib-images and --calib-batch must be positive")
        if self.accuracy_budget is not None and not 0 <= self.accuracy_budget <= 100:
            raise ValueError("--accuracy-budget is a top-1 agreement drop in points, between 0 and 100")

    def quantizes_residuals(self, features: bool) -> bool:
        """Whether INT8 residual inputs get Q/DQ: ``auto`` for a classifier, not a backbone."""
        return self.residual_qdq == "on" or (self.residual_qdq == "auto" and not features)

    def cache_path(self, options: ExportOptions) -> Path:
        return self.cache or options.onnx_path.with_suffix(".cache")

    def record(self) -> dict:
        """The flags that decide the scales, as written beside a cache (``<cache>.json``)."""
        return {"method": self.method, "percentile": self.percentile if self.method == "percentile" else None,
                "data": str(self.data.resolve()), "images": self.images, "batch": self.batch}


def record_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def means_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".means.npz")


def write_means(path: Path, means: dict[str, np.ndarray]) -> None:
    names = sorted(means)
    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(names), sizes=np.array([means[n].size for n in names], np.int64),
             means=np.concatenate([means[n].ravel() for n in names]) if names else np.zeros(0))
    write_bytes(path, buffer.getvalue())


def read_means(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as stored:
            names, sizes, values = stored["names"], stored["sizes"], stored["means"]
        if len(names) != len(sizes) or int(sizes.sum()) != values.size:
            raise ValueError("names, sizes and means do not match")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise CalibrationCacheError(f"{path}: not a channel-means file of this toolkit ({exc}); delete it "
                                    "and pass --recalibrate, or --bias-correction off") from None
    return dict(zip((str(n) for n in names), np.split(values, np.cumsum(sizes)[:-1])))


def _changed_settings(cache: Path, settings: dict) -> str | None:
    """How ``settings`` differ from those recorded beside ``cache`` (None: same, or no record)."""
    try:
        made = json.loads(record_path(cache).read_text())
    except (OSError, ValueError):
        return None
    changed = [f"{key} {made.get(key)!r} -> {value!r}" for key, value in settings.items() if made.get(key) != value]
    return ", ".join(changed) or None


def export_quantized(options: ExportOptions, calib: CalibrationOptions = CalibrationOptions(),
                     stream: TextIO | None = None) -> ExportResult:
    """Export ``options.model`` as a calibrated INT8 or FP8 (``options.precision``) Q/DQ ONNX
    plus its calibration cache."""
    if options.precision not in QMAX:
        raise ValueError(f"export_quantized exports int8 or fp8, not {options.precision!r}")
    fmt = options.precision
    if fmt == "fp8" and calib.residual_qdq == "on":
        raise FasterViTTRTError("--residual-qdq on is for INT8: FP8 keeps residual inputs in FP16 (in E4M3 "
                                "they cost accuracy); drop the flag")
    if options.features and calib.accuracy_budget is not None:
        raise FasterViTTRTError("--accuracy-budget is a top-1 agreement drop: a backbone has no classes; "
                                "rank its layers by feature cosine with --sensitivity instead")
    cache_path = calib.cache_path(options)
    reuse = cache_path.is_file() and not calib.recalibrate
    variant = preflight(options, () if cache_path.is_file()
                        else (cache_path, record_path(cache_path), means_path(cache_path)))
    settings = {"model": variant.name, "resolution": list(variant.arch.resolution), **calib.record(),
                "jpeg_draft": not options.exact_preprocess, "input_format": options.input_format}
    changed = _changed_settings(cache_path, settings) if reuse else None
    if changed:
        raise CalibrationCacheError(f"{cache_path}: calibrated with other settings ({changed}); pass the "
                                    "same flags to reuse it, or --recalibrate to replace it")
    budget = calib.accuracy_budget is not None
    steps = Steps(7 + (calib.sensitivity or budget) + budget, stream)
    preprocess = options.preprocess(variant)
    with scratch(options.output_dir) as store:
        heldout, heldout_kind = _heldout_inputs(calib, preprocess, store.folder / "heldout.npy")
        traced = trace_model(options, steps, store, probes={"heldout": heldout})
        fp32 = traced.graph
        placed = placement(fp32, fmt, residuals=calib.quantizes_residuals(bool(options.features)))
        targets, activations = placed.targets, placed.activations
        fp32_path = store.save_view(fp32, "fp32.onnx")
        means: dict[str, np.ndarray] | None = None
        if reuse:
            with steps.step(f"reusing calibration cache {cache_path}"):
                cache = CalibrationCache.read(cache_path)
                graph_tensors = {t for n in fp32.graph.node for t in n.output} | {i.name for i in fp32.graph.input}
                cache.check(calib.method, activations, graph_tensors, cache_path)
                images_seen = 0
                if calib.bias_correction and means_path(cache_path).is_file():
                    means = read_means(means_path(cache_path))
                elif calib.bias_correction:  # made before bias correction, or by another tool
                    log.warning("bias correction %s", _bias_correction(calib, None, cache_path))
        else:
            with steps.step(f"calibrating ({calib.method}) on {calib.images} inputs from {calib.data}"):
                data = CalibrationData(calib.data, preprocess, calib.images)
                channels = ChannelMeans(input_channel_axes(fp32, targets))
                histograms, images_seen = collect_histograms(fp32_path, activations, data, calib.batch, stream,
                                                             means=channels)
                means = channels.means()
                amax = {name: compute_amax(h, calib.method, calib.percentile) for name, h in histograms.items()}
                cache = CalibrationCache({name: float(scale_of(a)) for name, a in amax.items()},
                                         calib.method, version_number(*installed_trt_version()))
                release_memory()  # the calibration sessions' buffers, before the next inference
        base = fp32 if fmt == "int8" else to_opset(fp32, FP8_MIN_OPSET)
        if calib.qdq_base == "fp16":
            base = convert_to_fp16(to_opset(base, QDQ_MIN_OPSET[TensorProto.FLOAT16]),
                                   io_dtype=options.io_dtype, weights=store)
        reference = ort_logits(fp32_path, heldout)
        release_memory()  # that session's freed buffers, before the quantized graphs run
        corrected = means if calib.bias_correction else None
        evaluator = Evaluator(base, targets, cache.amax, store.arrays(fp32), heldout,
                              reference, store, fmt, output_sizes(fp32), placed.residuals, corrected)
        sections: dict = {}
        excluded: set[str] = set()
        if calib.sensitivity or calib.accuracy_budget is not None:
            with steps.step(f"measuring the sensitivity of {len(targets)} layers"):
                sections["sensitivity"] = layer_sensitivity(evaluator, stream)
        if calib.accuracy_budget is not None:
            with steps.step(f"choosing layers to keep in {calib.qdq_base.upper()} (budget "
                            f"{calib.accuracy_budget} points)"):
                sections["mixed_precision"] = mixed_precision(
                    evaluator, [row["layer"] for row in sections["sensitivity"]], calib.accuracy_budget)
                excluded = set(sections["mixed_precision"]["excluded"])
        with steps.step(f"inserting Q/DQ over the {calib.qdq_base.upper()} graph"):
            quantized = evaluator.quantized(skip=excluded)
        metadata = export_metadata(traced, options, [])
        metadata["quantization"] = {
            "format": fmt, "method": calib.method, "qdq_base": calib.qdq_base, "layers": len(targets) - len(excluded),
            "layers_left_in_float": sorted(excluded), "kept_in_float_by_default": placed.kept,
            "residual_inputs": sum(r.conv not in excluded for r in placed.residuals),
            "bias_correction": _bias_correction(calib, corrected, cache_path),
            "activation_tensors": len(activations),
            "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in quantized.graph.node),
            "cache": str(cache_path), "cache_reused": reuse, "calibration_inputs": images_seen,
            "calibration_data": None if reuse else str(calib.data),
            "calibration_inputs_from": None if reuse else data.describe(),
        }
        staged_onnx = store.folder / options.onnx_path.name
        with steps.step(f"writing {options.onnx_path}"):
            summary, view = write_onnx(quantized, metadata, staged_onnx, store, options.external_data_threshold)
            del quantized
        with steps.step(f"measuring {fmt.upper()} against FP32 on held-out inputs"):
            fp16 = calib.qdq_base == "fp16"
            accuracy = _accuracy(traced.probe_references["heldout"], evaluator, view, heldout_kind,
                                 evaluator.measure(base) if fp16 else None,
                                 int8_kernels=fmt == "int8" and not fp16)
        if not reuse:  # only now: an interrupted run leaves no cache without its model
            write_means(means_path(cache_path), means or {})
            cache.write(cache_path)
            write_json(record_path(cache_path), {**settings, "inputs_seen": images_seen})
        publish_onnx(staged_onnx, options.onnx_path)
    report = write_report(options, metadata, summary, steps, accuracy=accuracy, **sections)
    return ExportResult(options.onnx_path, options.report_path, report)


def _bias_correction(calib: CalibrationOptions, means: dict[str, np.ndarray] | None, cache: Path) -> str:
    """What the report says of bias correction."""
    if not calib.bias_correction:
        return "off (--bias-correction off)"
    if means is None:
        return (f"off: the reused cache has no {means_path(cache).name} (made before bias correction, or by "
                "another tool); --recalibrate measures the means")
    return "on"


def _heldout_inputs(calib: CalibrationOptions, preprocess: Preprocess, path: Path) -> tuple[StoredInputs, str]:
    """Held-out images (or crops) of the calibration folder; of the shipped photos when the
    calibration data is a .npy (its own inputs would hide a wrongly scaled array) or a reused
    cache comes without images; seeded random inputs when neither exists. Stored in ``path``
    and read back a slice at a time."""
    source = calib.data if calib.data.is_dir() else DEFAULT_DATA
    if not source.exists():
        rng = np.random.default_rng(0)
        samples = (rng.integers(0, 256, preprocess.input_shape, dtype=np.uint8).astype(preprocess.input_dtype)
                   if preprocess.input_format != "float" else rng.standard_normal(preprocess.input_shape, dtype=np.float32)
                   for _ in range(calib.heldout))
        return StoredInputs(path, samples, calib.heldout), "seeded random inputs"
    data = CalibrationData(source, preprocess, calib.heldout, split="heldout")
    return StoredInputs(path, (data.sample(i) for i in range(len(data))), len(data)), data.describe()


def _accuracy(pytorch_logits: np.ndarray, evaluator: Evaluator, path: Path, kind: str,
              fp16: dict | None, int8_kernels: bool) -> dict:
    """Quantized vs FP32 outputs: ONNX Runtime plain Q/DQ arithmetic (the TensorRT estimate)
    and, with ``int8_kernels`` (INT8 logits over an FP32 base: ONNX Runtime fuses no int8
    kernels over FP16 or for FP8), its CPU int8 kernels; the FP16 base graph; and the FP32
    graph against PyTorch. A backbone's feature maps are compared one by one (cosine; they
    have no top-1)."""
    inputs, reference, name = evaluator.inputs, evaluator.reference, evaluator.fmt.upper()
    quantized = ort_logits(path, inputs, optimize=False, images=QDQ_CHUNK)
    fp32_vs_pytorch = compare(pytorch_logits, reference)  # ``reference`` is the FP32 graph's outputs
    fp16_cosine = f"; FP16 vs FP32: mean cosine {fp16['mean_cosine']:.5f}" if fp16 else ""
    record = {"inputs": kind, "count": len(inputs), "format": evaluator.fmt, "fp16_vs_fp32": fp16,
              "fp32_vs_pytorch": fp32_vs_pytorch.as_dict()}
    if evaluator.feature_maps:
        each = compare_outputs(reference, quantized, evaluator.sizes)
        return {**record, "quantized_vs_fp32_qdq_arithmetic": {n: c.as_dict() for n, c in each.items()},
                "summary": (f"{name} vs FP32 on {len(inputs)} {kind}, mean cosine per feature map: "
                            + ", ".join(f"{n} {c.mean_cosine:.5f}" for n, c in each.items())
                            + f" (min {min(c.min_cosine for c in each.values()):.5f})" + fp16_cosine)}
    plain = compare(reference, quantized)
    kernels = compare(reference, ort_logits(path, inputs, optimize=True, images=QDQ_CHUNK)) \
        if int8_kernels else None
    kernels_text = f"; with ONNX Runtime's CPU int8 kernels: mean cosine {kernels.mean_cosine:.5f}" \
        if kernels else ""
    fp16_text = f"{fp16_cosine}, top-1 agreement {fp16['top1_agreement'] / 100:.1%}" if fp16 else ""
    return {**record, "quantized_vs_fp32_qdq_arithmetic": plain.as_dict(),
            "quantized_vs_fp32_ort_int8_kernels": kernels.as_dict() if kernels else None,
            "summary": (f"{name} vs FP32 on {len(inputs)} {kind}: mean cosine {plain.mean_cosine:.5f} "
                        f"(min {plain.min_cosine:.5f}), top-1 agreement {plain.top1_agreement:.1%}"
                        + kernels_text + fp16_text)}
