"""JPEG batches decoded, resized and normalised on the GPU (nvJPEG through torchvision).

``decode_on_gpu(items, preprocess)`` returns a float32 CUDA tensor (N, 3, H, W) (uint8
(N, H, W, 3) crops for a ``--input uint8`` model) that the TensorRT backend reads in place: no decoded image ever crosses to the host. Resizing is
torchvision's antialiased resize with the model's interpolation, a close match of Pillow's
(not bitwise: the exact path stays on the CPU). Files that are not JPEGs are decoded on the
CPU and uploaded. torch and torchvision are imported on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..preprocess import Preprocess, load_image
from .inputs import InputError

JPEG_MAGIC = b"\xff\xd8\xff"


def _read(item: Any) -> bytes:
    if isinstance(item, (str, Path)):
        return Path(item).read_bytes()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if hasattr(item, "read"):
        return item.read()
    raise InputError(f"decode='gpu' takes paths, bytes or file objects, not a {type(item).__name__}")


def decode_on_gpu(items: list, preprocess: Preprocess, exif_rotate: bool = True):
    """A CUDA batch of ``items`` through ``preprocess``'s transform, in its input format."""
    import torch
    import torchvision.transforms.v2.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg
    if not torch.cuda.is_available():
        raise InputError("decode='gpu' needs a CUDA GPU (torch sees none); use the default CPU decoding")
    data = [_read(item) for item in items]
    jpegs = [i for i, d in enumerate(data) if d.startswith(JPEG_MAGIC)]
    images: list = [None] * len(data)
    if jpegs:
        decoded = decode_jpeg([torch.frombuffer(data[i], dtype=torch.uint8) for i in jpegs],
                              mode=ImageReadMode.RGB, device="cuda", apply_exif_orientation=exif_rotate)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, image in enumerate(images):
        if image is None:  # PNG, WebP, ...: decoded on the CPU, uploaded once
            import numpy as np
            pixels = np.asarray(load_image(data[i], exif_rotate))
            images[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1).cuda()
    mean = torch.tensor(preprocess.mean, device="cuda").view(3, 1, 1)
    std = torch.tensor(preprocess.std, device="cuda").view(3, 1, 1)
    crop_h, crop_w = preprocess.input_size
    batch = []
    for image in images:
        width, height = preprocess.resize_size(image.shape[2], image.shape[1])
        image = F.resize(image.float(), [height, width], antialias=True,
                         interpolation=F.InterpolationMode(preprocess.interpolation))
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        image = image[:, top:top + crop_h, left:left + crop_w].round().clamp(0, 255)  # as 8-bit pixels
        batch.append(image.to(torch.uint8).permute(1, 2, 0) if preprocess.input_format == "uint8"
                     else (image / 255.0 - mean) / std)
    return torch.stack(batch).contiguous()
