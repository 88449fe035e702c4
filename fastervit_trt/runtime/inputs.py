"""Turn what a service receives into one model batch, without importing torch.

Accepted, alone or in a list: image file paths, PIL images, uint8 HWC (or NHWC) arrays
(decoded images, RGB), float32 CHW / NCHW arrays (already preprocessed), and torch tensors
(float NCHW preprocessed, on the CPU or a CUDA device).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import FasterViTTRTError
from ..preprocess import Preprocess, load_image


class InputError(FasterViTTRTError):
    """An input the model cannot take (wrong shape, dtype or kind)."""


def is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "data_ptr")


def is_cuda_tensor(value: Any) -> bool:
    return is_torch_tensor(value) and value.is_cuda


def _one(item: Any, preprocess: Preprocess) -> np.ndarray:
    """One input -> (3, H, W) float32."""
    if isinstance(item, (str, Path)):
        return preprocess(load_image(item))
    if isinstance(item, Image.Image):
        return preprocess(item)
    if is_torch_tensor(item):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] in (1, 3, 4):
            return preprocess(Image.fromarray(item.squeeze(-1) if item.shape[-1] == 1 else item))
        if item.dtype.kind == "f" and item.shape == (3, *preprocess.input_size):
            return item.astype(np.float32, copy=False)
        raise InputError(f"array of shape {item.shape} and dtype {item.dtype} is neither a uint8 HWC "
                         f"image nor a preprocessed float (3, {preprocess.input_size[0]}, "
                         f"{preprocess.input_size[1]}) input")
    raise InputError(f"cannot use a {type(item).__name__} as an image; pass a path, a PIL image, "
                     "a uint8 HWC array or a preprocessed float array")


def to_batch(inputs: Any, preprocess: Preprocess) -> np.ndarray | Any:
    """A float32 (N, 3, H, W) batch; a CUDA torch batch of the right shape is returned as is."""
    expected = (3, *preprocess.input_size)
    if is_cuda_tensor(inputs) and inputs.ndim == 4 and tuple(inputs.shape[1:]) == expected:
        return inputs
    if is_torch_tensor(inputs):
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 4 and inputs.dtype.kind == "f":
            if tuple(inputs.shape[1:]) != expected:
                raise InputError(f"batch of shape {inputs.shape}; the model takes (N, {', '.join(map(str, expected))})")
            return np.ascontiguousarray(inputs, dtype=np.float32)
        if inputs.ndim == 4 and inputs.dtype == np.uint8:
            return np.stack([_one(image, preprocess) for image in inputs])
        return _one(inputs, preprocess)[None]
    if isinstance(inputs, (str, Path, Image.Image)):
        return _one(inputs, preprocess)[None]
    if isinstance(inputs, Sequence) and len(inputs) > 0:
        return np.stack([_one(item, preprocess) for item in inputs])
    raise InputError("no input given" if isinstance(inputs, Sequence) else
                     f"cannot use a {type(inputs).__name__} as model input")
