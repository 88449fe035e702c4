"""Quantization accuracy on a trained network: faster_vit_digits on held-out scans.

The fixture (tests/fixtures/faster_vit_digits.pth, python -m tests.fixtures.train_digits)
is a FasterViT with conv stages, HAT carriers and propagation, trained on scikit-learn's
digits; calibration uses the training split, accuracy the held-out split (360 scans).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastervit_trt.calibration.dataset import find_images
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.graph.ort_eval import ort_logits
from fastervit_trt.models import create_model
from fastervit_trt.preprocess import Preprocess, load_image

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "faster_vit_digits.pth"


@pytest.fixture(scope="module")
def heldout(digits_folders):
    model = create_model("faster_vit_digits")
    preprocess = Preprocess.from_config(model.variant.eval)
    items = find_images(digits_folders["heldout"])[0]
    inputs = np.stack([preprocess(load_image(item.path)) for item in items])
    return inputs, np.array([int(item.label) for item in items])


@pytest.fixture(scope="module")
def exports(tmp_path_factory, digits_folders):
    out = tmp_path_factory.mktemp("digits-export")
    common = dict(model="faster_vit_digits", checkpoint=CHECKPOINT, batch=(1, 8, 32))
    results = {p: export_model(ExportOptions(precision=p, output_dir=out / p, **common)) for p in ("fp32", "fp16")}
    for method in ("entropy", "minmax"):
        results[f"int8_{method}"] = export_quantized(
            ExportOptions(precision="int8", output_dir=out / method, **common),
            CalibrationOptions(data=digits_folders["train"], images=256, method=method),
        )
    return results


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def accuracies(exports, heldout):
    inputs, labels = heldout
    model = create_model("faster_vit_digits", checkpoint=CHECKPOINT)
    with torch.no_grad():
        table = {"pytorch": _accuracy(model(torch.from_numpy(inputs)).numpy(), labels)}
    for name, result in exports.items():
        table[name] = _accuracy(ort_logits(result.onnx_path, inputs, optimize=not name.startswith("int8")), labels)
    print("\nheld-out accuracy (%):", {k: round(v, 2) for k, v in table.items()})
    return table


@pytest.mark.slow
def test_fixture_is_trained(accuracies):
    assert accuracies["pytorch"] >= 95.0  # ten classes: chance is 10 %


def test_fp32_onnx_equals_pytorch(accuracies):
    assert accuracies["fp32"] == accuracies["pytorch"]


def test_fp16_within_0_2_points(accuracies):
    assert accuracies["fp16"] >= accuracies["fp32"] - 0.2


def test_int8_entropy_within_1_point(accuracies):
    assert accuracies["int8_entropy"] >= accuracies["fp32"] - 1.0


def test_int8_minmax_within_2_points(accuracies):
    assert accuracies["int8_minmax"] >= accuracies["fp32"] - 2.0
