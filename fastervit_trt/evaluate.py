"""Accuracy on a labelled image folder, for any mix of engines, ONNX files and PyTorch models.

Folder layout: one sub-folder per class. A folder named as one of the model's class names
(those it was exported with, ``--class-names``) is that class; ImageNet synset names
(``n01440764``) map to the 1000 ImageNet labels; integer names map to that class index;
anything else needs a ``--labels`` file of ``<folder> <class index>`` lines. Each model
preprocesses with its own configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .calibration.dataset import find_images
from .compare import compare
from .errors import EvaluationError
from .preprocess import Preprocess
from .progress import Bar
from .runtime.backend import RunsOn
from .runtime.labels import imagenet_synsets

TORCH_RUNS_ON = RunsOn("pytorch", "pytorch eager", "cpu")  # where ``torch_runner`` runs


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def read_label_map(path: Path) -> dict[str, int]:
    mapping = {}
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(
            f"{path}: cannot read the --labels file ({getattr(exc, 'strerror', None) or exc}); "
            "it lists '<folder> <class index>' per line"
        ) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise EvaluationError(f"{path}: line {number} should be '<folder> <class index>', got {line!r}")
        mapping[parts[0]] = int(parts[1])
    return mapping


def labelled_samples(
    folder: Path, labels: Path | None = None, limit: int | None = None, class_names: list[str] | None = None
) -> list[Sample]:
    """(image, class index) pairs of an ImageNet-style folder, sorted; ``limit`` spreads evenly.
    Sub-folders named as one of ``class_names`` are that class, unless ``labels`` maps them."""
    if not Path(folder).is_dir():
        raise EvaluationError(f"{folder}: no such folder; pass --data DIR with one sub-folder of images per class")
    images, _ = find_images(folder)
    mapping = {name: index for index, name in enumerate(class_names or [])}
    mapping.update(read_label_map(labels) if labels else {})
    synsets = {synset: index for index, (synset, _) in enumerate(imagenet_synsets())}
    samples, unknown = [], set()
    for item in images:
        if item.label is None:
            continue
        index = mapping.get(item.label, synsets.get(item.label))
        if index is None and item.label.isdigit():
            index = int(item.label)
        if index is None:
            unknown.add(item.label)
        else:
            samples.append(Sample(item.path, index))
    if unknown:
        raise EvaluationError(
            f"{folder}: class folders {', '.join(sorted(unknown)[:5])} are neither ImageNet synsets nor class "
            "indices nor the model's class names; export the model with --class-names FILE, or map "
            "them with --labels FILE ('<folder> <index>' lines)"
        )
    if not samples:
        raise EvaluationError(f"{folder}: no labelled images (expected <folder>/<class>/<image>)")
    if limit and limit < len(samples):
        samples = [samples[i * len(samples) // limit] for i in range(limit)]
    return samples


def evaluate(
    models: dict[str, Callable[[list[Path]], np.ndarray]],
    samples: list[Sample],
    batch: int = 32,
    stream: TextIO | None = sys.stderr,
) -> dict:
    """Top-1/top-5 per model and pairwise top-1 agreement / logit cosine."""
    labels = np.array([s.label for s in samples])
    logits: dict[str, list[np.ndarray]] = {name: [] for name in models}
    with Bar(len(samples) * len(models), "evaluating", "img", stream) as bar:
        for start in range(0, len(samples), batch):
            paths = [s.path for s in samples[start : start + batch]]
            for name, run in models.items():
                logits[name].append(run(paths))
                bar.update(len(paths))
    joined = {name: np.concatenate(parts) for name, parts in logits.items()}
    report: dict[str, Any] = {"images": len(samples), "models": {}, "pairs": []}
    for name, values in joined.items():
        top5 = np.argsort(-values, axis=1)[:, :5]
        report["models"][name] = {
            "top1": 100.0 * float((top5[:, 0] == labels).mean()),
            "top5": 100.0 * float((top5 == labels[:, None]).any(axis=1).mean()),
        }
    for a, b in combinations(joined, 2):
        pair = compare(joined[a], joined[b])
        report["pairs"].append(
            {"a": a, "b": b, "top1_agreement": 100.0 * pair.top1_agreement, "mean_cosine": pair.mean_cosine}
        )
    return report


def torch_runner(
    name: str, checkpoint: Path | None, preprocess: Preprocess | None = None
) -> Callable[[list[Path]], np.ndarray]:
    """PyTorch eager of a registered variant (its head as wide as the checkpoint's), with
    ``preprocess`` (an export's recorded transform), else the checkpoint's or variant's."""
    import torch

    from .models import create_model
    from .preprocess import load_image

    model = create_model(name, checkpoint=checkpoint)
    preprocess = replace(preprocess or Preprocess.from_config(model.variant.eval), input_format="float")

    def run(paths: list[Path]) -> np.ndarray:
        batch = torch.from_numpy(np.stack([preprocess(load_image(p)) for p in paths]))
        with torch.inference_mode():
            return model(batch).numpy()

    return run
