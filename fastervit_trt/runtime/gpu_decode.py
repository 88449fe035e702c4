"""JPEG batches decoded, resized and normalised on the GPU (nvJPEG through torchvision).

``GpuDecoder(preprocess)(items)`` returns a float32 CUDA tensor (N, 3, H, W) (uint8
(N, H, W, 3) crops for a ``--input uint8`` model) that the TensorRT backend reads in place:
no decoded image ever crosses to the host. EXIF orientation is applied as on the CPU path:
torchvision applies it only to CPU decodes, so the orientation tag is read on the host
(Pillow parses the header, no pixels) and the decoded tensor rotated or flipped on the GPU.
Resizing is torchvision's antialiased resize with the model's interpolation, a close match
of Pillow's (not bitwise: the exact path stays on the CPU). Files that are not JPEGs are
decoded on the CPU and uploaded. The mean and std live on the device, made once per
decoder; torch and torchvision are imported when one is made.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from ..preprocess import Preprocess, load_image
from .inputs import InputError

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


def _read(item: Any) -> bytes:
    if isinstance(item, (str, Path)):
        return Path(item).read_bytes()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if hasattr(item, "read"):
        return item.read()
    raise InputError(f"decode='gpu' takes paths, bytes or file objects, not a {type(item).__name__}")


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image; 1 when it has none or it cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken header: the decoder reports the file itself
        return 1
    return value if value in range(1, 9) else 1


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
        """A batch of ``items`` through the preprocessing, in the model's input format."""
        images = self.decode([_read(i) for i in items], exif_rotate)
        return self.torch.stack([self.transform(image) for image in images])

    def decode(self, data: list[bytes], exif_rotate: bool = True) -> list:
        """Each image as a uint8 (3, H, W) tensor on the device, upright unless not ``exif_rotate``."""
        from torchvision.io import ImageReadMode, decode_jpeg

        torch = self.torch
        jpegs = [i for i, d in enumerate(data) if d.startswith(JPEG_MAGIC)]
        images: list = [None] * len(data)
        if jpegs:
            decoded = decode_jpeg(
                [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in jpegs],
                mode=ImageReadMode.RGB,
                device=self.device,
            )
            for i, image in zip(jpegs, decoded):
                images[i] = orient(image, exif_orientation(data[i])) if exif_rotate else image
        for i, image in enumerate(images):
            if image is None:  # PNG, WebP, ...: decoded (and oriented) on the CPU, uploaded once
                import numpy as np

                pixels = np.asarray(load_image(data[i], exif_rotate))
                images[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(self.device)
        return images

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
