"""INT8 and FP8 export: FP32 graph -> calibration (or a reused cache) -> Q/DQ ONNX + cache.

``export_quantized(ExportOptions(precision="int8" | "fp8", ...), CalibrationOptions(...))`` (or
``export_model`` with the same arguments) writes
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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
from onnx import TensorProto

from ..artifacts import write_json
from ..calibration.cache import (
    CalibrationCache,
    CalibrationCacheError,
    changed_settings,
    installed_trt_version,
    means_path,
    read_means,
    record_path,
    recorded_settings,
    version_number,
    write_means,
)
from ..calibration.collect import ChannelMeans, collect_histograms
from ..calibration.dataset import DEFAULT_DATA, CalibrationData, StoredInputs
from ..calibration.options import CalibrationOptions
from ..calibration.qdq import (
    QDQ_MIN_OPSET,
    Placement,
    attention_products,
    input_channel_axes,
    placement,
    scale_of,
    to_opset,
)
from ..calibration.ranges import compute_amax
from ..calibration.sensitivity import Evaluator, layer_sensitivity, mixed_precision
from ..calibration.speed_search import speed_search
from ..compare import compare, compare_outputs
from ..errors import EngineBuildError, EngineError, ModelFileError, OptionsError
from ..flags import to_argv
from ..graph.ort_cpu import release_memory
from ..graph.ort_eval import QDQ_CHUNK, ort_logits, output_sizes
from ..graph.timing import OnnxRuntimeCpuTimer, Timer, compare_speed
from ..graph.weights import WeightFile, scratch
from ..preprocess import TRANSFORM_SETTINGS, Preprocess
from ..progress import Steps
from ..quant_formats import TARGETS, QuantFormat, Target, quant_format
from ..quant_formats import target as graph_target
from ..sidecar import export_command
from .fp16 import convert_to_fp16
from .stages import (
    ExportOptions,
    ExportResult,
    Plan,
    Traced,
    export_metadata,
    preflight,
    publish_onnx,
    trace_model,
    write_onnx,
    write_report,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """What the checks before any work settled: the format, the export's plan, and the
    calibration cache with whether it is reused and the settings it is recorded with."""

    options: ExportOptions
    calib: CalibrationOptions
    quant: QuantFormat
    shape: Target  # the runtime the graph is shaped for
    plan: Plan
    cache_path: Path
    reuse: bool
    settings: dict
    skipped: list[Path] = field(default_factory=list)  # unreadable calibration files: one count per export


@dataclass(frozen=True)
class _Ranges:
    """The activation ranges (a reused or a new cache) and the quantized layers' input means."""

    cache: CalibrationCache
    means: dict[str, np.ndarray] | None  # measured, or read beside a reused cache
    corrections: dict[str, np.ndarray] | None  # the means bias correction applies (None: none)
    inputs_seen: int  # calibration inputs read (0: reused)
    data: str | None  # where they came from (None: reused)


@dataclass(frozen=True)
class _Placed:
    """Where the Q/DQ goes: the default placement less the layers mixed precision leaves in
    float, the evaluator over the base graph, and the sensitivity sections of the report."""

    sites: Placement
    base: onnx.ModelProto
    evaluator: Evaluator
    excluded: frozenset[str]
    sections: dict


@dataclass(frozen=True)
class _Staged:
    """The Q/DQ ONNX written to the scratch folder, not yet published."""

    path: Path
    view: Path  # the same graph on the scratch weights
    summary: dict
    metadata: dict


