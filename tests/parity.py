"""Numerical parity with the official implementation (PyPI ``fastervit``), the oracle.

Test code, kept out of the product package: the official package is a test/tool dependency
only (``pip install fastervit-trt[test]``), and nothing under ``fastervit_trt/`` imports it.
Benchmarks and tools reach it as ``tests.parity`` with the repository root on ``sys.path``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from fastervit_trt.compare import Comparison, compare
from fastervit_trt.models import create_model
from fastervit_trt.models.configs import get_variant


def official_model(name: str, resolution: tuple[int, int] | None = None) -> nn.Module:
    """The official ``fastervit`` model ``name`` (random init, eval mode)."""
    kwargs = {}
    if resolution is not None:
        any_res = get_variant(name).arch.any_res
        kwargs["resolution"] = list(resolution) if any_res else resolution[0]
    with warnings.catch_warnings():  # the reference emits deprecation noise on import/build
        warnings.simplefilter("ignore")
        from fastervit import create_model as official_create

        return official_create(name, **kwargs).eval()


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and statistic a random, O(1)-activation value, in place.

    Default initialisation leaves layer scales at 1e-5 and position-bias MLPs near zero,
    which would hide errors in the branches they scale; parity needs every path to count.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name.endswith(("relative_coords_table", "relative_bias")):
            continue
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.rand(tensor.shape, generator=gen)
        if leaf.startswith("gamma"):
            tensor.copy_(0.5 + 0.5 * noise)
        elif leaf == "running_var":
            tensor.copy_(0.5 + noise)
        elif leaf == "running_mean" or (leaf == "bias"):
            tensor.copy_(0.2 * (noise - 0.5))
        elif tensor.ndim == 1:  # norm weights
            tensor.copy_(0.75 + 0.5 * noise)
        else:
            fan_in = tensor[0].numel()
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * fan_in**-0.5)
    return model


@torch.no_grad()
def check_parity(name: str, resolution: tuple[int, int] | None = None, batch: int = 2, seed: int = 0) -> Comparison:
    """Logits of ours vs the official model sharing the same random weights (via a file)."""
    official = randomize_(official_model(name, resolution), seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pth"
        torch.save({"state_dict": official.state_dict()}, path)
        ours = create_model(name, checkpoint=path, resolution=resolution)
    size = ours.variant.arch.resolution
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed + 1))
    return compare(official(x).numpy(), ours(x).numpy())
