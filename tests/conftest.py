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


def has_tensorrt() -> bool:
    from fastervit_trt.engines import EngineBuildError, load_tensorrt
    try:
        load_tensorrt()
    except EngineBuildError:
        return False
    return True


requires_tensorrt = pytest.mark.skipif(not has_tensorrt(), reason="no TensorRT / TensorRT-RTX installed")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export faster_vit_0_224 once per precision for the graph tests: {precision: result}."""
    from fastervit_trt.export.pipeline import ExportOptions, export_model
    out = tmp_path_factory.mktemp("export")
    cache = {}

    def get(precision: str, **options):
        key = (precision, tuple(sorted(options.items())))
        if key not in cache:
            folder = out / f"{precision}-{len(cache)}"
            cache[key] = export_model(ExportOptions(precision=precision, output_dir=folder, **options))
        return cache[key]
    return get
