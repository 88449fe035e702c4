"""Eval-mode logits equal the official implementation's for the same weights."""
from __future__ import annotations

import pytest

from fastervit_trt.models.parity import check_parity

TOLERANCE = 1e-4  # max |diff| <= 1e-4 x max |logit|, float32


@pytest.mark.parametrize("name, resolution", [
    ("faster_vit_0_224", None),
    ("faster_vit_1_224", None),
    ("faster_vit_3_224", None),              # layer scale + carrier propagation
    ("faster_vit_4_21k_224", None),          # local-only windows of 14
    ("faster_vit_0_any_res", (224, 320)),    # padding + non-square carrier grid
    ("faster_vit_1_any_res", (256, 256)),    # padding at stages 3 and 4
])
def test_logits_match_official(name, resolution):
    report = check_parity(name, resolution, batch=2)
    assert report.relative_diff <= TOLERANCE, report
    assert report.max_abs_reference > 0.1  # the random weights produce real logits
    assert report.top1_agreement == 1.0
