"""Calibration inputs: a folder of images (read recursively) or a ``.npy`` of preprocessed NCHW.

A folder is expanded deterministically to the requested number of inputs: with at least
that many images, an evenly spread subset goes through the model's eval transform as is;
with fewer, each image also contributes seeded random crops (55-100 % of the shorter side),
horizontal flips and scales. ``split`` picks a seed stream, so held-out inputs
("heldout") are other crops of the photos than the calibration ones ("calibration").
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FasterViTTRTError
from ..preprocess import IMAGE_SUFFIXES, SAMPLE_IMAGES, ImageError, Preprocess, load_image

log = logging.getLogger(__name__)

DEFAULT_DATA = SAMPLE_IMAGES
_SPLIT_SEEDS = {"calibration": 0, "heldout": 1}


class CalibrationDataError(FasterViTTRTError):
    """Calibration data that is missing, empty or unusable."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str | None  # sub-folder name, None for images at the top level


def find_images(folder: Path) -> tuple[list[LabelledImage], list[Path]]:
    """Image files under ``folder`` (sorted, labels from sub-folders) and the other files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationDataError(f"{folder}: no such folder; pass --calib-data DIR or FILE.npy")
    images, others = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            relative = path.relative_to(folder)
            images.append(LabelledImage(path, relative.parts[0] if len(relative.parts) > 1 else None))
        else:
            others.append(path)
    return images, others


def decode_all(images: list[LabelledImage]) -> tuple[list[tuple[LabelledImage, Image.Image]], list[Path]]:
    """Decode every image, skipping (with one warning each) those that cannot be read."""
    decoded, skipped = [], []
    for item in images:
        try:
            decoded.append((item, load_image(item.path)))
        except ImageError as exc:
            log.warning("skipped: %s", exc)
            skipped.append(item.path)
    return decoded, skipped


def _variant(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A seeded random crop (55-100 % of the shorter side), maybe flipped."""
    side = min(image.size) * rng.uniform(0.55, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w, h = min(image.width, side * aspect ** 0.5), min(image.height, side / aspect ** 0.5)
    left, top = rng.uniform(0, image.width - w), rng.uniform(0, image.height - h)
    crop = image.crop((round(left), round(top), round(left + w), round(top + h)))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


@dataclass
class CalibrationData:
    """``count`` preprocessed inputs from a folder or .npy file, served in batches."""

    source: Path
    preprocess: Preprocess
    count: int
    split: str = "calibration"

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.skipped: list[Path] = []
        self.ignored: list[Path] = []
        self._array: np.ndarray | None = None
        self._images: list[tuple[LabelledImage, Image.Image]] = []
        if self.source.suffix == ".npy":
            self._array = self._load_array()
        else:
            found, self.ignored = find_images(self.source)
            self._images, self.skipped = decode_all(found)
            if not self._images:
                detail = f"{len(self.skipped)} unreadable" if self.skipped else "none"
                raise CalibrationDataError(
                    f"{self.source}: no usable image ({detail} of {len(found)} image files, "
                    f"{len(self.ignored)} other files); supported: {', '.join(IMAGE_SUFFIXES)}")
            if self.skipped or self.ignored:
                (log.warning if self.skipped else log.info)(
                    "%s: using %d images; skipped %d unreadable and %d non-image files",
                    self.source, len(self._images), len(self.skipped), len(self.ignored))

    def _load_array(self) -> np.ndarray:
        try:
            array = np.load(self.source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationDataError(f"{self.source}: not a readable .npy array ({exc})") from None
        expected = (3, *self.preprocess.input_size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise CalibrationDataError(
                f"{self.source}: expected preprocessed inputs of shape (N, {', '.join(map(str, expected))}), "
                f"found {array.shape}")
        if len(array) < self.count:
            log.warning("%s: %d inputs available, %d requested; using %d", self.source,
                        len(array), self.count, len(array))
            self.count = len(array)
        return array

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> np.ndarray:
        """The ``index``-th preprocessed input, (3, H, W) float32; deterministic."""
        if self._array is not None:
            return np.asarray(self._array[index], dtype=np.float32)
        images = self._images
        if self.split == "calibration" and len(images) >= self.count:
            _, image = images[index * len(images) // self.count]
            return self.preprocess(image)
        position, round_ = index % len(images), index // len(images)
        _, image = images[position]
        if self.split == "calibration" and round_ == 0:
            return self.preprocess(image)
        rng = np.random.default_rng([_SPLIT_SEEDS[self.split], position, round_])
        return self.preprocess(_variant(image, rng))

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Exact batches of ``batch_size`` (the remainder is dropped, never padded)."""
        if self.count < batch_size:
            raise CalibrationDataError(
                f"{self.source}: {self.count} calibration inputs are fewer than one batch of "
                f"{batch_size}; add images, raise --calib-images or lower --calib-batch")
        for start in range(0, self.count - batch_size + 1, batch_size):
            yield np.stack([self.sample(i) for i in range(start, start + batch_size)])
