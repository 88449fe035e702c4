"""Run the FP32 ONNX graph in ONNX Runtime over calibration batches, accumulating histograms.

Only the histograms are kept between batches, never the activations, so memory does not
grow with the number of images. Tensor names are the ONNX names, which are the TensorRT
network's tensor names too.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from .dataset import CalibrationData
from .ranges import Histogram


def _session_with_outputs(model_path: Path, tensors: list[str]):
    import onnxruntime as ort
    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in tensors if name not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def collect_histograms(model_path: Path, tensors: list[str], data: CalibrationData, batch_size: int,
                       stream: TextIO | None = sys.stderr) -> tuple[dict[str, Histogram], int]:
    """Histograms of |x| for ``tensors`` over ``data``; returns (histograms, images seen)."""
    from tqdm import tqdm
    session = _session_with_outputs(model_path, tensors)
    input_name = session.get_inputs()[0].name
    histograms = {name: Histogram() for name in tensors}
    seen = 0
    total = len(data) // batch_size * batch_size
    with tqdm(total=total, unit="img", desc="calibrating", file=stream, disable=stream is None,
              dynamic_ncols=True, mininterval=1.0) as bar:
        for batch in data.batches(batch_size):
            outputs = session.run(tensors, {input_name: batch})
            for name, value in zip(tensors, outputs):
                histograms[name].update(np.asarray(value))
            seen += len(batch)
            bar.update(len(batch))
    return histograms, seen
