"""prepare_for_export: same logits, no BatchNorm, constants instead of bias MLPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastervit_trt.compare import compare
from fastervit_trt.export import prepare_for_export
from fastervit_trt.models import create_model
from fastervit_trt.models.fastervit import RelativePositionBias, TokenPositionMLP, WindowAttention
from tests.parity import randomize_


@pytest.mark.parametrize(
    "name, resolution",
    [
        ("faster_vit_0_224", None),
        ("faster_vit_3_224", None),
        ("faster_vit_4_21k_224", None),
        ("faster_vit_0_any_res", (224, 320)),
    ],
)
@pytest.mark.slow
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


@pytest.mark.slow
def test_layer_scale_folded_into_linear_outputs():
    deployed = prepare_for_export(randomize_(create_model("faster_vit_3_224")))
    blocks = [b for level in deployed.levels[2:] for b in level.blocks]
    assert all(b.gamma3 is None and b.gamma4 is None for b in blocks)
    assert all(b.attn.scale is None for b in blocks)


def test_attention_bias_is_a_small_table_reproducing_the_bias_exactly():
    """Every attention bias (window and carrier-token attention) equals the MLP's own output
    (to float rounding: the sigmoid runs on another memory layout), and the frozen model holds one index per window geometry: FasterViT-4-21K-768's
    48x48 windows would otherwise hold 4.3 GB of bias for 1.1 GB of weights."""
    model = randomize_(create_model("faster_vit_2_224"), seed=3)
    attentions = [m for m in model.modules() if isinstance(m, WindowAttention)]
    with torch.no_grad():
        expected = [a.pos_emb_funct() for a in attentions]
    prepare_for_export(model, inplace=True)  # the attentions listed above are frozen in place
    assert any(bool((e[0, :, :, 0] == 0).all()) for e in expected)  # some with carrier tokens
    for attn, bias in zip(attentions, expected):
        torch.testing.assert_close(attn.pos_emb_funct(), bias, rtol=1e-6, atol=0)
    indices = {id(a.pos_emb_funct.index) for a in attentions}
    assert len(indices) == len({tuple(b.shape) for b in expected})
    with torch.device("meta"):
        large = create_model("faster_vit_4_21k_768")
        weights = sum(t.numel() * t.element_size() for t in large.parameters())
        frozen = prepare_for_export(large, inplace=True)
    assert sum(t.numel() * t.element_size() for t in [*frozen.parameters(), *frozen.buffers()]) < 1.1 * weights
