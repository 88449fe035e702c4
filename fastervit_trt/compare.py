"""One comparison report for two batches of logits, used by every validation in the toolkit."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import OptionsError


@dataclass(frozen=True)
class Comparison:
    """How far ``candidate`` logits are from ``reference`` logits (same shape, (N, classes))."""

    max_abs_diff: float
    max_abs_reference: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float

    @property
    def relative_diff(self) -> float:
        """max |diff| / max |reference|: scale-free, what the parity tolerances bound."""
        return self.max_abs_diff / max(self.max_abs_reference, float(np.finfo(np.float64).tiny))

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "relative_diff": self.relative_diff}


def compare(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Compare two (N, ...) arrays in float64; rows are flattened to vectors."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise OptionsError(f"cannot compare outputs of shapes {ref.shape} and {cand.shape}")
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    return Comparison(
        max_abs_diff=float(np.abs(ref - cand).max()),
        max_abs_reference=float(np.abs(ref).max()),
        mean_cosine=float(cosine.mean()),
        min_cosine=float(cosine.min()),
        top1_agreement=float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean()),
    )


def flatten(outputs: list[np.ndarray]) -> np.ndarray:
    """A model's outputs as one (N, total) array: one row per input, its outputs end to end
    (a classifier's logits unchanged)."""
    if len(outputs) == 1:
        return outputs[0].reshape(len(outputs[0]), -1)
    return np.concatenate([o.reshape(len(o), -1) for o in outputs], axis=1)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, sizes: dict[str, int]) -> dict[str, Comparison]:
    """``compare`` per named output of two ``flatten``-ed batches (``sizes``: each output's
    values per input, in order)."""
    result, start = {}, 0
    for name, size in sizes.items():
        result[name] = compare(reference[:, start : start + size], candidate[:, start : start + size])
        start += size
    if start != reference.shape[1]:
        raise OptionsError(f"outputs of {start} values per input do not cover rows of {reference.shape[1]}")
    return result
