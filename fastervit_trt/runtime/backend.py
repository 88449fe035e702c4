"""What ``InferenceModel`` needs of a backend: TensorRT (``tensorrt_backend``) and ONNX
Runtime (``onnxruntime_backend``) both provide it."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """A loaded engine or ONNX file that runs batches of the model's input."""

    input_name: str
    output_names: list[str]
    input_dtype: np.dtype
    input_shape: tuple[int, ...]  # one input's shape, without the batch axis
    output_shapes: dict[str, tuple[int, ...]]  # each output's shape per input
    max_batch: int  # the most inputs one ``infer_all`` call takes

    def infer(self, batch: Any) -> np.ndarray:
        """The first output (a classifier's logits) of ``batch``."""
        ...

    def infer_all(self, batch: Any) -> dict[str, np.ndarray]:
        """Every output of ``batch`` (at most ``max_batch`` inputs), by name."""
        ...

    def close(self) -> None: ...


def join_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of consecutive slices of one batch, joined per output."""
    return {name: np.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name] for name in parts[0]}