def export_quantized(
    options: ExportOptions,
    calib: CalibrationOptions = CalibrationOptions(),
    stream: TextIO | None = None,
    timer: Timer | None = None,
) -> ExportResult:
    """Export ``options.model`` as a calibrated INT8 or FP8 (``options.precision``) Q/DQ ONNX
    plus its calibration cache, timed against FP32 on ``timer``'s runtime (default: ONNX
    Runtime's CPU provider) unless ``calib.no_speed``."""
    job = _settle(options, calib)
    timer = timer or OnnxRuntimeCpuTimer()
    budget = calib.accuracy_budget is not None
    steps = Steps(7 + (calib.sensitivity or budget) + budget + calib.speed_search + (not calib.no_speed), stream)
    with scratch(options.output_dir) as store:
        heldout, heldout_data = _heldout_inputs(calib, job.plan.preprocess, store.folder / "heldout.npy", job.skipped)
        traced = trace_model(options, job.plan, steps, store, probes={"heldout": heldout})
        sites = placement(
            traced.graph,
            job.quant.name,
            residuals=calib.quantizes_residuals(bool(options.features)),
            target=job.shape.name,
            attention=calib.quantizes_attention(job.shape),
        )
        fp32_path = store.save_view(traced.graph, "fp32.onnx")
        ranges = _ranges(job, traced.graph, sites, fp32_path, steps, stream)
        placed = _place(job, traced.graph, sites, ranges, fp32_path, heldout, store, steps, stream)
        if calib.speed_search:
            placed = _search_speed(job, placed, fp32_path, timer, store, steps, stream)
        staged = _write_qdq(job, traced, placed, ranges, store, steps)
        kind = heldout_data.describe() if heldout_data else "seeded random inputs"  # after both splits' skips
        accuracy = _measure(job, traced, placed, staged, kind, steps)
        speed = None if calib.no_speed else _speed(job, fp32_path, staged.view, timer, steps)
        _publish(job, ranges, staged)
    sections = {**placed.sections, **({"speed": speed} if speed else {})}
    report = write_report(options, staged.metadata, staged.summary, steps, accuracy=accuracy, **sections)
    return ExportResult(options.onnx_path, options.report_path, report)


def _settle(options: ExportOptions, calib: CalibrationOptions) -> _Job:
    """Every check before any work: the options the format or a backbone refuses, the export's
    plan, and whether the calibration cache is reused (only if made with these settings)."""
    if not options.quantized:
        raise OptionsError(f"export_quantized exports int8 or fp8, not {options.precision!r}")
    quant, shape = quant_format(options.precision), graph_target(options.target)
    if shape.base == "fp32" and calib.qdq_base == "fp16":
        raise OptionsError(
            f"--target {shape.name}: {shape.label} runs FP16 layers through casts, so its graph keeps FP32 "
            "around the Q/DQ; drop --qdq-base fp16"
        )
    if not shape.residuals and calib.residual_qdq == "on":
        raise OptionsError(
            f"--residual-qdq on is TensorRT's residual fusion; {shape.label} runs the Add in float either "
            "way: drop the flag"
        )
    if not quant.quantizes_residuals and calib.residual_qdq == "on":
        raise OptionsError(
            f"--residual-qdq on is for INT8: {quant.label} keeps residual inputs in FP16 (quantized, "
            "they cost accuracy); drop the flag"
        )
    if options.features and calib.accuracy_budget is not None:
        raise OptionsError(
            "--accuracy-budget is a top-1 agreement drop: a backbone has no classes; "
            "rank its layers by feature cosine with --sensitivity instead"
        )
    cache_path = calib.cache_path(options)
    reuse = cache_path.is_file() and not calib.recalibrate
    plan = preflight(
        options, () if cache_path.is_file() else (cache_path, record_path(cache_path), means_path(cache_path))
    )
    variant, preprocess = plan.variant, plan.preprocess
    settings = {
        "model": variant.name,
        "resolution": list(variant.arch.resolution),
        "num_classes": variant.arch.num_classes,
        **calib.record(),
        "target": shape.name,  # the tensors calibrated: a target quantizes layer outputs, attention
        "attention": calib.quantizes_attention(shape),
        "preprocess": preprocess.record(),  # scales made under another transform are never reused
    }
    changed = changed_settings(cache_path, settings) if reuse else None
    if changed:
        reuse_it = _reuse_command(options, calib, recorded_settings(cache_path), settings)
        raise CalibrationCacheError(
            f"{cache_path}: calibrated with other settings ({changed}); pass --recalibrate to replace it, or "
            f"the flags it was made with to reuse it: {reuse_it}"
        )
    return _Job(options, calib, quant, shape, plan, cache_path, reuse, settings)


# a cache record's settings -> the flag that sets them (the transform's: its fields' own flags)
CACHE_FLAGS = {
    "method": "--calib-method",
    "percentile": "--calib-percentile",
    "data": "--calib-data",
    "images": "--calib-images",
    "batch": "--calib-batch",
    "target": "--target",
    "attention": "--attention-qdq",
}


