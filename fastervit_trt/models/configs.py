"""The FasterViT variant zoo as data: architecture and evaluation settings per official name.

Every downstream stage (export, calibration, evaluation, runtime) derives its shapes and
preprocessing from these records, so there is exactly one place that says what
``faster_vit_0_224`` is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch

from ..errors import UnknownModelError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ArchConfig:
    """Hyper-parameters that decide the network's structure and weight shapes."""

    dim: int
    in_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: tuple[int, int, int, int] = (7, 7, 7, 7)
    hat: tuple[bool, bool, bool, bool] = (False, False, True, False)
    resolution: tuple[int, int] = (224, 224)
    any_res: bool = False
    ct_size: int = 2
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    propagate_carriers: bool = False
    num_classes: int = 1000
    in_chans: int = 3
    drop_path_rate: float = 0.2


@dataclass(frozen=True)
class EvalConfig:
    """The preprocessing the variant was trained with (timm's eval transform)."""

    input_size: tuple[int, int]
    crop_pct: float
    crop_mode: str  # "center": shorter side to size/crop_pct, centre crop; "squash": both sides
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    label_set: str = "imagenet-1k"


@dataclass(frozen=True)
class Variant:
    """A registered model: its official name, architecture and eval configuration."""

    name: str
    arch: ArchConfig
    eval: EvalConfig = field(compare=False)
    official: bool = True  # False: a tiny test-scale variant, not an NVlabs release


_FAMILY = {
    # name stem: (dim, in_dim, depths, heads, layer_scale/propagation, drop_path_rate)
    "0": (64, 64, (2, 3, 6, 5), (2, 4, 8, 16), False, 0.2),
    "1": (80, 32, (1, 3, 8, 5), (2, 4, 8, 16), False, 0.2),
    "2": (96, 64, (3, 3, 8, 5), (2, 4, 8, 16), False, 0.2),
    "3": (128, 64, (3, 3, 12, 5), (2, 4, 8, 16), True, 0.3),
    "4": (196, 64, (3, 3, 12, 5), (4, 8, 16, 32), True, 0.3),
    "5": (320, 64, (3, 3, 12, 5), (4, 8, 16, 32), True, 0.3),
    "6": (320, 64, (3, 3, 16, 8), (4, 8, 16, 32), True, 0.5),
}
_CROP_PCT_1K = {"0": 0.875}
# ImageNet-21K pre-trained FasterViT-4: resolution -> (stage 3/4 windows, crop_pct)
_FAMILY_21K = {
    224: ((7, 7, 14, 7), 0.95),
    384: ((7, 7, 24, 12), 1.0),
    512: ((7, 7, 32, 16), 1.0),
    768: ((7, 7, 48, 24), 0.93),
}
_ANY_RES_DEFAULT = {"2": (541, 960)}


def _build_registry() -> dict[str, Variant]:
    variants: dict[str, Variant] = {}

    def add(name: str, arch: ArchConfig, crop_pct: float, crop_mode: str) -> None:
        variants[name] = Variant(name, arch, EvalConfig(arch.resolution, crop_pct, crop_mode))

    for stem, (dim, in_dim, depths, heads, scaled, dpr) in _FAMILY.items():
        arch = ArchConfig(
            dim=dim,
            in_dim=in_dim,
            depths=depths,
            num_heads=heads,
            layer_scale=1e-5 if scaled else None,
            propagate_carriers=scaled,
            drop_path_rate=dpr,
        )
        crop_pct = _CROP_PCT_1K.get(stem, 1.0)
        add(f"faster_vit_{stem}_224", arch, crop_pct, "center")
        any_res = replace(arch, any_res=True, resolution=_ANY_RES_DEFAULT.get(stem, (576, 960)))
        add(f"faster_vit_{stem}_any_res", any_res, crop_pct, "center")

    dim, in_dim, depths, heads, _, _ = _FAMILY["4"]
    for res, (windows, crop_pct) in _FAMILY_21K.items():
        arch = ArchConfig(
            dim=dim,
            in_dim=in_dim,
            depths=depths,
            num_heads=heads,
            window_size=windows,
            hat=(False, False, False, False),
            resolution=(res, res),
            layer_scale=1e-5,
            propagate_carriers=True,
            drop_path_rate=0.42,
        )
        add(f"faster_vit_4_21k_{res}", arch, crop_pct, "squash")
        any_res = replace(arch, any_res=True, resolution=(576, 960), drop_path_rate=0.3)
        add(f"faster_vit_4_21k_{res}_any_res", any_res, crop_pct, "squash")
    # Test-scale variant (as timm registers test_vit): every FasterViT mechanism (conv stages,
    # HAT with a 2x2 window grid of carrier tokens, propagation) at 128x128 and ~1 M
    # parameters; tests/fixtures/faster_vit_digits.pth is trained on scikit-learn's digits.
    digits = ArchConfig(
        dim=16,
        in_dim=16,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_size=(7, 7, 4, 4),
        resolution=(128, 128),
        propagate_carriers=True,
        num_classes=10,
        drop_path_rate=0.0,
    )
    variants["faster_vit_digits"] = Variant(
        "faster_vit_digits", digits, EvalConfig((128, 128), 1.0, "squash", label_set="digits"), official=False
    )
    return dict(sorted(variants.items(), key=lambda kv: _natural_key(kv[0])))


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


REGISTRY: dict[str, Variant] = _build_registry()


def list_models(pattern: str = "*", official_only: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern``, in natural order."""
    return [
        name for name, variant in REGISTRY.items() if fnmatch(name, pattern) and (variant.official or not official_only)
    ]


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; an unknown name lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None
