"""prepare_for_export: same logits, no BatchNorm, constants instead of bias MLPs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastervit_trt.compare import compare
from fastervit_trt.export import prepare_for_export
from fastervit_trt.models import create_model
from fastervit_trt.models.fastervit import RelativePositionBias, TokenPositionMLP
from fastervit_trt.models.parity import randomize_


@pytest.mark.parametrize("name, resolution", [
    ("faster_vit_0_224", None), ("faster_vit_3_224", None),
    ("faster_vit_4_21k_224", None), ("faster_vit_0_any_res", (224, 320)),
])
def test_deploy_form_matches_eval_model(name, resolution):
    model = randomize_(create_model(name, resolution=resolution), seed=1)
    deployed = prepare_for_export(model)
    x = torch.randn(2, 3, *model.variant.arch.resolution, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        report = compare(model(x).numpy(), deployed(x).numpy())
    assert report.relative_diff <= 1e-5, report
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert not any(isinstance(m, (RelativePositionBias, TokenPositionMLP)) for m in deployed.modules())
    assert not any(p.requires_grad for p in deployed.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched


def test_layer_scale_folded_into_linear_outputs():
    deployed = prepare_for_export(randomize_(create_model("faster_vit_3_224")))
    blocks = [b for level in deployed.levels[2:] for b in level.blocks]
    assert all(b.gamma3 is None and b.gamma4 is None for b in blocks)
    assert all(b.attn.scale is None for b in blocks)