def _reuse_command(options: ExportOptions, calib: CalibrationOptions, made: dict, asked: dict) -> str:
    """This export's command with the settings a cache was made with (``made``, its record) where
    they differ from those ``asked``: every other option kept, as ``export_command`` keeps them."""
    changes: dict[str, list[str] | None] = {}
    for key, flag in CACHE_FLAGS.items():
        if key in made and made[key] != asked.get(key):
            value = made[key]
            words = None if value is None else ["on" if value else "off"] if isinstance(value, bool) else [str(value)]
            changes[flag] = words
    for name, value in (made.get("preprocess") or {}).items():
        if name in TRANSFORM_SETTINGS and value != (asked.get("preprocess") or {}).get(name):
            changes["--" + name.replace("_", "-")] = list(map(str, value)) if isinstance(value, list) else [str(value)]
    recorded = {"export_argv": to_argv(options) + to_argv(calib), "precision": options.precision}
    return export_command(recorded, options.precision, changes, options.output_dir)


def _ranges(
    job: _Job, fp32: onnx.ModelProto, sites: Placement, fp32_path: Path, steps: Steps, stream: TextIO | None
) -> _Ranges:
    """The activation ranges of ``sites``: the reused cache (checked against the graph before
    any image is read, with the means kept beside it), or histograms of the calibration inputs
    reduced to amax by the calibration method, with the quantized layers' input means."""
    calib, cache_path = job.calib, job.cache_path
    if job.reuse:
        with steps.step(f"reusing calibration cache {cache_path}"):
            cache = CalibrationCache.read(cache_path)
            graph_tensors = {t for n in fp32.graph.node for t in n.output} | {i.name for i in fp32.graph.input}
            cache.check(calib.method, sites.activations, graph_tensors, cache_path)
            means = None
            if calib.bias_correction and means_path(cache_path).is_file():
                means = read_means(means_path(cache_path))
            elif calib.bias_correction:  # made before bias correction, or by another tool
                log.warning("bias correction %s", _bias_correction(calib, None, cache_path))
        return _Ranges(cache, means, means, 0, None)
    with steps.step(f"calibrating ({calib.method}) on {calib.images} inputs from {calib.data}"):
        data = CalibrationData(calib.data, job.plan.preprocess, calib.images, skipped=job.skipped)
        channels = ChannelMeans(input_channel_axes(fp32, sites.targets))
        histograms, inputs_seen = collect_histograms(
            fp32_path, sites.activations, data, calib.batch, stream, means=channels
        )
        means = channels.means()
        bounded = set(sites.bounded(fp32))  # probabilities: by their largest value
        amax = {
            name: compute_amax(h, "minmax" if name in bounded else calib.method, calib.percentile)
            for name, h in histograms.items()
        }
        cache = CalibrationCache(
            {name: float(scale_of(a)) for name, a in amax.items()},
            calib.method,
            version_number(*installed_trt_version()),
        )
        release_memory()  # the calibration sessions' buffers, before the next inference
    return _Ranges(cache, means, means if calib.bias_correction else None, inputs_seen, data.describe())


def _place(
    job: _Job,
    fp32: onnx.ModelProto,
    sites: Placement,
    ranges: _Ranges,
    fp32_path: Path,
    heldout: StoredInputs,
    store: WeightFile,
    steps: Steps,
    stream: TextIO | None,
) -> _Placed:
    """The base graph the Q/DQ goes over (at the format's opset; FP16 unless ``qdq_base`` is
    fp32), its evaluator against the FP32 graph's held-out outputs, and, with ``--sensitivity``
    or ``--accuracy-budget``, each layer's sensitivity and the layers left in float."""
    calib = job.calib
    base = to_opset(fp32, job.quant.min_opset)
    if calib.base(job.shape) == "fp16":
        base = convert_to_fp16(
            to_opset(base, QDQ_MIN_OPSET[TensorProto.FLOAT16]), io_dtype=job.options.io_dtype, weights=store
        )
    reference = ort_logits(fp32_path, heldout)
    release_memory()  # that session's freed buffers, before the quantized graphs run
    evaluator = Evaluator(
        base,
        sites.targets,
        ranges.cache.amax,
        store.arrays(fp32),
        heldout,
        reference,
        store,
        job.quant.name,
        output_sizes(fp32),
        sites.residuals,
        ranges.corrections,
        sites.attention,
        sites.outputs,
        job.shape.name,
    )
    sections: dict = {}
    excluded: frozenset[str] = frozenset()
    if calib.sensitivity or calib.accuracy_budget is not None:
        with steps.step(f"measuring the sensitivity of {len(sites.targets)} layers"):
            sections["sensitivity"] = layer_sensitivity(evaluator, stream)
    if calib.accuracy_budget is not None:
        with steps.step(
            f"choosing layers to keep in {calib.base(job.shape).upper()} (budget {calib.accuracy_budget} points)"
        ):
            sections["mixed_precision"] = mixed_precision(
                evaluator, [row["layer"] for row in sections["sensitivity"]], calib.accuracy_budget
            )
            excluded = frozenset(sections["mixed_precision"]["excluded"])
    return _Placed(sites, base, evaluator, excluded, sections)


