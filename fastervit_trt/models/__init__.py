"""FasterViT model zoo: every official variant by name, loading official checkpoints.

>>> from fastervit_trt.models import create_model, list_models
>>> model = create_model("faster_vit_0_224")                      # random init
>>> model = create_model("faster_vit_0_224", checkpoint="fastervit_0_224_1k.pth.tar")
>>> model = create_model("faster_vit_0_any_res", resolution=(512, 512))
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ResolutionError
from .checkpoint import load_into, mismatch, read_state_dict
from .configs import ArchConfig, EvalConfig, Variant, get_variant, list_models
from .fastervit import FasterViT, stage_geometry

__all__ = ["ArchConfig", "EvalConfig", "FasterViT", "Variant", "create_model", "get_variant",
           "list_models", "stage_geometry"]


def create_model(name: str, checkpoint: str | Path | None = None,
                 resolution: int | tuple[int, int] | None = None, num_classes: int | None = None,
                 **overrides) -> FasterViT:
    """Build the registered variant ``name`` in eval mode, optionally loading ``checkpoint``.

    ``resolution`` (an int for square, or (height, width)) changes the input size the
    network is built for; ``num_classes`` the classifier width; ``overrides`` any other
    ``ArchConfig`` field. The returned model carries ``variant`` (the resolved record) so
    downstream stages know its preprocessing.
    """
    variant = get_variant(name)
    changes = dict(overrides)
    if resolution is not None:
        changes["resolution"] = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if num_classes is not None:
        changes["num_classes"] = num_classes
    unknown = set(changes) - set(ArchConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"create_model() got unknown options: {', '.join(sorted(unknown))}")
    arch = replace(variant.arch, **changes)
    variant = replace(variant, arch=arch, eval=replace(variant.eval, input_size=arch.resolution))
    model = FasterViT(arch)
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        load_into(model, state, checkpoint, suggest=lambda: _fitting_variant(state, arch),
                  unused=_unused_at_resolution(model, arch))
    model.variant = variant
    return model.eval()


def _unused_at_resolution(model: FasterViT, arch: ArchConfig) -> frozenset[str]:
    """Weights the any-res variant has at 224x224 (where its checkpoints were trained) but not
    at ``arch.resolution``: e.g. carrier position embeddings, which non-square carrier grids
    skip. Checkpoints may carry them; they are ignored, as the reference implementation does.
    """
    if not arch.any_res or arch.resolution == (224, 224):
        return frozenset()
    with torch.device("meta"):
        trained = FasterViT(replace(arch, resolution=(224, 224))).state_dict()
    return frozenset(trained.keys() - model.state_dict().keys())


def _fitting_variant(state: dict[str, torch.Tensor], arch: ArchConfig) -> str | None:
    """The first registered variant (at the requested resolution) whose weights fit ``state``."""
    head = state.get("head.weight")
    classes = int(head.shape[0]) if head is not None else arch.num_classes
    for name in list_models():
        candidate = get_variant(name).arch
        options = {"num_classes": classes}
        if candidate.any_res == arch.any_res:
            options["resolution"] = arch.resolution
        try:
            with torch.device("meta"):
                probe = FasterViT(replace(candidate, **options))
        except ResolutionError:
            continue
        if mismatch(probe, state) == ([], [], []):
            return name if classes == arch.num_classes else f"{name} with num_classes={classes}"
    return None
