"""Class names for a label set, shipped with the package (no timm or torch needed)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_DATA = Path(__file__).resolve().parents[1] / "data"


@cache
def imagenet_synsets() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k (synset, names) pairs in class-index order."""
    lines = (_DATA / "imagenet1k_labels.tsv").read_text().splitlines()
    return tuple((synset, names) for synset, names in (line.split("\t", 1) for line in lines))


def class_names(label_set: str | None, num_classes: int) -> list[str]:
    """Readable names of ``num_classes`` classes: ImageNet names, digits, or "class <i>"."""
    if label_set == "imagenet-1k" and num_classes == 1000:
        return [names.split(",")[0].strip() for _, names in imagenet_synsets()]
    if label_set == "digits":
        return [str(i) for i in range(num_classes)]
    return [f"class {i}" for i in range(num_classes)]
