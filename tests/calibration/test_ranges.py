"""Calibration ranges against a brute-force float64 reference of the published algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from fastervit_trt.calibration.ranges import Histogram, compute_amax, entropy_divergences, percentile_amax

from .reference import entropy_amax as reference_entropy_amax

RNG = np.random.default_rng(1234)
DISTRIBUTIONS = {
    "gaussian": RNG.standard_normal(60_000),
    "laplace": RNG.laplace(size=60_000),
    "heavy_tailed_outliers": np.concatenate([RNG.standard_t(3, 60_000), [40.0, -75.0, 160.0]]),
    "relu_gaussian": np.maximum(RNG.standard_normal(60_000), 0.0),
}


def _histogram(values: np.ndarray, batches: int = 6) -> Histogram:
    hist = Histogram()
    for chunk in np.array_split(values.astype(np.float32), batches):
        hist.update(chunk)
    return hist


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_entropy_equals_brute_force_reference(name):
    hist = _histogram(DISTRIBUTIONS[name])
    counts = hist.counts.copy()
    counts[0] -= hist.zeros
    expected, divergences = reference_entropy_amax(counts, hist.width)
    ours = entropy_divergences(counts)
    finite = np.isfinite(divergences)
    assert np.array_equal(finite, np.isfinite(ours))
    assert np.allclose(ours[finite], np.asarray(divergences)[finite], rtol=1e-9, atol=1e-12)
    assert compute_amax(hist, "entropy") == pytest.approx(min(expected, hist.amax), rel=1e-12)


def test_entropy_clips_outliers_but_keeps_the_bulk():
    hist = _histogram(DISTRIBUTIONS["heavy_tailed_outliers"])
    amax = compute_amax(hist, "entropy")
    assert 4.0 < amax < 40.0  # well inside the outliers, well outside the t(3) bulk
    assert compute_amax(hist, "minmax") == pytest.approx(160.0)


def test_real_activation_tensor(tmp_path):
    """A GELU output of faster_vit_0_224's first conv block on a real photo."""
    import torch

    from fastervit_trt.calibration.dataset import DEFAULT_DATA, CalibrationData
    from fastervit_trt.models import create_model
    from fastervit_trt.preprocess import Preprocess
    from tests.parity import randomize_

    model = randomize_(create_model("faster_vit_0_224"), seed=4)
    captured = []
    model.levels[0].blocks[0].act1.register_forward_hook(lambda m, i, o: captured.append(o.detach().numpy()))
    data = CalibrationData(DEFAULT_DATA, Preprocess.from_config(model.variant.eval), 2)
    with torch.no_grad():
        model(torch.from_numpy(np.stack([data.sample(0), data.sample(1)])))
    hist = _histogram(captured[0], batches=2)
    counts = hist.counts.copy()
    counts[0] -= hist.zeros
    expected, _ = reference_entropy_amax(counts, hist.width)
    assert compute_amax(hist, "entropy") == pytest.approx(min(expected, hist.amax), rel=1e-12)
    assert 0 < compute_amax(hist, "entropy") <= hist.amax


def test_all_zero_and_single_value():
    zeros = _histogram(np.zeros(1000))
    assert zeros.amax == 0.0 and zeros.zeros == 1000
    for method in ("entropy", "minmax", "percentile"):
        assert compute_amax(zeros, method) == 0.0
    single = _histogram(np.full(1000, -2.5))
    assert compute_amax(single, "minmax") == 2.5
    assert compute_amax(single, "entropy") == 2.5  # no finite divergence: nothing to clip
    assert compute_amax(single, "percentile") == pytest.approx(2.5, rel=1e-3)


def test_histogram_growth_equals_one_pass_at_the_final_range():
    """Doubling the range merges bins pairwise: the result is the histogram a single pass at
    the final bin width gives (up to float rounding of values on a bin edge)."""
    values = np.abs(RNG.standard_normal(10_000)).astype(np.float32)
    grown = Histogram()
    grown.update(values * 0.25)  # sets a fine range first
    grown.update(values)  # 4x the maximum: the range doubles twice
    one_pass = Histogram(width=grown.width)
    one_pass.update(values * 0.25)
    one_pass.update(values)
    assert one_pass.width == grown.width
    assert grown.counts.sum() == one_pass.counts.sum() == 20_000
    assert np.abs(grown.counts - one_pass.counts).sum() <= 4
    assert grown.amax == float(values.max())


def test_percentile_matches_numpy_within_a_bin():
    values = np.abs(DISTRIBUTIONS["laplace"])
    hist = _histogram(values)
    expected = np.percentile(values, 99.9)
    assert percentile_amax(hist, 99.9) == pytest.approx(expected, abs=hist.width)
