"""The export pipeline: model -> deploy form -> ONNX -> validation -> files.

``export_model(ExportOptions(...))`` is the Python twin of ``fastervit-export``: it writes
``<output_dir>/<model>_<precision>.onnx`` and a JSON report beside it. FP32 and FP16 are
validated against PyTorch here, and ``ValidationError`` is raised (after writing both, so
they can be inspected) when the ONNX graph does not reproduce PyTorch within tolerance;
INT8 and FP8 go through ``quantized.export_quantized`` (calibration, Q/DQ, accuracy).
"""

from __future__ import annotations

from typing import TextIO

from ..calibration.options import CalibrationOptions
from ..errors import OptionsError, ValidationError
from ..graph.ort_cpu import release_memory
from ..graph.ort_eval import eval_chunk, output_sizes
from ..graph.timing import Timer
from ..graph.weights import scratch
from ..preprocess import TransformOptions
from ..progress import Steps
from .fp16 import convert_to_fp16, find_fp16_overflows
from .quantized import export_quantized
from .stages import (
    ExportOptions,
    ExportResult,
    export_metadata,
    preflight,
    publish_onnx,
    trace_model,
    validate,
    write_onnx,
    write_report,
)

__all__ = [
    "CalibrationOptions",
    "ExportOptions",
    "ExportResult",
    "TransformOptions",
    "ValidationError",
    "export_model",
]


def export_model(
    options: ExportOptions,
    stream: TextIO | None = None,
    calibration: CalibrationOptions | None = None,
    timer: Timer | None = None,
) -> ExportResult:
    """Run the whole export at ``options.precision``; progress goes to ``stream`` (None:
    silent). INT8 and FP8 are calibrated as ``calibration`` says (default settings if None)
    and timed on ``timer`` (default: ONNX Runtime's CPU provider)."""
    if options.quantized:
        return export_quantized(options, calibration or CalibrationOptions(), stream, timer)
    if calibration is not None:
        raise OptionsError(f"calibration settings apply to int8 / fp8 exports, not {options.precision}")
    plan = preflight(options)
    steps = Steps(6 if options.precision == "fp16" else 5, stream)
    with scratch(options.output_dir) as weights:
        traced = trace_model(options, plan, steps, weights)
        graph, kept_fp32, sizes = traced.graph, [], output_sizes(traced.graph)
        if options.precision == "fp16":
            with steps.step("converting to strongly typed FP16"):
                kept_fp32 = find_fp16_overflows(graph, traced.inputs, weights, eval_chunk(traced.inputs))
                graph = convert_to_fp16(graph, keep_fp32=kept_fp32, io_dtype=options.io_dtype, weights=weights)
                release_memory()  # the probe session's buffers, before validation runs its own
        metadata = export_metadata(traced, options, kept_fp32)
        staged_onnx = weights.folder / options.onnx_path.name
        with steps.step(f"writing {options.onnx_path}"):
            summary, view = write_onnx(graph, metadata, staged_onnx, weights, options.external_data_threshold)
            del graph
        with steps.step("validating with ONNX Runtime against PyTorch"):
            validation = validate(traced.reference, view, traced.inputs, options.precision, sizes)
            validation["inputs"] = traced.input_kind
        publish_onnx(staged_onnx, options.onnx_path)
    report = write_report(options, metadata, summary, steps, validation=validation)
    if not validation["passed"]:
        raise ValidationError(f"{options.onnx_path}: {validation['verdict']}; see {options.report_path}")
    return ExportResult(options.onnx_path, options.report_path, report)