def _write_qdq(job: _Job, traced: Traced, placed: _Placed, ranges: _Ranges, store: WeightFile, steps: Steps) -> _Staged:
    """The Q/DQ graph, with its metadata, written to the scratch folder (and freed)."""
    options = job.options
    with steps.step(f"inserting Q/DQ over the {job.calib.base(job.shape).upper()} graph for {job.shape.label}"):
        quantized = placed.evaluator.quantized(skip=placed.excluded)
    metadata = export_metadata(traced, options, [])
    metadata["export_argv"] += to_argv(job.calib)
    qdq_nodes = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in quantized.graph.node)
    metadata["quantization"] = _quantization(job, placed, ranges, qdq_nodes)
    staged = store.folder / options.onnx_path.name
    with steps.step(f"writing {options.onnx_path}"):
        summary, view = write_onnx(quantized, metadata, staged, store, options.external_data_threshold)
        del quantized
    return _Staged(staged, view, summary, metadata)


def _quantization(job: _Job, placed: _Placed, ranges: _Ranges, qdq_nodes: int) -> dict:
    """The metadata's ``quantization`` record."""
    calib, sites, excluded = job.calib, placed.sites, placed.excluded
    return {
        "format": job.quant.name,
        "method": calib.method,
        "target": job.shape.name,
        "qdq_base": calib.base(job.shape),
        "layers": len(sites.targets) - len(excluded),
        "attention_products": sum(a.node not in excluded for a in sites.attention),
        "attention_products_in_graph": len(attention_products(placed.base)),
        "layer_outputs": sum(placed.evaluator.producer.get(o) not in excluded for o in sites.outputs),
        "layers_left_in_float": sorted(excluded),
        "kept_in_float_by_default": sites.kept,
        "residual_inputs": sum(r.conv not in excluded for r in sites.residuals),
        "bias_correction": _bias_correction(calib, ranges.corrections, job.cache_path),
        "activation_tensors": len(sites.activations),
        "qdq_nodes": qdq_nodes,
        "cache": str(job.cache_path),
        "cache_reused": job.reuse,
        "calibration_inputs": ranges.inputs_seen,
        "calibration_data": None if job.reuse else str(calib.data),
        "calibration_inputs_from": ranges.data,
    }


def _measure(job: _Job, traced: Traced, placed: _Placed, staged: _Staged, heldout_kind: str, steps: Steps) -> dict:
    """The report's ``accuracy``: the written graph (and the FP16 base) against FP32 on the
    held-out inputs."""
    fp16 = job.calib.base(job.shape) == "fp16"
    with steps.step(f"measuring {job.quant.name.upper()} against FP32 on held-out inputs"):
        accuracy = _accuracy(
            traced.probe_references["heldout"],
            placed.evaluator,
            staged.view,
            heldout_kind,
            placed.evaluator.measure(placed.base) if fp16 else None,
            int8_kernels=job.quant.ort_optimizes and not fp16,
        )
        accuracy["attention"] = _attention_fidelity(job, placed, accuracy)
    return accuracy


def _attention_fidelity(job: _Job, placed: _Placed, accuracy: dict) -> dict:
    """Whether the attention products are quantized and, when they are, the logit cosine
    without their Q/DQ beside the written graph's: what quantizing them costs."""
    products = [a.node for a in placed.sites.attention if a.node not in placed.excluded]
    record: dict = {"quantized": bool(products), "products": len(products), "choice": job.calib.attention_qdq}
    if not products:
        return {**record, "note": "attention products in float (--attention-qdq on quantizes them)"}
    without = placed.evaluator.measure(placed.evaluator.quantized(skip=placed.excluded | set(products)))
    plain = accuracy.get("quantized_vs_fp32_qdq_arithmetic") or {}
    with_cosine = plain.get("mean_cosine") if isinstance(plain.get("mean_cosine"), float) else None
    return {**record, "mean_cosine_with": with_cosine, "mean_cosine_without": without["mean_cosine"]}


