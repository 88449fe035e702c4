"""Image preprocessing = the variant's timm eval transform, in NumPy + Pillow (no torch).

Used everywhere an image becomes a model input (calibration, validation, evaluation, the
runtime), always built from the model's own eval config so the numbers match training:
RGB -> resize (by ``crop_pct``, with the config's interpolation and crop mode) -> centre
crop -> [0, 1] -> normalise by mean/std -> float32 CHW.

- ``center``: the shorter side goes to ``floor(size / crop_pct)`` (non-square targets:
  the side with the smaller scale ratio), then a centre crop of ``size``.
- ``squash``: both sides go to ``floor(size / crop_pct)``, then a centre crop.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, OptionsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the RGB statistics every official FasterViT was trained with
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# the photos shipped with the toolkit (calibration/ in a source checkout)
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "calibration"
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
INTERPOLATIONS = tuple(_RESAMPLE)
CROP_MODES = ("center", "squash")  # squash at crop_pct 1.0: a plain resize to the input size


ImageSource = str | Path | bytes | BinaryIO
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white, as viewers show them


def load_image(
    source: ImageSource, exif_rotate: bool = True, reduce_to: Callable[[int, int], tuple[int, int]] | None = None
) -> Image.Image:
    """Decode ``source`` (a path, encoded bytes or a binary file object) as an 8-bit RGB image.

    As people have images: EXIF orientation applied (phone photos upright; ``exif_rotate=False``
    keeps the stored pixels), 16-bit grayscale scaled to 8 bits (not clipped), CMYK and
    palette converted, transparency composited onto ``BACKGROUND``, the first frame of an
    animation. ``reduce_to(width, height)`` gives the smallest size a JPEG may be decoded
    at: libjpeg then scales it down by 1/2, 1/4 or 1/8 in the DCT domain, several times
    faster than a full decode. Raises ImageError naming the file; a decompression bomb is
    refused from its header, before any pixel is decoded.
    """
    name = source if isinstance(source, (str, Path)) else "<image bytes>"
    empty = source == b"" if isinstance(source, bytes) else isinstance(source, (str, Path)) and _is_empty(source)
    if empty:
        raise ImageError(f"{name}: {EMPTY_IMAGE}; {IMAGE_FIX}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.seek(0)
            if reduce_to is not None and image.format == "JPEG":
                image.draft("RGB", reduce_to(*image.size))
            image.load()  # decoded while the file is open; the steps below copy only if they must
            if exif_rotate:
                ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: {undecodable(exc)}; {IMAGE_FIX}") from None


EMPTY_IMAGE = "empty file (0 bytes)"  # calibration, infer, batch and serve say a failure in the same words
IMAGE_FIX = "check that it is a readable JPEG/PNG/WebP/BMP"


def undecodable(exc: BaseException) -> str:
    """What an image Pillow cannot read is called, everywhere: ``cannot decode the image (OSError)``."""
    return f"cannot decode the image ({exc.__class__.__name__})"


def _is_empty(path: str | Path) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:  # missing: Pillow says so below
        return False


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey: 65535 -> 255
        grey = np.asarray(image, dtype=np.float32)
        if image.mode != "I" or grey.max() > 255:  # 32-bit "I" holding 8-bit values stays as is
            grey = grey / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


INPUT_FORMATS = {
    "float": "float32 NCHW, normalised with the model's mean and std",
    "uint8": "uint8 NHWC RGB, resized and cropped; the graph normalises it",
    "pixels": "float32 NCHW RGB pixels 0..255, resized and cropped; the graph normalises them",
}


@dataclass(frozen=True)
class TransformOptions:
    """Eval-transform settings a user gives for their model (timm's data-config names); None
    leaves the setting to the checkpoint's training record, else to the variant. Each field's
    metadata spells its ``fastervit-export`` flag; one with ``choices`` is refused outside them."""

    mean: tuple[float, float, float] | None = field(
        default=None,
        metadata={"flag": "--mean", "nargs": 3, "metavar": ("R", "G", "B"), "help": "per-channel mean, 0..1 scale"},
    )
    std: tuple[float, float, float] | None = field(
        default=None,
        metadata={"flag": "--std", "nargs": 3, "metavar": ("R", "G", "B"), "help": "per-channel std, 0..1 scale"},
    )
    interpolation: str | None = field(
        default=None, metadata={"flag": "--interpolation", "choices": INTERPOLATIONS, "help": "resize filter"}
    )
    crop_pct: float | None = field(
        default=None,
        metadata={
            "flag": "--crop-pct",
            "range": (0, 1),
            "low_open": True,
            "metavar": "F",
            "help": "resize to input size / F before the centre crop (1: no margin cropped)",
        },
    )
    crop_mode: str | None = field(  # "squash" with crop_pct 1.0: a plain resize, no crop
        default=None,
        metadata={
            "flag": "--crop-mode",
            "choices": CROP_MODES,
            "help": "center: the shorter side is resized, then centre-cropped; squash: both sides resized "
            "(with --crop-pct 1: a plain resize to the input size, as DeepStream's nvinfer scales)",
        },
    )

    def __post_init__(self) -> None:
        for name, value in self.given().items():  # lists, as argparse's nargs gives them
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        check_transform(self.given())

    def given(self) -> dict:
        """The settings given, by name."""
        return {k: v for k, v in asdict(self).items() if v is not None}


TRANSFORM_SETTINGS = tuple(f.name for f in fields(TransformOptions))


def check_transform(settings: Mapping[str, Any]) -> None:
    """Refuse eval-transform settings this preprocessing cannot apply (OptionsError, one line):
    a value outside its field's ``choices``, a count other than its ``nargs``, a std or crop_pct
    out of range."""
    for option in fields(TransformOptions):
        if option.name not in settings:
            continue
        value, meta = settings[option.name], option.metadata
        if "nargs" in meta and len(value) != meta["nargs"]:
            values = " ".join(meta["metavar"])
            raise OptionsError(f"{meta['flag']} takes {meta['nargs']} values ({values}), not {list(value)}")
        if "choices" in meta and value not in meta["choices"]:
            name = option.name.replace("_", " ")
            raise OptionsError(f"{name} {value!r}: use one of {', '.join(meta['choices'])}")
    if any(not 0 <= v <= 1 for v in settings.get("mean", ())):
        raise OptionsError(f"--mean {_values(settings['mean'])}: on the 0..1 scale: divide by 255")
    if any(not 0 < v <= 1 for v in settings.get("std", ())):
        raise OptionsError(f"--std {_values(settings['std'])}: above 0 and at most 1 on the 0..1 scale: divide by 255")
    if "crop_pct" in settings and not 0 < settings["crop_pct"] <= 1:
        raise OptionsError(f"--crop-pct {settings['crop_pct']:g}: the share of the image kept, above 0 and at most 1")


def _values(values: Any) -> str:
    """``124 116 104``: a flag's values as typed."""
    return " ".join(f"{v:g}" for v in values)


def recorded_transform(record: Mapping[str, Any]) -> dict:
    """The eval-transform settings a training run recorded (timm's ``args``, data-config names),
    each as ``Preprocess`` holds it; unset ones (None or "", as timm leaves them) are left out."""
    defaults: dict[str, Any] = {option.name: option.default for option in fields(Preprocess)}
    found: dict[str, Any] = {}
    for name in TRANSFORM_SETTINGS:
        value, default = record.get(name), defaults[name]
        if isinstance(default, tuple):
            if isinstance(value, (list, tuple)) and len(value) == len(default):
                found[name] = tuple(float(v) for v in value)
        elif isinstance(value, (int, float, str)) and value != "" and not isinstance(value, bool):
            found[name] = type(default)(value)
    return found


@dataclass(frozen=True)
class Preprocess:
    """The eval transform of one model; call it on a PIL image to get the model's input: a
    normalised float32 (3, H, W) array; with ``input_format="uint8"`` the resized, cropped
    uint8 (H, W, 3) image, with ``"pixels"`` its float32 (3, H, W) pixel values 0..255 (graphs
    exported with ``--input uint8`` / ``--input pixels`` normalise them themselves)."""

    input_size: tuple[int, int]
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    jpeg_draft: bool = (
        False  # fast: large JPEGs decoded at a reduced scale, only the crop resized (False: bitwise timm)
    )
    input_format: str = "float"  # or "uint8", "pixels"

    def __post_init__(self) -> None:
        for option in fields(self):  # as records hold them: lists, and whole numbers as ints
            value = getattr(self, option.name)
            if isinstance(value, list) or (isinstance(option.default, float) and isinstance(value, int)):
                object.__setattr__(self, option.name, tuple(value) if isinstance(value, list) else float(value))
        if self.input_format not in INPUT_FORMATS:
            raise OptionsError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, not {self.input_format!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One input's shape: (3, H, W) floats or pixels, or (H, W, 3) uint8."""
        return (*self.input_size, 3) if self.input_format == "uint8" else (3, *self.input_size)

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.input_format == "uint8" else np.float32)

    def record(self) -> dict:
        """The JSON form every artifact keeps (ONNX metadata, engine sidecar, a calibration
        cache's settings, Triton's config); ``from_config`` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Mapping | object) -> Preprocess:
        """From an ``EvalConfig``, a ``record()`` or its older dict forms (ONNX metadata, engine
        sidecar); a setting it lacks takes its default here."""
        get: Callable[[str], Any] = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
        given = {option.name: get(option.name) for option in fields(cls)}
        return cls(**{name: value for name, value in given.items() if value is not None})

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest size a JPEG of ``width`` x ``height`` may be decoded at: twice what the
        exact path resizes to, on both sides (so an EXIF rotation cannot make it smaller)."""
        side = 2 * max(self.resize_size(width, height))
        return side, side

    def load(self, source: ImageSource, exif_rotate: bool = True) -> np.ndarray:
        """Decode ``source`` and preprocess it; with ``jpeg_draft`` a JPEG of at least twice
        the resize size decodes at a reduced scale first, then resizes exactly as always."""
        return self(load_image(source, exif_rotate, self.draft_size if self.jpeg_draft else None))

    def resize_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image is resized to before the centre crop."""
        target_h, target_w = self.input_size
        scale_h, scale_w = math.floor(target_h / self.crop_pct), math.floor(target_w / self.crop_pct)
        if self.crop_mode == "squash":
            return scale_w, scale_h
        if self.crop_mode != "center":
            raise OptionsError(f"unsupported crop mode {self.crop_mode!r}; use 'center' or 'squash'")
        if scale_h == scale_w:  # shorter side to the scale size, longer side truncated
            short, long = sorted((width, height))
            new_long = int(scale_h * long / short)
            return (scale_h, new_long) if width <= height else (new_long, scale_h)
        ratio = min(height / scale_h, width / scale_w)
        return round(width / ratio), round(height / ratio)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Resize per the crop mode, then centre-crop to ``input_size`` (still a PIL image).

        With ``jpeg_draft`` only the pixels the crop keeps are computed: the same filter over
        the same source positions, one axis at a time (a single call with a box on both axes
        strays by up to 24 levels in Pillow 13), within two levels of the full resize
        (Pillow takes box corners as float32)."""
        size = self.resize_size(*image.size)
        crop_h, crop_w = self.input_size
        top, left = int(round((size[1] - crop_h) / 2.0)), int(round((size[0] - crop_w) / 2.0))
        crop, resample = (left, top, left + crop_w, top + crop_h), _RESAMPLE[self.interpolation]
        if size == image.size:
            return image.crop(crop)
        if not self.jpeg_draft:
            return image.resize(size, resample).crop(crop)
        scale_x, scale_y = image.width / size[0], image.height / size[1]
        columns = image.resize(
            (crop_w, image.height), resample, box=(left * scale_x, 0, (left + crop_w) * scale_x, image.height)
        )
        return columns.resize((crop_w, crop_h), resample, box=(0, top * scale_y, crop_w, (top + crop_h) * scale_y))

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(self.resize_and_crop(image if image.mode == "RGB" else image.convert("RGB")))
        if self.input_format == "pixels":
            return np.ascontiguousarray(np.moveaxis(pixels, -1, -3), dtype=np.float32)
        return pixels if self.input_format == "uint8" else self.normalize(pixels)

    def normalized(self, batch: np.ndarray) -> np.ndarray:
        """A batch in this input format as normalised float32 NCHW (what the graph computes first)."""
        if self.input_format == "float":
            return batch
        return self.normalize(batch if self.input_format == "uint8" else np.moveaxis(batch, -3, -1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(..., H, W, 3) pixel values 0..255 -> normalised float32 (..., 3, H, W) inputs: what a
        ``--input uint8`` (or ``pixels``) graph computes from them."""
        pixels = pixels.astype(np.float32) / np.float32(255)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(pixels, -1, -3))


def sample_inputs(preprocess: Preprocess, count: int) -> np.ndarray | None:
    """``count`` shipped photos (evenly spread, sorted by name) through ``preprocess``;
    None when the photos are not there (an installed package without the source tree)."""
    photos = (
        sorted(p for p in SAMPLE_IMAGES.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if SAMPLE_IMAGES.is_dir()
        else []
    )
    if not photos:
        return None
    chosen = (
        [photos[i * len(photos) // count] for i in range(count)]
        if count <= len(photos)
        else [photos[i % len(photos)] for i in range(count)]
    )
    return np.stack([preprocess.load(path) for path in chosen])
