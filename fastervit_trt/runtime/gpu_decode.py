"""JPEG batches decoded, resized and normalised on the GPU (nvJPEG through torchvision).

``GpuDecoder(preprocess)(items)`` returns a float32 CUDA tensor (N, 3, H, W) (uint8
(N, H, W, 3) crops for a ``--input uint8`` model) that the TensorRT backend reads in place:
no decoded image ever crosses to the host. EXIF orientation is applied as on the CPU path:
torchvision applies it only to CPU decodes, so the orientation tag is read on the host
(Pillow parses the header, no pixels) and the decoded tensor rotated or flipped on the GPU.
Resizing is torchvision's antialiased resize with the model's interpolation, a close match
of Pillow's (not bitwise: the exact path stays on the CPU). The mean and std live on the
device, made once per decoder; torch and torchvision are imported when one is made.

Only 8-bit colour or grey JPEGs within Pillow's pixel limit (read from the header, so a
decompression bomb is refused before the GPU allocates it) go to nvJPEG. Everything else
(other formats, CMYK, broken headers), and any JPEG nvJPEG fails on, takes the CPU path
(``load_image``) and is uploaded: it decodes there or gets the CPU path's error, naming it,
while the batch's other images decode. torchvision keeps one nvJPEG decoder per process and
makes it again, leaking the old one, whenever a call names another device
(decode_jpegs_cuda.cpp): so this process decodes JPEGs on one device, the first one asked
for, one call at a time, and moves the images to each model's device (a device-to-device
copy; models on other devices share that device's decoding).
"""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from ..preprocess import ImageError, ImageSource, Preprocess, load_image
from .inputs import InputError

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112
NVJPEG_MODES = ("RGB", "L")  # 8-bit YCbCr (or RGB) and grey; CMYK/YCCK fail in nvJPEG

_decoding = threading.Lock()
_decode_device: Any = None  # the torch.device this process decodes JPEGs on, set by the first decode


def _source(item: Any) -> Path | bytes:
    """A path as is (the CPU path names it in its errors), anything else as its bytes."""
    if isinstance(item, (str, Path)):
        return Path(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if hasattr(item, "read"):
        return item.read()
    raise InputError(f"decode='gpu' takes paths, bytes or file objects, not a {type(item).__name__}")


def _bytes(source: Path | bytes) -> bytes | None:
    if isinstance(source, Path):
        try:
            return source.read_bytes()
        except OSError:  # the CPU path reports it
            return None
    return source


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when it has none."""
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def nvjpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG nvJPEG decodes (colour or grey, within Pillow's pixel
    limit), from its header; None for anything else: the CPU path decodes or reports it."""
    if not data.startswith(JPEG_MAGIC):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # refuses a decompression bomb, as load_image
            return exif_orientation(image) if image.mode in NVJPEG_MODES else None
    except Exception:
        return None


def decode_jpegs(tensors: list, device: str) -> list:
    """JPEG byte tensors (CPU) decoded by nvJPEG as uint8 RGB (3, H, W) tensors on this
    process's decoding device: ``device`` on the first call, then the same one on every call
    (see the module's docstring), always named with its index: torchvision's decoder
    synchronises its results with the current stream of the device current when it was made,
    which is the device named (its CUDAGuard), or for a plain "cuda" whichever was current;
    that device is current around the call too. Raises RuntimeError, with no partial
    results, when one image fails."""
    global _decode_device
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with _decoding:
        if _decode_device is None:
            _decode_device = torch.device(device)
            if _decode_device.type == "cuda" and _decode_device.index is None:
                _decode_device = torch.device("cuda", torch.cuda.current_device())
        on_device = torch.cuda.device(_decode_device) if _decode_device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            if _decode_device.type == "cuda":
                # the outputs are allocated on the current stream but written on the decoder's own,
                # which does not wait for it: a block freed here may still be read by work queued on
                # it (decode_jpegs_cuda.cpp), so that work finishes first
                torch.cuda.current_stream().synchronize()
            return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=_decode_device)


