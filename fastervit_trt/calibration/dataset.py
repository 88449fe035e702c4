"""Calibration inputs: a folder of images (read recursively) or a ``.npy`` of preprocessed NCHW.

A folder is only listed up front; an image is decoded when its input is asked for, so
memory and time do not grow with the folder (ImageNet's 50,000 validation images cost a
directory listing). The files are ordered class by class in turn (sub-folders are classes),
so any prefix of that order spreads over the classes. Every ``HELDOUT_EVERY``-th image of
that order belongs to the "heldout" split, the others to "calibration": with enough images
the two splits are disjoint sets of files, each input one image through the model's eval
transform. A folder too small for that (the shipped photos) is expanded deterministically:
every image also contributes seeded random crops (55-100 % of the shorter side) and flips,
and ``split`` picks the seed stream, so held-out inputs are other crops of the same photos.

Folders as people have them hold bad files: one that cannot be read (corrupt, truncated, empty,
not an image) is skipped with one warning per file and process, listed in ``skipped`` and
counted in ``describe()``. With disjoint files the split's next file replaces it; in the
expanded mode every image is decoded once before the first input is made, so the pool the
crops come from is fixed (the same folder gives the same inputs in any order of access), and
fewer usable images than inputs is a warning down to ``MIN_IMAGES``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CalibrationDataError
from ..preprocess import (
    EMPTY_IMAGE,
    IMAGE_SUFFIXES,
    SAMPLE_IMAGES,
    ImageError,
    Preprocess,
    load_image,
    undecodable,
)

log = logging.getLogger(__name__)

DEFAULT_DATA = SAMPLE_IMAGES
HELDOUT_EVERY = 8
# Below this many distinct photos the crops and flips standing in for the other inputs show
# too little content to set activation ranges (one photo's colours and textures would set
# them all). A judgement, kept low so that the shipped photos, or a folder with a few bad
# files, still calibrate (a test holds it to the shipped set); a shortage above it is a warning.
MIN_IMAGES = 4
_SPLIT_SEEDS = {"calibration": 0, "heldout": 1}
_WARNED: set[Path] = set()  # unreadable files already warned about in this process


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


def interleave_classes(images: list[LabelledImage]) -> list[LabelledImage]:
    """``images`` reordered class by class in turn (first of each class, then second, ...)."""
    by_label: dict[str | None, list[LabelledImage]] = {}
    for item in images:
        by_label.setdefault(item.label, []).append(item)
    columns = list(by_label.values())
    return [column[i] for i in range(max(map(len, columns), default=0)) for column in columns if i < len(column)]


def _header_problem(path: Path) -> str | None:
    """Why Pillow cannot read ``path``'s image header, or None when it can (reads the header only)."""
    try:
        if path.stat().st_size == 0:
            return EMPTY_IMAGE
        with Image.open(path):
            return None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return undecodable(exc)


def _decode_problem(exc: ImageError) -> str:
    """The decoder's own words for a file whose header read but whose pixels did not."""
    cause = exc.__context__  # load_image raises ImageError while handling Pillow's error
    return f"decoding failed ({cause})" if cause is not None and str(cause) else str(exc)