def _speed(job: _Job, fp32_path: Path, quantized: Path, timer: Timer, steps: Steps) -> dict:
    """The quantized graph timed against FP32 on ``timer``'s runtime, interleaved, at the
    profile's MIN (batch 1 unless ``--batch`` says otherwise) and OPT; a WARNING naming the option that makes a faster graph when it is
    slower."""
    name, batches = job.quant.label, job.options.batch[:2]  # the profile's MIN (1 by default) and OPT
    preprocess = job.plan.preprocess
    with steps.step(f"timing {name} against FP32 on {timer.runtime}"):
        try:
            report = compare_speed(
                timer,
                {"fp32": fp32_path, job.quant.name: quantized},
                batches,
                preprocess.input_shape,
                preprocess.input_dtype,
            )
        except (EngineBuildError, EngineError, ModelFileError) as exc:  # the graph is still written
            log.warning("speed not measured on %s: %s", timer.runtime, exc)
            return {"runtime": timer.runtime, "summary": f"not measured on {timer.runtime}: {exc}", "error": str(exc)}
    record = report.as_dict("fp32")
    ratios = {b: report.ratio(job.quant.name, "fp32", b) for b in report.seconds}
    record["summary"] = (
        f"{name} "
        + ", ".join(f"{ratio:.2f}x FP32 at batch {b}" for b, ratio in ratios.items())
        + f" on {report.runtime}, median of {report.repeats}"
    )
    record["slower_than_fp32"] = min(ratios.values()) < 1.0
    if record["slower_than_fp32"]:
        record["faster_graph"] = faster_graph_hint(job.shape.name, timer.kind)
        log.warning(
            "%s runs slower than FP32 on %s (%s); %s",
            name,
            report.runtime,
            ", ".join(f"{r:.2f}x at batch {b}" for b, r in ratios.items()),
            record["faster_graph"],
        )
    return record


def faster_graph_hint(graph_target_name: str, runtime_kind: str) -> str:
    """The option that makes a faster graph for the runtime that timed one of ``graph_target_name``."""
    if runtime_kind != graph_target_name and runtime_kind in TARGETS:
        return f"a graph for this runtime: fastervit-export --precision int8 --target {runtime_kind}"
    if runtime_kind == "onnxruntime-cpu":
        return (
            "ONNX Runtime's int8 kernels gain nothing on this model and CPU (without VNNI they rarely do): "
            "--speed-search keeps only the regions that run faster, or serve the FP32 graph here"
        )
    return "--speed-search keeps Q/DQ only where the engine runs faster"


def _search_speed(
    job: _Job, placed: _Placed, fp32_path: Path, timer: Timer, store: WeightFile, steps: Steps, stream: TextIO | None
) -> _Placed:
    """``--speed-search``: each region's Q/DQ kept only where ``timer``'s runtime runs the
    model measurably faster with it (``calibration.speed_search``)."""
    with steps.step(f"searching the Q/DQ regions that run faster on {timer.runtime}"):
        try:
            found = speed_search(
                placed.evaluator,
                timer,
                store,
                placed.excluded,
                job.options.batch[1],
                job.plan.preprocess.input_shape,
                job.plan.preprocess.input_dtype,
                fp32_path,
                stream,
            )
        except (EngineBuildError, EngineError, ModelFileError) as exc:  # the fixed placement stands
            log.warning("--speed-search could not time on %s: %s; the fixed placement is kept", timer.runtime, exc)
            return placed
    sections = {**placed.sections, "speed_search": found.record}
    return _Placed(placed.sites, placed.base, placed.evaluator, placed.excluded | found.dropped, sections)


def _publish(job: _Job, ranges: _Ranges, staged: _Staged) -> None:
    """A new cache (with its means and settings record), then the ONNX moved into place: only
    after the last measurement, so an interrupted run leaves no cache without its model."""
    if not job.reuse:
        write_means(means_path(job.cache_path), ranges.means or {})
        ranges.cache.write(job.cache_path)
        write_json(record_path(job.cache_path), {**job.settings, "inputs_seen": ranges.inputs_seen})
    publish_onnx(staged.path, job.options.onnx_path)


