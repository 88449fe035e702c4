"""Shared fixtures. Tests mirror the package: tests/models, tests/export, ..."""
from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", module="timm")


@pytest.fixture(scope="session")
def official_state():
    """Randomised official faster_vit_0_224 weights (the oracle's state dict)."""
    from fastervit_trt.models.parity import official_model, randomize_
    return randomize_(official_model("faster_vit_0_224"), seed=3).state_dict()


@pytest.fixture(scope="session")
def images_224():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
