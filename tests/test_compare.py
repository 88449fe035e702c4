from __future__ import annotations

import numpy as np
import pytest

from fastervit_trt.compare import compare


def test_compare_reports_diff_cosine_and_agreement():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    cand = np.array([[1.0, 2.0, 2.5], [-3.0, 0.0, 1.0]])
    report = compare(ref, cand)
    assert report.max_abs_diff == pytest.approx(6.0)
    assert report.relative_diff == pytest.approx(2.0)
    cos0 = (1 + 4 + 7.5) / (np.sqrt(14) * np.sqrt(11.25))
    assert report.mean_cosine == pytest.approx((cos0 - 1) / 2)
    assert report.min_cosine == pytest.approx(-1.0)
    assert report.top1_agreement == 0.5


def test_compare_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        compare(np.zeros((2, 3)), np.zeros((2, 4)))