def _bias_correction(calib: CalibrationOptions, means: dict[str, np.ndarray] | None, cache: Path) -> str:
    """What the report says of bias correction."""
    if not calib.bias_correction:
        return "off (--bias-correction off)"
    if means is None:
        return (
            f"off: the reused cache has no {means_path(cache).name} (made before bias correction, or by "
            "another tool); --recalibrate measures the means"
        )
    return "on"


def _heldout_inputs(
    calib: CalibrationOptions, preprocess: Preprocess, path: Path, skipped: list[Path]
) -> tuple[StoredInputs, CalibrationData | None]:
    """Held-out images (or crops) of the calibration folder; of the shipped photos when the
    calibration data is a .npy (its own inputs would hide a wrongly scaled array) or a reused
    cache comes without images; seeded random inputs (no data: None) when neither exists.
    Stored in ``path`` and read back a slice at a time; unreadable files go to ``skipped``."""
    source = calib.data if calib.data.is_dir() else DEFAULT_DATA
    if not source.exists():
        rng = np.random.default_rng(0)
        samples = (
            rng.integers(0, 256, preprocess.input_shape, dtype=np.uint8).astype(preprocess.input_dtype)
            if preprocess.input_format != "float"
            else rng.standard_normal(preprocess.input_shape, dtype=np.float32)
            for _ in range(calib.heldout)
        )
        return StoredInputs(path, samples, calib.heldout), None
    data = CalibrationData(source, preprocess, calib.heldout, split="heldout", skipped=skipped)
    return StoredInputs(path, (data.sample(i) for i in range(len(data))), len(data)), data


def _accuracy(
    pytorch_logits: np.ndarray, evaluator: Evaluator, path: Path, kind: str, fp16: dict | None, int8_kernels: bool
) -> dict:
    """Quantized vs FP32 outputs: ONNX Runtime plain Q/DQ arithmetic (the TensorRT estimate)
    and, with ``int8_kernels`` (INT8 logits over an FP32 base: ONNX Runtime fuses no int8
    kernels over FP16 or for FP8), its CPU int8 kernels; the FP16 base graph; and the FP32
    graph against PyTorch. A backbone's feature maps are compared one by one (cosine; they
    have no top-1)."""
    inputs, reference, name = evaluator.inputs, evaluator.reference, evaluator.fmt.upper()
    quantized = ort_logits(path, inputs, optimize=False, images=QDQ_CHUNK)
    fp32_vs_pytorch = compare(pytorch_logits, reference)  # ``reference`` is the FP32 graph's outputs
    fp16_cosine = f"; FP16 vs FP32: mean cosine {fp16['mean_cosine']:.5f}" if fp16 else ""
    record = {
        "inputs": kind,
        "count": len(inputs),
        "format": evaluator.fmt,
        "fp16_vs_fp32": fp16,
        "fp32_vs_pytorch": fp32_vs_pytorch.as_dict(),
    }
    if evaluator.feature_maps:
        each = compare_outputs(reference, quantized, evaluator.sizes or {})
        return {
            **record,
            "quantized_vs_fp32_qdq_arithmetic": {n: c.as_dict() for n, c in each.items()},
            "summary": (
                f"{name} vs FP32 on {len(inputs)} {kind}, mean cosine per feature map: "
                + ", ".join(f"{n} {c.mean_cosine:.5f}" for n, c in each.items())
                + f" (min {min(c.min_cosine for c in each.values()):.5f})"
                + fp16_cosine
            ),
        }
    plain = compare(reference, quantized)
    kernels = compare(reference, ort_logits(path, inputs, optimize=True, images=QDQ_CHUNK)) if int8_kernels else None
    kernels_text = f"; with ONNX Runtime's CPU int8 kernels: mean cosine {kernels.mean_cosine:.5f}" if kernels else ""
    fp16_text = f"{fp16_cosine}, top-1 agreement {fp16['top1_agreement'] / 100:.1%}" if fp16 else ""
    return {
        **record,
        "quantized_vs_fp32_qdq_arithmetic": plain.as_dict(),
        "quantized_vs_fp32_ort_int8_kernels": kernels.as_dict() if kernels else None,
        "summary": (
            f"{name} vs FP32 on {len(inputs)} {kind}: mean cosine {plain.mean_cosine:.5f} "
            f"(min {plain.min_cosine:.5f}), top-1 agreement {plain.top1_agreement:.1%}" + kernels_text + fp16_text
        ),
    }