def orient(image: Any, orientation: int) -> Any:
    """A (C, H, W) tensor shown upright: what Pillow's ``exif_transpose`` does to its pixels."""
    if orientation in (5, 6, 7, 8):  # the stored rows are the picture's columns
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image


class GpuDecoder:
    """Decodes encoded images for one model's preprocessing on ``device``."""

    def __init__(self, preprocess: Preprocess, device: str = "cuda") -> None:
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("decode='gpu' needs a CUDA GPU (torch sees none); use the default CPU decoding")
        self.torch, self.preprocess, self.device = torch, preprocess, device
        self.mean = torch.tensor(preprocess.mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(preprocess.std, device=device).view(3, 1, 1)

    def __call__(self, items: list, exif_rotate: bool = True) -> Any:
        """A batch of ``items`` through the preprocessing, in the model's input format; raises
        the first image's ImageError (naming the file) when one cannot be decoded."""
        images = self.decode(items, exif_rotate)
        for image in images:
            if isinstance(image, ImageError):
                raise image
        return self.torch.stack([self.transform(image) for image in images])

    def decode(self, items: list, exif_rotate: bool = True) -> list:
        """Each of ``items`` (paths, bytes or file objects) as a uint8 (3, H, W) tensor on the
        device, upright unless not ``exif_rotate``, or the ImageError that decoding it raised."""
        sources = [_source(item) for item in items]
        jpegs, orientations = {}, {}
        for i, source in enumerate(sources):
            data = _bytes(source)
            orientation = None if data is None else nvjpeg_orientation(data)
            if data is not None and orientation is not None:
                jpegs[i], orientations[i] = data, orientation
        decoded = self._nvjpeg(jpegs)
        images = []
        for i, source in enumerate(sources):
            if i in decoded:
                images.append(orient(decoded[i], orientations[i]) if exif_rotate else decoded[i])
            else:
                images.append(self._on_the_cpu(source, exif_rotate))
        return images

    def _nvjpeg(self, jpegs: dict[int, bytes]) -> dict[int, Any]:
        """The images nvJPEG decodes of ``jpegs`` (index: bytes), by index, on the device."""
        torch = self.torch
        if not jpegs:
            return {}
        try:
            images = decode_jpegs(
                [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs.values()], self.device
            )
        except RuntimeError:  # one image (or the list's size) fails the whole list: each alone, failures to the CPU
            if len(jpegs) == 1:
                return {}
            alone: dict[int, Any] = {}
            for i, data in jpegs.items():
                alone.update(self._nvjpeg({i: data}))
            return alone
        return {i: image.to(self.device) for i, image in zip(jpegs, images)}

    def _on_the_cpu(self, source: ImageSource, exif_rotate: bool) -> Any:
        """``source`` decoded (and oriented) by the CPU path and uploaded, or its ImageError."""
        import numpy as np

        try:
            pixels = np.asarray(load_image(source, exif_rotate))
        except ImageError as error:
            return error
        return self.torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(self.device)

    def transform(self, image: Any) -> Any:
        """One upright uint8 (3, H, W) image resized, centre-cropped and normalised (or kept
        as uint8 (H, W, 3) crops for a ``--input uint8`` model)."""
        import torchvision.transforms.v2.functional as F

        preprocess = self.preprocess
        crop_h, crop_w = preprocess.input_size
        width, height = preprocess.resize_size(image.shape[2], image.shape[1])
        image = F.resize(
            image.float(), [height, width], antialias=True, interpolation=F.InterpolationMode(preprocess.interpolation)
        )
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        image = image[:, top : top + crop_h, left : left + crop_w].round().clamp(0, 255)  # as 8-bit pixels
        if preprocess.input_format == "uint8":
            return image.to(self.torch.uint8).permute(1, 2, 0).contiguous()
        return image if preprocess.input_format == "pixels" else (image / 255.0 - self.mean) / self.std
