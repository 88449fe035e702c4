"""Activation ranges from histograms: entropy (TensorRT's EntropyCalibration2), minmax, percentile.

A ``Histogram`` counts |x| in 2048 equal bins over [0, range). When a batch brings a
larger maximum the range doubles (as often as needed) and neighbouring bins merge pairwise,
so counts are never re-estimated: the histogram is exactly what one pass with the final
range would have given, up to the bin edges of the first batches.

Entropy (NVIDIA, "8-bit Inference with TensorRT", 2017): for each threshold bin i in
128..2047, P = bins[:i] with every count beyond i added to bin i-1; Q = bins[:i] merged
into 128 levels and expanded back to i bins (each level's mass spread evenly over its
non-empty bins, empty bins stay empty); both normalised; the i with the smallest KL(P||Q)
gives amax = (i + 0.5) * bin width (capped at the largest |x| seen). Levels: bin j of
threshold i belongs to level floor(128 * j / i).

Exact zeros are left out of the entropy search: they are representable at any scale, so
they carry no quantization error, yet after a ReLU they are half of all values and their
spike in bin 0 would drag the threshold down (to a quarter of the range on FasterViT's
stem, costing 0.03 of logit cosine). pytorch-quantization neutralises the same spike by
setting bins[0] = bins[1]; both give the same scales here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import OptionsError

NUM_BINS = 2048
NUM_LEVELS = 128  # int8 magnitudes
METHODS = ("entropy", "minmax", "percentile")


@dataclass
class Histogram:
    """Counts of |x| in ``NUM_BINS`` bins of ``width``; ``amax`` is the largest |x| seen."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS, np.float64))
    width: float = 0.0
    amax: float = 0.0
    zeros: int = 0  # exact zeros among the counts (all in bin 0)

    def update(self, values: np.ndarray) -> None:
        magnitudes = np.abs(values.reshape(-1))
        if magnitudes.size == 0:
            return
        batch_max = float(magnitudes.max())
        self.amax = max(self.amax, batch_max)
        self.zeros += magnitudes.size - int(np.count_nonzero(magnitudes))
        if batch_max > self.width * NUM_BINS:
            self._grow(batch_max)
        if self.width == 0.0:  # everything so far is exactly zero
            self.counts[0] += magnitudes.size
            return
        index = (magnitudes * np.float32(1.0 / self.width)).astype(np.int32)
        np.minimum(index, NUM_BINS - 1, out=index)
        self.counts += np.bincount(index, minlength=NUM_BINS)

    def _grow(self, new_max: float) -> None:
        if self.width == 0.0:
            self.width = new_max / NUM_BINS
            return
        factor = 1
        while self.width * factor * NUM_BINS < new_max:
            factor *= 2
        if factor >= NUM_BINS:
            merged = np.zeros(NUM_BINS)
            merged[0] = self.counts.sum()
        else:
            merged = np.zeros(NUM_BINS)
            merged[: NUM_BINS // factor] = self.counts.reshape(-1, factor).sum(axis=1)
        self.counts, self.width = merged, self.width * factor


def entropy_divergences(counts: np.ndarray, start: int = NUM_LEVELS) -> np.ndarray:
    """KL(P||Q) for every threshold bin i in ``start``..len-1 (index 0 = ``start``); inf if Q
    misses mass that P has."""
    h = np.asarray(counts, np.float64)
    total = h.sum()
    thresholds = np.arange(start, len(h))
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
        mass = np.concatenate(([0.0], np.cumsum(h)))
        nonzero = np.concatenate(([0], np.cumsum(h > 0)))
        plogp_prefix = np.concatenate(([0.0], np.cumsum(hlogh)))
        # level boundaries: level g of threshold i covers bins [ceil(g*i/L), ceil((g+1)*i/L))
        starts = -(-np.arange(NUM_LEVELS + 1)[None, :] * thresholds[:, None] // NUM_LEVELS)
        level_mass = mass[starts[:, 1:]] - mass[starts[:, :-1]]
        level_bins = nonzero[starts[:, 1:]] - nonzero[starts[:, :-1]]
        level_density = np.where(level_bins > 0, level_mass / np.maximum(level_bins, 1), 0.0)
        outliers = total - mass[thresholds]
        last = h[thresholds - 1]
        p_last = last + outliers
        sum_plogp = plogp_prefix[thresholds - 1] + np.where(
            p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0
        )
        log_density = np.log(np.where(level_density > 0, level_density, 1.0))
        sum_plogq = (level_mass * log_density).sum(axis=1) + outliers * log_density[:, -1]
        inside = mass[thresholds]
        kl = (sum_plogp - sum_plogq) / total - np.log(total) + np.log(inside)
        kl = np.where(((last == 0) & (outliers > 0)) | (inside == 0), np.inf, kl)
    return kl


def entropy_amax(hist: Histogram) -> float:
    """The threshold minimising KL divergence (EntropyCalibration2)."""
    counts = hist.counts.copy()
    counts[0] -= hist.zeros
    if hist.amax == 0.0 or counts.sum() == 0:
        return 0.0
    divergences = entropy_divergences(counts)
    if not np.isfinite(divergences).any():  # all mass in the last bin (e.g. one repeated value)
        return hist.amax
    best = int(np.argmin(divergences)) + NUM_LEVELS
    return min((best + 0.5) * hist.width, hist.amax)


def percentile_amax(hist: Histogram, percentile: float = 99.99) -> float:
    """|x| below which ``percentile`` % of the values fall (linear within a bin)."""
    total = hist.counts.sum()
    if hist.amax == 0.0 or total == 0:
        return 0.0
    cumulative = np.cumsum(hist.counts)
    target = total * percentile / 100.0
    index = int(np.searchsorted(cumulative, target))
    before = cumulative[index - 1] if index > 0 else 0.0
    fraction = (target - before) / hist.counts[index] if hist.counts[index] else 1.0
    return min((index + fraction) * hist.width, hist.amax)


def compute_amax(hist: Histogram, method: str, percentile: float = 99.99) -> float:
    """The clipping magnitude of one tensor by ``method`` (entropy, minmax, percentile)."""
    if method == "entropy":
        return entropy_amax(hist)
    if method == "minmax":
        return hist.amax
    if method == "percentile":
        return percentile_amax(hist, percentile)
    raise OptionsError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
