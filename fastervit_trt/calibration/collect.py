"""Run the FP32 ONNX graph in ONNX Runtime over calibration batches, accumulating histograms.

Only the histograms are kept between batches, never the activations, so memory does not
grow with the number of images. The tensors are requested as graph outputs in groups whose
activations for one batch fit ``ACTIVATION_BUDGET``; at high resolutions that means one pass
over the data per group, so memory stays near that of one inference. Tensor names are the
ONNX names, which are the TensorRT network's tensor names too.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..export.ort_cpu import cpu_session
from .dataset import CalibrationData
from .ranges import Histogram

ACTIVATION_BUDGET = 1 << 30  # bytes of requested activations alive at once


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


def output_groups(model: onnx.ModelProto, tensors: list[str], batch_size: int,
                  budget: int = ACTIVATION_BUDGET) -> list[list[str]]:
    """``tensors`` split, in order, into groups whose float32 activations for one batch fit
    ``budget`` bytes (a tensor larger than the budget gets a group of its own)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: v.type.tensor_type.shape.dim for v in [*inferred.value_info, *inferred.input]}

    def size(name: str) -> int:
        per_sample = math.prod(d.dim_value or 1 for d in list(dims.get(name, []))[1:])
        return 4 * batch_size * per_sample

    groups: list[list[str]] = [[]]
    used = 0
    for name in tensors:
        if groups[-1] and used + size(name) > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size(name)
    return groups


def collect_histograms(model_path: Path, tensors: list[str], data: CalibrationData, batch_size: int,
                       stream: TextIO | None = sys.stderr) -> tuple[dict[str, Histogram], int]:
    """Histograms of |x| for ``tensors`` over ``data``; returns (histograms, images seen)."""
    from tqdm import tqdm
    model = onnx.load(str(model_path), load_external_data=False)
    groups = output_groups(model, tensors, batch_size)
    histograms = {name: Histogram() for name in tensors}
    total = len(data) // batch_size * batch_size
    seen = 0
    with tqdm(total=total * len(groups), unit="img", desc="calibrating", file=stream,
              disable=stream is None, dynamic_ncols=True, mininterval=1.0) as bar:
        for index, group in enumerate(groups):
            session = _session_with_outputs(model, model_path.parent, group, index)
            input_name = session.get_inputs()[0].name
            seen = 0
            for batch in data.batches(batch_size):
                for name, value in zip(group, session.run(group, {input_name: batch})):
                    histograms[name].update(np.asarray(value))
                seen += len(batch)
                bar.update(len(batch))
            del session
    return histograms, seen
