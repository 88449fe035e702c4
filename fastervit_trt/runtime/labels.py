"""Class names of a model, shipped with the package (no timm or torch needed).

A model exported with its own names (``fastervit-export --class-names FILE``) carries them
in its ONNX metadata and engine sidecar under ``class_names``; every consumer (the runtime,
serve, Triton's labels file, DeepStream's) reads them through ``model_class_names``. Models
without their own names get the names of their label set (ImageNet-1k, digits) or
"class <i>".
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ..errors import OptionsError

_DATA = Path(__file__).resolve().parents[1] / "data"


@cache
def imagenet_synsets() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k (synset, names) pairs in class-index order."""
    lines = (_DATA / "imagenet1k_labels.tsv").read_text().splitlines()
    return tuple((synset, names) for synset, names in (line.split("\t", 1) for line in lines))


def label_set_names(label_set: str | None, num_classes: int) -> list[str] | None:
    """The names ``label_set`` gives a head of ``num_classes`` classes (ImageNet-1k's 1000, the
    digits' 10); None when it has no names for that many."""
    if label_set == "imagenet-1k" and num_classes == 1000:
        return [names.split(",")[0].strip() for _, names in imagenet_synsets()]
    if label_set == "digits" and num_classes == 10:
        return [str(i) for i in range(num_classes)]
    return None


def class_names(label_set: str | None, num_classes: int) -> list[str]:
    """Readable names of ``num_classes`` classes: the label set's, else "class <i>"."""
    return label_set_names(label_set, num_classes) or [f"class {i}" for i in range(num_classes)]


def model_class_names(info: dict, num_classes: int) -> list[str]:
    """The class names an export's metadata (or an engine's sidecar) ``info`` gives its
    ``num_classes`` outputs: its own ``class_names`` when it has them, else its label set's."""
    own = info.get("class_names")
    if own and len(own) == num_classes:
        return [str(name) for name in own]
    label_set = (info.get("preprocess") or {}).get("label_set") or info.get("label_set")
    return class_names(label_set, num_classes)


def read_class_names(path: Path) -> tuple[str, ...]:
    """A names file: one class name per line, in the head's order (a trailing blank line and
    surrounding spaces ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionsError(
            f"{path}: cannot read the class names ({getattr(exc, 'strerror', None) or exc}); "
            "give a UTF-8 text file with one name per line"
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    blank = [number for number, name in enumerate(names, 1) if not name]
    if not names or blank:
        where = f"line {blank[0]} is blank" if blank else "it is empty"
        raise OptionsError(f"{path}: {where}; give one class name per line, in the head's order")
    first: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in first:
            raise OptionsError(
                f"{path}: {name!r} is on lines {first[name]} and {number}; each class needs its own name"
            )
        first[name] = number
    return names
