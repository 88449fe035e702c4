"""Run the FP32 ONNX graph in ONNX Runtime over calibration batches, accumulating histograms.

Only the histograms are kept between batches, never the activations, so memory does not
grow with the number of images. The requested activations never exceed
``ACTIVATION_BUDGET``: the graph is cut, in node order, into segments whose requested
activations for one image fit it, and each batch flows through the segments one after the
other (one ONNX Runtime session each, holding only its own weights), passing on only the
tensors later segments read. So every image goes through the network once, whatever the
resolution, and memory stays near that of one inference (a batch whose outputs would
exceed the budget runs in smaller chunks: at high resolutions, one image at a time).
Tensor names are the ONNX names, which are the TensorRT network's tensor names too.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass
class Segment:
    """Consecutive nodes of the graph, run as one session."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # activations it produces that are histogrammed
    bytes_per_image: int = 0  # float32 bytes of ``requested`` for one image
    inputs: list[str] = field(default_factory=list)  # what it reads from earlier segments or the graph input
    outputs: list[str] = field(default_factory=list)  # ``requested`` + what it makes that ``carried`` holds
    carried: set[str] = field(default_factory=set)  # what later segments read: kept alive after this one
    types: dict[str, int] = field(default_factory=dict)  # element type of each input and output


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def split_graph(model: onnx.ModelProto, tensors: list[str], budget: int = ACTIVATION_BUDGET) -> list[Segment]:
    """The nodes ``tensors`` depend on, cut in graph order into segments whose requested
    activations for one image fit ``budget`` bytes (a larger tensor gets a segment of its own).
    Requested graph inputs are not produced by any segment: histogram them from the feed."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name: v.type.tensor_type for v in [*inferred.value_info, *inferred.input]}
    requested = set(tensors)
    produced = {out for node in graph.node for out in node.output}
    unknown = requested - produced - {i.name for i in graph.input}
    if unknown:
        raise ValueError(f"calibration tensors not in the graph: {', '.join(sorted(unknown))}")

    def size(name: str) -> int:
        return 4 * math.prod(d.dim_value or 1 for d in list(known[name].shape.dim)[1:]) if name in known else 4

    needed, nodes = set(requested), []  # the ancestors of ``tensors`` only: no head after the last one
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
    segments = [Segment()]
    for node in reversed(nodes):
        mine = [out for out in node.output if out in requested]
        extra = sum(size(out) for out in mine)
        if mine and segments[-1].requested and segments[-1].bytes_per_image + extra > budget:
            segments.append(Segment())
        segment = segments[-1]
        segment.nodes.append(node)
        segment.requested += mine
        segment.bytes_per_image += extra
    weights = {init.name for init in graph.initializer}
    for segment in segments:
        made = {out for node in segment.nodes for out in node.output}
        segment.inputs = _unique(i for node in segment.nodes for i in node.input if i not in made and i not in weights)
    read_later: set[str] = set()
    for segment in reversed(segments):
        segment.carried = set(read_later)
        segment.outputs = _unique([*segment.requested, *(out for node in segment.nodes for out in node.output
                                                           if out in read_later)])
        read_later.update(segment.inputs)
        segment.types = {n: known[n].elem_type if n in known else TensorProto.FLOAT
                         for n in [*segment.inputs, *segment.outputs]}
    return [segment for segment in segments if segment.nodes]


def _session(model: onnx.ModelProto, segment: Segment, path: Path):
    """A session running ``segment``; saved at ``path``, beside the external weights it refers to."""
    used = {i for node in segment.nodes for i in node.input}
    graph = helper.make_graph(
        segment.nodes, f"{model.graph.name}_segment",
        [helper.make_tensor_value_info(n, segment.types[n], None) for n in segment.inputs],
        [helper.make_tensor_value_info(n, segment.types[n], None) for n in segment.outputs],
        [init for init in model.graph.initializer if init.name in used])
    part = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    part.functions.extend(model.functions)
    path.write_bytes(part.SerializeToString())
    return cpu_session(path)


def collect_histograms(model_path: Path, tensors: list[str], data: CalibrationData, batch_size: int,
                       stream: TextIO | None = sys.stderr,
                       budget: int = ACTIVATION_BUDGET) -> tuple[dict[str, Histogram], int]:
    """Histograms of |x| for ``tensors`` over ``data``; returns (histograms, images seen)."""
    model = onnx.load(str(model_path), load_external_data=False)
    (graph_input,) = [i.name for i in model.graph.input if i.name not in {w.name for w in model.graph.initializer}]
    segments = split_graph(model, tensors, budget)
    sessions = [_session(model, segment, model_path.parent / f"calibration_{index}.onnx")
                for index, segment in enumerate(segments)]
    del model
    histograms = {name: Histogram() for name in tensors}
    chunk = max(1, min(batch_size, budget // max(1, max(s.bytes_per_image for s in segments))))
    total = len(data) // batch_size * batch_size  # exact batches: the remainder is dropped
    with Bar(total, "calibrating", "img", stream) as bar:
        for batch in data.batches(batch_size):
            for start in range(0, len(batch), chunk):
                values = {graph_input: batch[start:start + chunk]}
                if graph_input in histograms:
                    histograms[graph_input].update(values[graph_input])
                for segment, session in zip(segments, sessions):
                    values.update(zip(segment.outputs, session.run(segment.outputs,
                                                                   {n: values[n] for n in segment.inputs})))
                    for name in segment.requested:
                        histograms[name].update(np.asarray(values[name]))
                    values = {n: v for n, v in values.items() if n in segment.carried}
            bar.update(len(batch))
    del sessions
    release_memory()
    return histograms, total