def _variant(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A seeded random crop (55-100 % of the shorter side), maybe flipped."""
    side = min(image.size) * rng.uniform(0.55, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w, h = min(image.width, side * aspect**0.5), min(image.height, side / aspect**0.5)
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
    skipped: list[Path] = field(default_factory=list)  # unreadable files; shared by an export's two splits

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.ignored: list[Path] = []
        self.disjoint = False  # held-out and calibration inputs come from different files
        self._array: np.ndarray | None = None
        self._images: list[LabelledImage] = []
        self._decoded = False  # expanded mode: every image of the pool decoded once
        if self.source.suffix == ".npy":
            self._array = self._load_array()
            return
        found, self.ignored = find_images(self.source)
        ordered = interleave_classes(found)
        mine = [
            item
            for i, item in enumerate(ordered)
            if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == (self.split == "heldout")
        ]
        if len(mine) >= self.count:  # this split's own files, one input each
            self._spare = iter(mine)
            self._images = self._take(self.count)
            self.disjoint = len(self._images) == self.count
        if not self.disjoint:  # every file (up to count) expanded by crops and flips
            self._spare = iter(ordered)
            self._images = self._take(min(self.count, len(ordered)))
        if not self._images:
            raise CalibrationDataError(
                f"{self.source}: no usable image ({len(self.skipped)} unreadable of {len(found)} image "
                f"files, {len(self.ignored)} other files); supported: {', '.join(IMAGE_SUFFIXES)}"
            )
        if self.ignored:
            log.info("%s: ignored %d non-image files", self.source, len(self.ignored))

    def _take(self, count: int) -> list[LabelledImage]:
        """Up to ``count`` more candidate files whose headers read."""
        return [item for item in (self._next_image() for _ in range(count)) if item]

    def _next_image(self) -> LabelledImage | None:
        """The next candidate file whose header reads, skipping those that do not."""
        for item in self._spare:
            problem = _header_problem(item.path)
            if problem is None:
                return item
            self._skip(item.path, problem)
        return None

    def _skip(self, path: Path, reason: str) -> None:
        """Count ``path`` as skipped; warn once per file and process (both splits meet it)."""
        if path not in self.skipped:
            self.skipped.append(path)
        key = path.resolve()
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning("%s: unreadable, skipped: %s", path, reason)

    def _load(self, item: LabelledImage) -> Image.Image | None:
        """The decoded image, or None (skipped with the reason) when it does not decode."""
        try:
            return load_image(item.path, reduce_to=self.preprocess.draft_size if self.preprocess.jpeg_draft else None)
        except ImageError as exc:
            self._skip(item.path, _decode_problem(exc))
            return None

    def _pool(self) -> list[LabelledImage]:
        """Expanded mode: the images that decode (later files replacing those that do not),
        found before any input is made so that input ``i`` never depends on the order asked."""
        if not self._decoded:
            candidates, usable = iter(self._images), list[LabelledImage]()
            while len(usable) < self.count and (item := next(candidates, None) or self._next_image()):
                if self._load(item) is not None:
                    usable.append(item)
            self._images = usable
            self._check_shortage()
            self._decoded = True
        return self._images

    def _check_shortage(self) -> None:
        """Fewer usable images than inputs: a warning, an error below ``MIN_IMAGES``."""
        usable, unreadable = len(self._images), len(self.skipped)
        if usable >= self.count:
            return
        if usable < MIN_IMAGES:
            raise CalibrationDataError(
                f"{self.source}: not enough readable images: {usable} usable, {unreadable} unreadable and "
                f"skipped, at least {MIN_IMAGES} needed; add readable images to the folder or pass "
                "--calib-data another folder"
            )
        rest = (
            f"the other {self.count - usable} inputs are seeded crops and flips of them"
            if self.split == "calibration"
            else "every input is a seeded crop or flip of one of them"
        )
        skipped = f" ({unreadable} unreadable skipped)" if unreadable else ""
        log.warning(
            "%s: %d usable images%s for %d %s inputs: %s", self.source, usable, skipped, self.count, self.split, rest
        )

    def describe(self) -> str:
        """Where the inputs come from, for reports."""
        if self._array is not None:
            return (
                f"the first {self.count} inputs (not held out: preprocessed inputs are used as given) of {self.source}"
            )
        if self.disjoint:
            what = (
                f"{self.count} {self.split} images (every {HELDOUT_EVERY}th file of the class-interleaved "
                f"order is held out, the rest calibrate: disjoint files) of {self.source}"
            )
        else:
            what = (
                f"{self.split} crops of {len(self._pool())} images (too few for disjoint held-out files: "
                f"held-out inputs are other crops of the same images) of {self.source}"
            )
        if not self.skipped:
            return what
        names = ", ".join(p.name for p in self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
        return f"{what}; {len(self.skipped)} unreadable files skipped ({names})"

    def _load_array(self) -> np.ndarray:
        try:
            array = np.load(self.source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationDataError(f"{self.source}: not a readable .npy array ({exc})") from None
        expected, wanted = self.preprocess.input_shape, self.preprocess.input_dtype
        what = (
            "uint8 images (resized and cropped, NHWC)"
            if wanted == np.uint8
            else "preprocessed float32 inputs (normalised with the model's mean and std, NCHW)"
        )
        if array.dtype != wanted and (wanted == np.uint8 or array.dtype not in (np.float16, np.float64)):
            raise CalibrationDataError(
                f"{self.source}: holds {array.dtype} values, but --calib-data FILE.npy must be {what}; "
                "pass the image folder instead and the toolkit preprocesses it"
            )
        if array.dtype != wanted:
            log.warning("%s: %s inputs converted to float32", self.source, array.dtype)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise CalibrationDataError(
                f"{self.source}: expected preprocessed inputs of shape (N, {', '.join(map(str, expected))}) "
                f"({what}), found {array.shape}"
            )
        if len(array) < self.count:
            log.warning(
                "%s: %d inputs available, %d requested; using %d", self.source, len(array), self.count, len(array)
            )
            self.count = len(array)
        return array

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> np.ndarray:
        """The ``index``-th preprocessed input (``Preprocess.input_shape``); deterministic."""
        if self._array is not None:
            return np.asarray(self._array[index], dtype=self.preprocess.input_dtype)
        if self.disjoint:
            return self.preprocess(self._decode(index))
        pool = self._pool()
        position, round_ = index % len(pool), index // len(pool)
        image = self._decode(position)
        if self.split == "calibration" and round_ == 0:
            return self.preprocess(image)
        rng = np.random.default_rng([_SPLIT_SEEDS[self.split], position, round_])
        return self.preprocess(_variant(image, rng))

    def _decode(self, position: int) -> Image.Image:
        """Decode image ``position``; with disjoint files one that fails is replaced by the next."""
        while (image := self._load(self._images[position])) is None:
            if not self.disjoint:
                raise CalibrationDataError(
                    f"{self._images[position].path}: decoded before calibration, unreadable now; "
                    "keep the folder unchanged while calibrating"
                )
            replacement = self._next_image()
            if replacement is None:
                raise CalibrationDataError(
                    f"{self.source}: not enough readable images: {self.count} {self.split} inputs asked, "
                    f"{len(self.skipped)} files unreadable and skipped; add readable images to the folder, "
                    "pass --calib-data another folder or lower --calib-images"
                )
            self._images[position] = replacement
        return image

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Exact batches of ``batch_size`` (the remainder is dropped, never padded)."""
        if self.count < batch_size:
            raise CalibrationDataError(
                f"{self.source}: {self.count} calibration inputs are fewer than one batch of "
                f"{batch_size}; add images, raise --calib-images or lower --calib-batch"
            )
        for start in range(0, self.count - batch_size + 1, batch_size):
            yield np.stack([self.sample(i) for i in range(start, start + batch_size)])


class StoredInputs:
    """Preprocessed inputs (float32, or uint8 images) in a ``.npy`` file, read a slice at a
    time: held-out inputs at high resolution (32 at 800x1216 are 373 MB) cost the slice in
    use, not the whole set. Reads go through the file (no memory map), so pages read once do
    not stay in the process."""

    def __init__(self, path: Path, samples: Iterator[np.ndarray], count: int) -> None:
        self.path, self.count = Path(path), count
        with open(self.path, "wb") as fh:
            for index, sample in enumerate(samples):
                sample = np.ascontiguousarray(sample, dtype=np.float32 if sample.dtype.kind == "f" else None)
                if index == 0:
                    self.sample_shape, self.dtype = sample.shape, sample.dtype
                    np.lib.format.write_array_header_2_0(
                        fh,
                        {
                            "descr": np.lib.format.dtype_to_descr(sample.dtype),
                            "fortran_order": False,
                            "shape": (count, *sample.shape),
                        },
                    )
                    self.offset = fh.tell()
                fh.write(sample.tobytes())
        self.per_sample = int(np.prod(self.sample_shape))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.count)
        if step != 1:
            raise IndexError("StoredInputs takes contiguous slices")
        count = max(stop - start, 0)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.per_sample * self.dtype.itemsize)
            flat = np.fromfile(fh, dtype=self.dtype, count=count * self.per_sample)
        return flat.reshape(count, *self.sample_shape)
