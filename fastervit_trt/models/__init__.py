"""FasterViT model zoo: every official variant by name, loading official checkpoints.

>>> from fastervit_trt.models import create_model, list_models
>>> model = create_model("faster_vit_0_224")                      # random init
>>> model = create_model("faster_vit_0_224", checkpoint="fastervit_0_224_1k.pth.tar")
>>> model = create_model("faster_vit_0_any_res", resolution=(512, 512))
>>> model = create_model("faster_vit_0_224", checkpoint="model_best.pth.tar", weights="ema")
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, OptionsError, ResolutionError
from .checkpoint import WEIGHT_CHOICES, Checkpoint, load_into, mismatch, read_checkpoint
from .configs import REGISTRY, ArchConfig, EvalConfig, Variant, get_variant, list_models
from .fastervit import Backbone, FasterViT, check_resolution, nearest_resolutions, stage_geometry

__all__ = [
    "ArchConfig",
    "Backbone",
    "Checkpoint",
    "EvalConfig",
    "FasterViT",
    "Variant",
    "WEIGHT_CHOICES",
    "check_arch",
    "check_num_classes",
    "check_resolution",
    "create_model",
    "get_variant",
    "list_models",
    "nearest_resolutions",
    "read_checkpoint",
    "stage_geometry",
    "variant_of",
]


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    resolution: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    weights: str = "model",
    **overrides,
) -> FasterViT:
    """Build the registered variant ``name`` in eval mode, optionally loading ``checkpoint``.

    ``resolution`` (an int for square, or (height, width)) changes the input size the
    network is built for; ``num_classes`` the classifier width (default: the checkpoint's
    head, 0 for a headless one; else the variant's), checked against the checkpoint;
    ``weights`` which weights of a training checkpoint ("model" or "ema"); ``overrides`` any
    other ``ArchConfig`` field. The returned model carries ``variant`` (the resolved record:
    its eval transform takes the settings the checkpoint's training run recorded) so
    downstream stages know its preprocessing, and ``checkpoint`` (what was loaded from
    where, or None).
    """
    variant = get_variant(name)
    loaded = read_checkpoint(checkpoint, weights) if checkpoint is not None else None
    if loaded is not None:
        check_arch(loaded, name)
        num_classes = check_num_classes(loaded, num_classes)
    changes = dict(overrides)
    if resolution is not None:
        changes["resolution"] = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if num_classes is not None:
        changes["num_classes"] = num_classes
    unknown = set(changes) - set(ArchConfig.__dataclass_fields__)
    if unknown:
        raise OptionsError(f"create_model() got unknown options: {', '.join(sorted(unknown))}")
    arch = replace(variant.arch, **changes)
    check_resolution(arch)
    trained = loaded.transform() if loaded is not None else {}
    variant = replace(variant, arch=arch, eval=replace(variant.eval, input_size=arch.resolution, **trained))
    model = FasterViT(arch)
    if loaded is not None:
        state = loaded.state
        load_into(
            model,
            state,
            loaded.path,
            suggest=lambda: _fitting_variant(state, arch),
            unused=_unused_at_resolution(model, arch),
            name=name,
        )
    model.variant = variant
    model.checkpoint = loaded.describe() if loaded else None
    return model.eval()


def check_num_classes(checkpoint: Checkpoint, asked: int | None) -> int:
    """The checkpoint's number of classes; ``asked`` (when given) must be the same."""
    found = checkpoint.num_classes
    if asked is not None and asked != found:
        head = f"its head has {found} classes" if found else "it has no classifier head (a feature extractor)"
        raise CheckpointError(
            f"{checkpoint.path}: {head}, not num_classes={asked}; leave --num-classes out (it is read "
            f"from the checkpoint) or pass --num-classes {found}"
        )
    return found


def variant_of(checkpoint: Checkpoint) -> str:
    """The registered variant ``checkpoint`` was trained as: the name its training run
    recorded when the registry has it, else the first variant its weights fit."""
    if checkpoint.arch in REGISTRY:
        return checkpoint.arch
    for name in list_models():
        arch = replace(get_variant(name).arch, num_classes=checkpoint.num_classes)
        if not _same_widths(checkpoint.state, arch):  # cheap: most variants are ruled out here
            continue
        with torch.device("meta"):
            probe = FasterViT(arch)
        if mismatch(probe, checkpoint.state, _unused_at_resolution(probe, arch)) == ([], [], []):
            return name
    recorded = f" (its training run calls it {checkpoint.arch!r})" if checkpoint.arch else ""
    raise CheckpointError(
        f"{checkpoint.path}: its weights fit no registered variant{recorded}; pass --variant NAME "
        "(fastervit-export --help lists them)"
    )


def check_arch(checkpoint: Checkpoint, name: str) -> None:
    """Refuse a checkpoint whose recorded ``arch`` is another registered variant than ``name``.

    Any-res variants take the checkpoints of their fixed-resolution twin (as the official
    ones do); an ``arch`` the registry does not know (a renamed or custom run) is let through
    to the strict weight check.
    """
    if checkpoint.arch is None or checkpoint.arch not in REGISTRY:
        return
    if _trained_as(checkpoint.arch) != _trained_as(name):
        raise CheckpointError(
            f"{checkpoint.path}: this checkpoint was trained as {checkpoint.arch!r} "
            f"(its 'arch' entry), not {name!r}; pass --variant {checkpoint.arch}"
        )


def _trained_as(name: str) -> str:
    """The fixed-resolution variant whose checkpoints ``name`` loads."""
    if not name.endswith("_any_res"):
        return name
    base = name.removesuffix("_any_res")
    return base if base in REGISTRY else f"{base}_224"


def _same_widths(state: dict[str, torch.Tensor], arch: ArchConfig) -> bool:
    """Whether ``state``'s stem and final norm have ``arch``'s widths."""
    stem, norm = state.get("patch_embed.conv_down.0.weight"), state.get("norm.weight")
    return (
        stem is not None
        and norm is not None
        and int(stem.shape[0]) == arch.in_dim
        and int(norm.shape[0]) == arch.dim * 2 ** (len(arch.depths) - 1)
    )


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
    classes = int(head.shape[0]) if head is not None else 0
    for name in list_models():
        candidate = get_variant(name).arch
        options: dict[str, Any] = {"num_classes": classes}
        if candidate.any_res == arch.any_res:
            options["resolution"] = arch.resolution
        try:
            with torch.device("meta"):
                probe = FasterViT(replace(candidate, **options))
        except ResolutionError:
            continue
        if mismatch(probe, state) == ([], [], []):
            return name
    return None
