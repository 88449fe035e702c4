"""Calibration inputs from folders and .npy files; deterministic; bad data fails clearly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fastervit_trt.calibration.dataset import DEFAULT_DATA, CalibrationData, CalibrationDataError, find_images
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


def test_large_folder_decodes_only_the_images_used(tmp_path, monkeypatch):
    """A folder of 600 images in 20 classes, 16 calibration inputs: 16 files are decoded (and
    their headers read), spread over 16 classes; the held-out images are other files."""
    import fastervit_trt.calibration.dataset as dataset

    for label in range(20):
        folder = tmp_path / f"class_{label:02d}"
        folder.mkdir()
        for i in range(30):
            Image.new("RGB", (40, 30), (label * 10, i * 8, 0)).save(folder / f"{i:03d}.jpg")
    decoded, opened = [], []
    real_load, real_open = dataset.load_image, dataset._openable
    monkeypatch.setattr(dataset, "load_image", lambda path, **kw: decoded.append(path) or real_load(path, **kw))
    monkeypatch.setattr(dataset, "_openable", lambda path: opened.append(path) or real_open(path))
    data = CalibrationData(tmp_path, PRE, 16)
    assert data.disjoint and len(opened) == 16 and decoded == []
    batch = next(data.batches(16))
    assert batch.shape == (16, 3, 64, 64) and len(decoded) == 16
    assert len({path.parent.name for path in decoded}) == 16  # one image from each of 16 classes
    calibration_files = set(decoded)
    heldout = CalibrationData(tmp_path, PRE, 8, split="heldout")
    next(heldout.batches(8))
    assert len(decoded) == 24 and calibration_files.isdisjoint(decoded[16:])
    assert "disjoint" in heldout.describe()


def test_unreadable_image_is_replaced_by_the_next_file(tmp_path, caplog):
    for i in range(12):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(tmp_path / f"{i:02d}.jpg")
    full = (tmp_path / "00.jpg").read_bytes()
    (tmp_path / "00.jpg").write_bytes(full[: len(full) // 3])  # header reads, decoding fails
    data = CalibrationData(tmp_path, PRE, 4)
    with caplog.at_level(logging.WARNING):
        batch = next(data.batches(4))
    assert batch.shape == (4, 3, 64, 64) and [p.name for p in data.skipped] == ["00.jpg"]


def test_stored_inputs_read_back_slice_by_slice(tmp_path):
    """Held-out inputs live in a file and come back a slice at a time, bit for bit."""
    from fastervit_trt.calibration.dataset import StoredInputs

    arrays = np.random.default_rng(0).standard_normal((7, 3, 5, 6)).astype(np.float32)
    stored = StoredInputs(tmp_path / "held.npy", iter(arrays), len(arrays))
    assert len(stored) == 7
    np.testing.assert_array_equal(np.concatenate([stored[i : i + 3] for i in range(0, 7, 3)]), arrays)
    np.testing.assert_array_equal(stored[:1], arrays[:1])
    np.testing.assert_array_equal(np.load(tmp_path / "held.npy"), arrays)  # a plain .npy file
