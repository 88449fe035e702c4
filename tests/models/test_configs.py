"""The registry is data, and every registered config builds the official architecture."""

from __future__ import annotations

import pytest
import torch

from fastervit_trt.errors import OptionsError, ResolutionError, UnknownModelError
from fastervit_trt.models import create_model, get_variant, list_models
from fastervit_trt.models.checkpoint import mismatch
from tests.parity import official_model

OFFICIAL_NAMES = [f"faster_vit_{i}_224" for i in range(7)] + [f"faster_vit_4_21k_{r}" for r in (224, 384, 512, 768)]
OFFICIAL_NAMES += [f"faster_vit_{i}_any_res" for i in range(7)] + [
    f"faster_vit_4_21k_{r}_any_res" for r in (224, 384, 512, 768)
]


def test_every_official_name_is_registered():
    assert sorted(list_models(official_only=True)) == sorted(OFFICIAL_NAMES)
    assert [n for n in list_models() if n not in OFFICIAL_NAMES] == ["faster_vit_digits"]
    assert get_variant("faster_vit_digits").official is False
    assert list_models("*_any_res") == [n for n in list_models() if n.endswith("_any_res")]


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
@pytest.mark.slow
def test_config_builds_the_official_architecture(name):
    """Same parameter names and shapes as the official model of that name."""
    reference = official_model(name).state_dict()
    with torch.device("meta"):
        ours = create_model(name)
    assert mismatch(ours, reference) == ([], [], [])


@pytest.mark.parametrize(
    "name, crop_pct, mode, size",
    [
        ("faster_vit_0_224", 0.875, "center", (224, 224)),
        ("faster_vit_3_224", 1.0, "center", (224, 224)),
        ("faster_vit_4_21k_224", 0.95, "squash", (224, 224)),
        ("faster_vit_4_21k_768", 0.93, "squash", (768, 768)),
        ("faster_vit_2_any_res", 1.0, "center", (541, 960)),
        ("faster_vit_0_any_res", 0.875, "center", (576, 960)),
    ],
)
def test_eval_config_matches_official_pretrained_cfg(name, crop_pct, mode, size):
    reference = official_model(name).pretrained_cfg if name.endswith("_224") else None
    ev = get_variant(name).eval
    assert (ev.crop_pct, ev.crop_mode, ev.input_size) == (crop_pct, mode, size)
    assert ev.interpolation == "bicubic" and ev.mean == (0.485, 0.456, 0.406)
    if reference is not None:
        assert (reference["crop_pct"], reference["crop_mode"]) == (crop_pct, mode)
        assert tuple(reference["input_size"][1:]) == size


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as err:
        create_model("faster_vit_7_224")
    assert "faster_vit_0_224" in str(err.value) and "faster_vit_6_any_res" in str(err.value)


def test_created_model_carries_its_variant_at_the_requested_resolution():
    with torch.device("meta"):
        model = create_model("faster_vit_0_any_res", resolution=(512, 640), num_classes=10)
    assert model.variant.arch.resolution == (512, 640)
    assert model.variant.eval.input_size == (512, 640)
    assert model.head.out_features == 10


@pytest.mark.parametrize(
    "name, resolution",
    [
        ("faster_vit_0_224", 256),  # stage 3 map 16 is not whole 7-windows
        ("faster_vit_0_224", (224, 448)),  # fixed variants are square
    ],
)
def test_resolution_the_windows_cannot_take(name, resolution):
    with pytest.raises(ResolutionError, match="any_res"):
        create_model(name, resolution=resolution)


def test_unknown_override_is_refused():
    with pytest.raises(OptionsError, match="depht"):
        create_model("faster_vit_0_224", depht=3)
