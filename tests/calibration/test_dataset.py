"""Calibration inputs from folders and .npy files; deterministic; bad data fails clearly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fastervit_trt.calibration.dataset import (
    DEFAULT_DATA,
    MIN_IMAGES,
    CalibrationData,
    CalibrationDataError,
    find_images,
)
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
    real_load, real_open = dataset.load_image, dataset._header_problem
    monkeypatch.setattr(dataset, "load_image", lambda path, **kw: decoded.append(path) or real_load(path, **kw))
    monkeypatch.setattr(dataset, "_header_problem", lambda path: opened.append(path) or real_open(path))
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


def _bad_files(folder):
    """A truncated JPEG (its header reads, its pixels do not), text named .jpg, a zero-byte .png."""
    _photo(folder / "b_truncated.jpg", seed=99)
    whole = (folder / "b_truncated.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "c_fake.jpg").write_text("these are notes, not a photo")
    (folder / "d_empty.png").write_bytes(b"")
    return {"b_truncated.jpg": "decoding failed", "c_fake.jpg": "cannot decode the image", "d_empty.png": "empty file"}


def test_small_folder_skips_unreadable_files_and_calibrates(tmp_path, caplog):
    """8 photos and 3 bad files, 16 inputs asked: every input is made from the 8 photos, each
    bad file is one warning for both splits, and the report counts them."""
    for i in range(8):
        _photo(tmp_path / f"a{i}.{'jpg' if i % 2 else 'png'}", seed=i)
    bad = _bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fastervit_trt.calibration.dataset"):
        calibration = CalibrationData(tmp_path, PRE, 16)
        batches = list(calibration.batches(4))
        heldout = CalibrationData(tmp_path, PRE, 12, split="heldout")
        held = list(heldout.batches(4))
    assert [b.shape for b in batches] == [(4, 3, 64, 64)] * 4 and [b.shape for b in held] == [(4, 3, 64, 64)] * 3
    for data in (calibration, heldout):
        assert sorted(p.name for p in data.skipped) == sorted(bad)
        assert "3 unreadable files skipped" in data.describe() and "crops of 8 images" in data.describe()
    for name, why in bad.items():
        lines = [r for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1 and why in lines[0].getMessage() and lines[0].levelno == logging.WARNING
    shortage = [r.getMessage() for r in caplog.records if "usable images" in r.getMessage()]
    assert len(shortage) == 2 and "8 usable images (3 unreadable skipped) for 16 calibration inputs" in shortage[0]
    assert "the other 8 inputs are seeded crops and flips" in shortage[0]
    assert "8 usable images (3 unreadable skipped) for 12 heldout inputs" in shortage[1]
    assert not any(r.exc_info for r in caplog.records)
    again = CalibrationData(tmp_path, PRE, 16)
    assert np.array_equal(np.concatenate(list(again.batches(4))), np.concatenate(batches))  # deterministic
    assert np.array_equal(again.sample(13), CalibrationData(tmp_path, PRE, 16).sample(13))  # in any order


def test_large_folder_replaces_bad_files_by_the_next_ones(tmp_path, caplog):
    """Disjoint mode: a bad file of the split is replaced by the split's next file, warned once."""
    for i in range(12):
        _photo(tmp_path / f"{i:02d}.jpg", seed=i)
    full = (tmp_path / "00.jpg").read_bytes()
    (tmp_path / "00.jpg").write_bytes(full[: len(full) // 3])  # header reads, decoding fails
    (tmp_path / "01.jpg").write_bytes(b"")  # refused from its header
    with caplog.at_level(logging.WARNING, logger="fastervit_trt.calibration.dataset"):
        data = CalibrationData(tmp_path, PRE, 4)
        batch = next(data.batches(4))
        again = next(data.batches(4))
    assert data.disjoint and batch.shape == (4, 3, 64, 64) and np.array_equal(batch, again)
    assert [p.name for p in data.skipped] == ["01.jpg", "00.jpg"]  # 01 at its header, 00 when decoded
    assert sorted(item.path.name for item in data._images) == ["02.jpg", "03.jpg", "04.jpg", "05.jpg"]
    assert [sum(name in r.getMessage() for r in caplog.records) for name in ("00.jpg", "01.jpg")] == [1, 1]
    assert "2 unreadable files skipped" in data.describe() and "disjoint" in data.describe()


def test_too_few_readable_images_says_how_many_and_what_to_do(tmp_path):
    for i in range(MIN_IMAGES - 1):
        _photo(tmp_path / f"a{i}.png", seed=i)
    _bad_files(tmp_path)
    data = CalibrationData(tmp_path, PRE, 16)
    with pytest.raises(CalibrationDataError) as error:
        list(data.batches(4))
    message = str(error.value)
    assert f"not enough readable images: {MIN_IMAGES - 1} usable, 3 unreadable and skipped" in message
    assert f"at least {MIN_IMAGES}" in message and "add readable images" in message and "--calib-data" in message


def test_minimum_is_met_by_the_shipped_photos():
    assert 1 < MIN_IMAGES <= len(find_images(DEFAULT_DATA)[0])


def test_stored_inputs_read_back_slice_by_slice(tmp_path):
    """Held-out inputs live in a file and come back a slice at a time, bit for bit."""
    from fastervit_trt.calibration.dataset import StoredInputs

    arrays = np.random.default_rng(0).standard_normal((7, 3, 5, 6)).astype(np.float32)
    stored = StoredInputs(tmp_path / "held.npy", iter(arrays), len(arrays))
    assert len(stored) == 7
    np.testing.assert_array_equal(np.concatenate([stored[i : i + 3] for i in range(0, 7, 3)]), arrays)
    np.testing.assert_array_equal(stored[:1], arrays[:1])
    np.testing.assert_array_equal(np.load(tmp_path / "held.npy"), arrays)  # a plain .npy file
