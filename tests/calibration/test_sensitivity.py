"""Per-layer INT8 sensitivity and the accuracy-budget search, on the trained digits fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fastervit_trt.calibration.cache import CalibrationCache
from fastervit_trt.calibration.dataset import CalibrationData
from fastervit_trt.calibration.qdq import QDQ_MIN_OPSET, placement, to_opset
from fastervit_trt.calibration.sensitivity import Evaluator, fewest_exclusions, mixed_precision
from fastervit_trt.cli import inspect_main
from fastervit_trt.export.fp16 import convert_to_fp16
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.graph.ort_eval import ort_logits
from fastervit_trt.models import get_variant
from fastervit_trt.preprocess import Preprocess

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "faster_vit_digits.pth"
BUDGET = 0.8  # points of top-1 agreement with FP32 (256 held-out inputs: 2 disagreements)


def test_bisection_finds_the_smallest_count():
    drops = [5.0, 4.0, 2.5, 1.0, 0.9, 0.2, 0.0, 0.0]
    k, trace = fewest_exclusions(list("abcdefg"), lambda excluded: drops[len(excluded)], budget=0.95)
    assert k == 4 and len(trace) <= 5
    assert fewest_exclusions(list("abc"), lambda e: 0.1, budget=0.5)[0] == 0


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, digits_folders):
    """Percentile-99 scales clip enough to cost accuracy; the budget must recover it."""
    out = tmp_path_factory.mktemp("mixed")
    return export_quantized(
        ExportOptions(model="faster_vit_digits", checkpoint=CHECKPOINT, precision="int8", output_dir=out),
        CalibrationOptions(
            data=digits_folders["train"],
            images=256,
            method="percentile",
            percentile=99.0,
            heldout=256,
            accuracy_budget=BUDGET,
        ),
    )


@pytest.mark.slow
def test_sensitivity_table(mixed):
    rows = mixed.report["sensitivity"]
    assert len(rows) == 30 and len({r["layer"] for r in rows}) == 30  # 31 layers, the head kept in FP16
    assert mixed.report["quantization"]["kept_in_float_by_default"] == ["/head/Gemm"]
    cosines = [r["mean_cosine"] for r in rows]
    assert cosines == sorted(cosines) and cosines[0] < cosines[-1] <= 1.0


@pytest.mark.slow
def test_budget_met_with_fewer_layers_left_out_than_graph_order(mixed):
    report = mixed.report
    result = report["mixed_precision"]
    assert 100.0 - result["top1_agreement"] <= BUDGET
    assert result["search"][0]["top1_drop"] > BUDGET  # all-INT8 missed the budget: the search had work
    quant = report["quantization"]
    assert quant["layers"] == result["int8_layers"] == 30 - len(result["excluded"])
    assert sorted(quant["layers_left_in_float"]) == sorted(result["excluded"])
    assert 100.0 - report["accuracy"]["quantized_vs_fp32_qdq_arithmetic"]["top1_agreement"] * 100 <= BUDGET

    # the naive choice: leave layers out in graph order, same search, same evaluator
    evaluator = _evaluator(mixed)
    naive = mixed_precision(evaluator, [t.node for t in evaluator.targets], BUDGET)
    assert len(result["excluded"]) < len(naive["excluded"]), (len(result["excluded"]), len(naive["excluded"]))


def _evaluator(mixed) -> Evaluator:
    """The pipeline's evaluator rebuilt from its artifacts: FP16 base, cached scales, held-out crops."""
    report = mixed.report
    fp32 = export_model(
        ExportOptions(
            model="faster_vit_digits",
            checkpoint=CHECKPOINT,
            precision="fp32",
            output_dir=mixed.onnx_path.parent / "fp32",
            force=True,
        )
    )
    model = onnx.load(str(fp32.onnx_path))
    source = Path(report["accuracy"]["inputs"].rsplit(" ", 1)[-1])
    held = CalibrationData(source, Preprocess.from_config(get_variant("faster_vit_digits").eval), 256, split="heldout")
    x = np.stack([held.sample(i) for i in range(len(held))])
    placed = placement(model, "int8")
    return Evaluator(
        convert_to_fp16(to_opset(model, QDQ_MIN_OPSET[onnx.TensorProto.FLOAT16])),
        placed.targets,
        CalibrationCache.read(Path(report["quantization"]["cache"])).amax,
        {t.name: numpy_helper.to_array(t) for t in model.graph.initializer},
        x,
        ort_logits(fp32.onnx_path, x),
        residuals=placed.residuals,
    )


def test_inspect_prints_the_accuracy_section(mixed, capsys):
    assert inspect_main([str(mixed.onnx_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "FP16 vs FP32" in info["accuracy"] and "INT8 vs FP32" in info["accuracy"]
    assert "layers INT8" in info["mixed_precision"] and len(info["most_sensitive_layers"]) == 5
