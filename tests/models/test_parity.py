"""Eval-mode logits equal the official implementation's for the same weights."""

from __future__ import annotations

import pytest

from tests.parity import check_parity

TOLERANCE = 1e-4  # max |diff| <= 1e-4 x max |logit|, float32


@pytest.mark.parametrize(
    "name, resolution",
    [
        ("faster_vit_0_224", None),
        ("faster_vit_1_224", None),
        ("faster_vit_3_224", None),  # layer scale + carrier propagation
        ("faster_vit_4_21k_224", None),  # local-only windows of 14
        ("faster_vit_0_any_res", (224, 320)),  # padding + non-square carrier grid
        ("faster_vit_1_any_res", (256, 256)),  # padding at stages 3 and 4
        ("faster_vit_0_any_res", (96, 128)),  # stage-4 padding wider than the map itself
        ("faster_vit_0_any_res", (250, 250)),  # stage 4 pads to another grid than the nominal one
        ("faster_vit_0_any_res", (32, 32)),
    ],
)
@pytest.mark.slow
def test_logits_match_official(name, resolution):
    report = check_parity(name, resolution, batch=2)
    assert report.relative_diff <= TOLERANCE, report
    assert report.max_abs_reference > 0.1  # the random weights produce real logits
    assert report.top1_agreement == 1.0


@pytest.mark.parametrize("size", [(16, 16), (8, 8), (113, 113), (120, 128), (230, 230), (232, 64), (250, 250)])
def test_accepts_exactly_the_resolutions_the_official_model_runs(size):
    """Refusing a size the reference runs, or tracing one it cannot, are both wrong."""
    from dataclasses import replace

    import torch

    from fastervit_trt.errors import ResolutionError
    from fastervit_trt.models import check_resolution, get_variant
    from tests.parity import official_model

    try:
        with torch.no_grad():
            official_model("faster_vit_0_any_res", size)(torch.zeros(1, 3, *size))
        official_runs = True
    except (RuntimeError, ZeroDivisionError):
        official_runs = False
    try:
        check_resolution(replace(get_variant("faster_vit_0_any_res").arch, resolution=size))
        accepted = True
    except ResolutionError:
        accepted = False
    assert accepted == official_runs
