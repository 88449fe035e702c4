"""Turn what a service receives into one model batch, without importing torch.

Accepted, alone or in a list: image file paths, encoded image bytes or binary file objects,
PIL images, uint8 HWC (or NHWC) arrays (decoded images, RGB), float32 CHW / NCHW arrays
(already preprocessed), and torch tensors (float NCHW preprocessed, on the CPU or a CUDA
device). Lists of encoded images are decoded on a thread pool (Pillow releases the GIL).
A model exported with ``--input uint8`` takes the resized, cropped uint8 (H, W, 3) images
instead of floats (a CUDA uint8 NHWC batch of that size goes to it as is); preprocessed
floats are refused there.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..preprocess import Preprocess


def is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "data_ptr")


def is_cuda_tensor(value: Any) -> bool:
    return is_torch_tensor(value) and value.is_cuda


def is_encoded(item: Any) -> bool:
    """A path, encoded bytes or a binary file object: an image still to decode."""
    return isinstance(item, (str, Path, bytes, bytearray, memoryview, io.IOBase))


def to_input(item: Any, preprocess: Preprocess, exif_rotate: bool = True) -> np.ndarray:
    """One input -> the model's input (``preprocess.input_shape``)."""
    if isinstance(item, (bytearray, memoryview)):
        item = bytes(item)
    if is_encoded(item):
        return preprocess.load(item, exif_rotate)
    if isinstance(item, Image.Image):
        return preprocess(item)
    if is_torch_tensor(item):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] in (1, 3, 4):
            return preprocess(Image.fromarray(item.squeeze(-1) if item.shape[-1] == 1 else item))
        if item.dtype.kind == "f" and preprocess.input_format == "uint8":
            raise _floats_refused(item.shape)
        if item.dtype.kind == "f" and item.shape == preprocess.input_shape:
            return item.astype(np.float32, copy=False)
        raise InputError(
            f"array of shape {item.shape} and dtype {item.dtype} is neither a uint8 HWC "
            f"image nor a preprocessed float (3, {preprocess.input_size[0]}, "
            f"{preprocess.input_size[1]}) input"
        )
    raise InputError(
        f"cannot use a {type(item).__name__} as an image; pass a path, a PIL image, "
        "a uint8 HWC array or a preprocessed float array"
    )


def _floats_refused(shape: tuple) -> InputError:
    return InputError(
        f"float array of shape {shape}: this model was exported with --input uint8 and "
        "normalises images itself; pass images (paths, bytes, PIL or uint8 arrays)"
    )


DECODE_THREADS = min(8, os.cpu_count() or 1)
_decoders: ThreadPoolExecutor | None = None
_decoders_made = threading.Lock()


def decoders() -> ThreadPoolExecutor:
    """The process's image-decoding threads (``DECODE_THREADS``), made on first use."""
    global _decoders
    with _decoders_made:
        if _decoders is None:
            _decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="fastervit-decode")
    return _decoders


def _decode_all(items: Sequence[Any], preprocess: Preprocess, exif_rotate: bool) -> np.ndarray:
    """Decode and preprocess ``items`` in parallel (order kept)."""
    if len(items) == 1 or DECODE_THREADS == 1:
        return np.stack([to_input(item, preprocess, exif_rotate) for item in items])
    return np.stack(list(decoders().map(lambda item: to_input(item, preprocess, exif_rotate), items)))


def to_batch(inputs: Any, preprocess: Preprocess, exif_rotate: bool = True) -> np.ndarray | Any:
    """A batch of the model's input: float32 (N, 3, H, W), or uint8 (N, H, W, 3) for a
    ``--input uint8`` model; a CUDA torch batch of that shape is returned as is."""
    expected = preprocess.input_shape
    if is_cuda_tensor(inputs) and inputs.ndim == 4 and tuple(inputs.shape[1:]) == expected:
        return inputs
    if is_torch_tensor(inputs):
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind == "f" and preprocess.input_format == "uint8":
            raise _floats_refused(inputs.shape)
        if inputs.ndim == 4 and inputs.dtype.kind == "f":
            if tuple(inputs.shape[1:]) != expected:
                raise InputError(f"batch of shape {inputs.shape}; the model takes (N, {', '.join(map(str, expected))})")
            return np.ascontiguousarray(inputs, dtype=np.float32)
        if inputs.ndim == 4 and inputs.dtype == np.uint8:
            return np.stack([to_input(image, preprocess) for image in inputs])
        return to_input(inputs, preprocess)[None]
    if is_encoded(inputs) or isinstance(inputs, Image.Image):
        return to_input(inputs, preprocess, exif_rotate)[None]
    if isinstance(inputs, Sequence) and len(inputs) > 0:
        return _decode_all(inputs, preprocess, exif_rotate)
    raise InputError(
        "no input given" if isinstance(inputs, Sequence) else f"cannot use a {type(inputs).__name__} as model input"
    )
