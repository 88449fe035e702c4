"""Calibration inputs from folders and .npy files; deterministic; bad data fails clearly."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fastervit_trt.calibration.dataset import (DEFAULT_DATA, CalibrationData, CalibrationDataError,
                                               find_images)
from fastervit_trt.preprocess import Preprocess

PRE = Preprocess((64, 64), crop_pct=0.875, crop_mode="center")


def _photo(path, seed, size=(80, 60)):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_shipped_set_has_twelve_real_photos_and_expands_to_64():
    images, others = find_images(DEFAULT_DATA)
    assert len(images) >= 12 and [p.name for p in others] == ["README.md"]
    assert sum(p.path.stat().st_size for p in images) <= 15e6
    data = CalibrationData(DEFAULT_DATA, PRE, 64)
    samples = np.stack([data.sample(i) for i in range(64)])
    assert len({s.tobytes() for s in samples}) == 64  # all distinct inputs
    again = CalibrationData(DEFAULT_DATA, PRE, 64)
    assert np.array_equal(again.sample(37), samples[37])  # deterministic


def test_heldout_crops_differ_from_calibration_inputs():
    calibration = CalibrationData(DEFAULT_DATA, PRE, 64)
    heldout = CalibrationData(DEFAULT_DATA, PRE, 32, split="heldout")
    seen = {calibration.sample(i).tobytes() for i in range(64)}
    assert not any(heldout.sample(i).tobytes() in seen for i in range(32))


def test_recursive_folder_with_labels_skips_corrupt_files(tmp_path, caplog):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            _photo(tmp_path / label / f"{i}.JPG", seed=i)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("x")
    images, others = find_images(tmp_path)
    assert {img.label for img in images} == {"cat", "dog"} and [p.name for p in others] == ["notes.txt"]
    with caplog.at_level(logging.WARNING):
        data = CalibrationData(tmp_path, PRE, 8)
    assert [p.name for p in data.skipped] == ["broken.png"]
    assert sum("broken.png" in r.message for r in caplog.records) == 1
    assert any("skipped 1 unreadable and 1 non-image" in r.message for r in caplog.records)
    batches = list(data.batches(4))
    assert [b.shape for b in batches] == [(4, 3, 64, 64)] * 2 and batches[0].dtype == np.float32


def test_npy_source(tmp_path):
    array = np.random.default_rng(0).standard_normal((10, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", array)
    data = CalibrationData(tmp_path / "inputs.npy", PRE, 8)
    assert np.array_equal(np.concatenate(list(data.batches(4))), array[:8])
    with pytest.raises(CalibrationDataError, match=r"expected preprocessed inputs of shape \(N, 3, 32, 32\)"):
        CalibrationData(tmp_path / "inputs.npy", Preprocess((32, 32)), 8)


def test_empty_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="no usable image"):
        CalibrationData(tmp_path, PRE, 8)


def test_folder_of_non_images(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    with pytest.raises(CalibrationDataError, match=r"no usable image \(1 unreadable of 1 image files, 1 other"):
        CalibrationData(tmp_path, PRE, 8)


def test_fewer_inputs_than_one_batch(tmp_path):
    array = np.zeros((3, 3, 64, 64), np.float32)
    np.save(tmp_path / "three.npy", array)
    data = CalibrationData(tmp_path / "three.npy", PRE, 16)
    with pytest.raises(CalibrationDataError, match="fewer than one batch of 8"):
        list(data.batches(8))


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="no such folder"):
        CalibrationData(tmp_path / "nope", PRE, 8)
