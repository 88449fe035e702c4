"""ONNX Runtime on the CPU as the exporter and the calibration algorithms measure a graph:
a few inputs per pass (memory independent of their number), float32 outputs ``flatten``-ed."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from ..compare import flatten
from .ort_cpu import cpu_session
from .segments import WEIGHT_BUDGET, SegmentedGraph
from .weights import tensor_bytes

EVAL_CHUNK = 4  # inputs per forward pass when checking a graph: memory independent of their number

QDQ_CHUNK = EVAL_CHUNK // 2  # Q/DQ graphs run unfused hold each quantized tensor twice more

EVAL_PIXELS = 384 * 384  # above this, fewer inputs per pass (window attention grows faster than pixels)


class InputSet(Protocol):
    """N inputs sliced into NumPy batches: an array, or inputs kept on disk (StoredInputs)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> np.ndarray: ...


def eval_chunk(inputs: InputSet, images: int = EVAL_CHUNK) -> int:
    """Inputs per forward pass: ``images`` up to ``EVAL_PIXELS`` RGB pixels each,
    proportionally fewer (at least one) for larger ones (four 576x960 inputs through
    FasterViT-4-21K-512's 32x32 windows hold 2 GB of attention)."""
    values = inputs[:1].size  # NCHW or NHWC alike
    return max(1, min(images, images * 3 * EVAL_PIXELS // values))


def ort_logits(model: Path | bytes, inputs: InputSet, optimize: bool = True, images: int = EVAL_CHUNK) -> np.ndarray:
    """Run an ONNX file (or serialized model) with ONNX Runtime on the CPU (inputs as the
    graph's input type, float32 logits out; several outputs ``flatten``-ed),
    ``eval_chunk(inputs, images)`` at a time so that memory does not grow with their number.

    ``optimize=False`` disables graph optimizations: Q/DQ graphs then compute plain
    quantize/dequantize arithmetic, the closest CPU estimate of what TensorRT computes
    (ONNX Runtime's fused CPU int8 kernels lose fidelity of their own). A file then runs
    in segments when its weights exceed ``WEIGHT_BUDGET``.
    """
    session = (
        SegmentedGraph(model, weight_budget=WEIGHT_BUDGET, optimize=False)
        if not optimize and isinstance(model, Path) and _weight_bytes(model) > WEIGHT_BUDGET
        else cpu_session(model, optimize)
    )
    feed = session.get_inputs()[0]
    dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(feed.type, np.float32)  # the exports' inputs
    chunk = eval_chunk(inputs, images)
    return np.concatenate(
        [
            flatten(session.run(None, {feed.name: inputs[i : i + chunk].astype(dtype)}))
            for i in range(0, len(inputs), chunk)
        ]
    ).astype(np.float32)


def _weight_bytes(path: Path) -> int:
    return sum(map(tensor_bytes, onnx.load(str(path), load_external_data=False).graph.initializer))


def output_sizes(graph: onnx.ModelProto) -> dict[str, int]:
    """Values per input of each graph output, in order (what ``flatten`` puts end to end)."""
    return {o.name: int(np.prod([d.dim_value for d in o.type.tensor_type.shape.dim[1:]])) for o in graph.graph.output}
