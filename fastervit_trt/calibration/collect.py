"""Run the FP32 ONNX graph in ONNX Runtime over calibration batches, accumulating histograms.

Only the histograms are kept between batches, never the activations, so memory does not
grow with the number of images. The requested activations never exceed
``ACTIVATION_BUDGET``: a batch whose outputs would is run in smaller chunks (at high
resolutions, one image at a time), and only if one image's outputs exceed it are the
tensors split into groups, one pass over the data each. So memory stays near that of one
inference whatever the resolution. Tensor names are the ONNX names, which are the
TensorRT network's tensor names too.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..export.ort_cpu import cpu_session, release_memory
from ..progress import Bar
from .dataset import CalibrationData
from .ranges import Histogram

ACTIVATION_BUDGET = 1 << 27  # bytes of requested activations alive at once


def _session_with_outputs(model: onnx.ModelProto, folder: Path, tensors: list[str], index: int):
    """A session whose outputs are ``tensors``; the graph is saved in ``folder`` beside the
    external weights it refers to."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in tensors)
    path = folder / f"calibration_{index}.onnx"
    path.write_bytes(probe.SerializeToString())
    return cpu_session(path)


def output_groups(model: onnx.ModelProto, tensors: list[str],
                  budget: int = ACTIVATION_BUDGET) -> list[tuple[list[str], int]]:
    """``tensors`` split, in order, into groups whose float32 activations for one image fit
    ``budget`` bytes (a larger tensor gets a group of its own), each with its bytes per image."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: v.type.tensor_type.shape.dim for v in [*inferred.value_info, *inferred.input]}

    def size(name: str) -> int:
        return 4 * math.prod(d.dim_value or 1 for d in list(dims.get(name, []))[1:])

    groups: list[tuple[list[str], int]] = [([], 0)]
    for name in tensors:
        names, used = groups[-1]
        if names and used + size(name) > budget:
            groups.append(([], 0))
            names, used = groups[-1]
        names.append(name)
        groups[-1] = (names, used + size(name))
    return groups


def collect_histograms(model_path: Path, tensors: list[str], data: CalibrationData, batch_size: int,
                       stream: TextIO | None = sys.stderr) -> tuple[dict[str, Histogram], int]:
    """Histograms of |x| for ``tensors`` over ``data``; returns (histograms, images seen)."""
    model = onnx.load(str(model_path), load_external_data=False)
    groups = output_groups(model, tensors)
    histograms = {name: Histogram() for name in tensors}
    total = len(data) // batch_size * batch_size  # exact batches: the remainder is dropped
    with Bar(total * len(groups), "calibrating", "img", stream) as bar:
        for index, (group, per_image) in enumerate(groups):
            session = _session_with_outputs(model, model_path.parent, group, index)
            input_name = session.get_inputs()[0].name
            chunk = max(1, min(batch_size, ACTIVATION_BUDGET // max(per_image, 1)))
            for batch in data.batches(batch_size):
                for start in range(0, len(batch), chunk):
                    for name, value in zip(group, session.run(group, {input_name: batch[start:start + chunk]})):
                        histograms[name].update(np.asarray(value))
                bar.update(len(batch))
            del session
            release_memory()
    return histograms, total
