"""Run an ONNX graph as consecutive segments, one CPU session each, to bound its memory.

One ONNX Runtime session over a whole graph can keep far more alive than one inference
needs: the calibration outputs of every layer, or (on a graph with FP16 weights, which the
CPU computes in float32) a float32 copy of every weight at once. Cut in graph order into
segments, each session maps in only its own weights and holds only its own intermediate
tensors, and only the tensors later segments read are handed on. Every node runs once, as
in one session; a tensor handed on keeps the type the graph declares (one session over an
FP16 graph may keep a float32 value between two nodes the CPU computes in float32).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import OptionsError
from .ort_cpu import cpu_session
from .weights import tensor_bytes

# Stored weight bytes per segment: one ONNX Runtime session over a graph with FP16 weights
# holds a float32 copy of all of them at once (the CPU computes FP16 in float32), 2.2 GB for
# FasterViT-4-21K; in segments, one segment's weights are mapped and copied at a time.
WEIGHT_BUDGET = 1 << 27


@dataclass
class Segment:
    """Consecutive nodes of the graph, run as one session."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # of the tensors asked for, those it produces
    bytes_per_image: int = 0  # float32 bytes of ``requested`` for one image
    weight_bytes: int = 0  # stored bytes of the initializers its nodes read
    inputs: list[str] = field(default_factory=list)  # what it reads from earlier segments or the graph input
    outputs: list[str] = field(default_factory=list)  # ``requested`` + what it makes that ``carried`` holds
    carried: set[str] = field(default_factory=set)  # what later segments read: kept alive after this one
    types: dict[str, int] = field(default_factory=dict)  # element type of each input and output


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def split_graph(
    model: onnx.ModelProto, tensors: list[str], budget: int | None = None, weight_budget: int | None = None
) -> list[Segment]:
    """The nodes ``tensors`` depend on, cut in graph order into segments whose requested
    tensors for one image fit ``budget`` bytes (as float32) and whose weights fit
    ``weight_budget`` bytes (as stored); one larger tensor or node gets a segment of its own.
    Requested graph inputs are not produced by any segment: read them from the feed."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name: v.type.tensor_type for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    requested = set(tensors)
    produced = {out for node in graph.node for out in node.output}
    unknown = requested - produced - {i.name for i in graph.input}
    if unknown:
        raise OptionsError(f"tensors not in the graph: {', '.join(sorted(unknown))}")

    def size(name: str) -> int:
        return 4 * math.prod(d.dim_value or 1 for d in list(known[name].shape.dim)[1:]) if name in known else 4

    weights = {init.name: tensor_bytes(init) for init in graph.initializer}
    needed, nodes = set(requested), []  # the ancestors of ``tensors`` only: nothing after the last one
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
    segments = [Segment()]
    for node in reversed(nodes):
        mine = [out for out in node.output if out in requested]
        extra = sum(size(out) for out in mine)
        heavy = sum(weights.get(name, 0) for name in set(node.input))
        current = segments[-1]
        too_many_outputs = (
            budget is not None and mine and current.requested and current.bytes_per_image + extra > budget
        )
        too_heavy = (
            weight_budget is not None and heavy and current.nodes and current.weight_bytes + heavy > weight_budget
        )
        if too_many_outputs or too_heavy:
            segments.append(Segment())
        segment = segments[-1]
        segment.nodes.append(node)
        segment.requested += mine
        segment.bytes_per_image += extra
        segment.weight_bytes += heavy
    for segment in segments:
        made = {out for node in segment.nodes for out in node.output}
        segment.inputs = _unique(i for node in segment.nodes for i in node.input if i not in made and i not in weights)
    read_later: set[str] = set()
    for segment in reversed(segments):
        segment.carried = set(read_later)
        segment.outputs = _unique(
            [*segment.requested, *(out for node in segment.nodes for out in node.output if out in read_later)]
        )
        read_later.update(segment.inputs)
        segment.types = {
            n: known[n].elem_type if n in known else TensorProto.FLOAT for n in [*segment.inputs, *segment.outputs]
        }
    return [segment for segment in segments if segment.nodes]


class SegmentedGraph:
    """The graph at ``path`` (beside the external weights it refers to) as consecutive
    segments producing ``tensors`` (default: the graph's outputs), written beside it. With
    more than one segment, each runs in a session opened for that run and closed after it,
    so only its weights are mapped in (opening one takes milliseconds; a run at a high
    resolution, seconds). A session-like ``get_inputs()`` and ``run(None, feed)``."""

    def __init__(
        self,
        path: Path,
        tensors: list[str] | None = None,
        budget: int | None = None,
        weight_budget: int | None = WEIGHT_BUDGET,
        optimize: bool = True,
    ) -> None:
        model = onnx.load(str(path), load_external_data=False)
        weights = {init.name for init in model.graph.initializer}
        self.graph_input = next(i.name for i in model.graph.input if i.name not in weights)
        self.outputs = [o.name for o in model.graph.output]
        self.segments = split_graph(model, tensors or self.outputs, budget, weight_budget)
        self.optimize = optimize
        self.paths = [
            _save(model, segment, path.with_name(f"{path.stem}_segment{index}.onnx"))
            for index, segment in enumerate(self.segments)
        ]
        self._kept = cpu_session(self.paths[0], optimize) if len(self.paths) == 1 else None

    def _session(self, index: int):
        return self._kept or cpu_session(self.paths[index], self.optimize)

    def get_inputs(self) -> list:
        return [i for i in self._session(0).get_inputs() if i.name == self.graph_input]

    def flow(self, feed: dict[str, np.ndarray]) -> Iterator[tuple[Segment, dict[str, np.ndarray]]]:
        """Each segment with the tensors alive after it ran (its outputs and those carried)."""
        values = dict(feed)
        for index, segment in enumerate(self.segments):
            session = self._session(index)
            values.update(zip(segment.outputs, session.run(segment.outputs, {n: values[n] for n in segment.inputs})))
            del session  # closed (its weights unmapped) before the caller works on the values
            yield segment, values
            values = {n: v for n, v in values.items() if n in segment.carried}

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``names`` (default: the graph outputs) for ``feed``, as ``InferenceSession.run``;
        only graph inputs and the tensors asked for at construction can be named."""
        wanted = names or self.outputs
        found = {n: v for n, v in feed.items() if n in wanted}
        for segment, values in self.flow(feed):
            found.update((n, values[n]) for n in segment.requested if n in wanted)
        return [found[n] for n in wanted]


def _save(model: onnx.ModelProto, segment: Segment, path: Path) -> Path:
    """``segment`` as a model at ``path``, beside the external weights it refers to."""
    used = {i for node in segment.nodes for i in node.input}
    graph = helper.make_graph(
        segment.nodes,
        f"{model.graph.name}_segment",
        [helper.make_tensor_value_info(n, segment.types[n], None) for n in segment.inputs],
        [helper.make_tensor_value_info(n, segment.types[n], None) for n in segment.outputs],
        [init for init in model.graph.initializer if init.name in used],
    )
    part = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    part.functions.extend(model.functions)
    path.write_bytes(part.SerializeToString())
    return path
