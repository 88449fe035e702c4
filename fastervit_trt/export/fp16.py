"""FP32 ONNX -> strongly typed FP16 ONNX (the form TensorRT 11 and TensorRT-RTX build as FP16).

Policy: every float tensor becomes float16 except
- the inputs and outputs of ops in ``FP32_OPS`` (normalisation statistics, softmax and
  reductions accumulate sums whose error or range FP16 cannot hold), and
- the outputs of any node listed in ``keep_fp32`` (``find_fp16_overflows`` lists the nodes
  whose activations exceed the FP16 range on sample inputs).
Where a tensor crosses between the two precisions one Cast is inserted (and shared by all
consumers). Weights of FP16 nodes are stored as float16. The graph's input and output stay
float32 unless ``io_dtype="fp16"``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ExportError, OptionsError
from ..graph.ort_cpu import cpu_session
from ..graph.weights import WeightFile

FP32_OPS = frozenset(
    {
        "LayerNormalization",
        "Softmax",
        "ReduceMean",
        "ReduceSum",
        "GlobalAveragePool",
        "InstanceNormalization",
        "BatchNormalization",
    }
)
FP16_MAX = float(np.finfo(np.float16).max)
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16

IO_DTYPES = ("fp32", "fp16")  # of an FP16 graph's input and output


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor (inputs, initializers, activations, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    names = {v.name for v in infos if v.type.tensor_type.elem_type == _FLOAT}
    names |= {t.name for t in model.graph.initializer if t.data_type == _FLOAT}
    return names


def convert_to_fp16(
    model: onnx.ModelProto, keep_fp32: Iterable[str] = (), io_dtype: str = "fp32", weights: WeightFile | None = None
) -> onnx.ModelProto:
    """A float16 copy of ``model`` following the module's precision policy; converted weights
    are stored in ``weights`` when the graph's weights live there."""
    if io_dtype not in IO_DTYPES:
        raise OptionsError(f"io_dtype must be 'fp32' or 'fp16', not {io_dtype!r}")
    source = model
    model = onnx.ModelProto()
    model.CopyFrom(source)
    graph = model.graph
    floats = float_tensors(model)
    keep = set(keep_fp32)
    io_type = _FLOAT if io_dtype == "fp32" else _HALF

    def node_type(node: onnx.NodeProto) -> int:
        return _FLOAT if node.op_type in FP32_OPS or node.name in keep else _HALF

    # the precision each float tensor is produced in
    produced: dict[str, int] = {t.name: _FLOAT for t in graph.initializer if t.name in floats}
    produced.update({i.name: io_type for i in graph.input if i.name in floats})
    for node in graph.node:
        produced.update({o: node_type(node) for o in node.output if o in floats})

    initializers = {t.name: t for t in graph.initializer}
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def as_type(name: str, wanted: int) -> str:
        """Name of ``name`` in precision ``wanted``, adding a cast or converted weight once."""
        if name not in floats or produced[name] == wanted:
            return name
        key = (name, wanted)
        if key not in casts:
            suffix = "fp16" if wanted == _HALF else "fp32"
            casts[key] = f"{name}_{suffix}"
            if name in initializers:
                tensor = initializers[name]
                array = weights.read(tensor) if weights else numpy_helper.to_array(tensor)
                converted = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16 if wanted == _HALF else np.float32)
                graph.initializer.append(
                    weights.add(casts[key], converted) if weights else numpy_helper.from_array(converted, casts[key])
                )
            else:
                new_nodes.append(
                    helper.make_node("Cast", [name], [casts[key]], to=wanted, name=f"{name}_cast_{suffix}")
                )
        return casts[key]

    for node in graph.node:
        wanted = node_type(node)
        for i, name in enumerate(node.input):
            node.input[i] = as_type(name, wanted)
        if node.op_type == "Cast" and wanted == _HALF:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == _FLOAT:
                    attr.i = _HALF
        new_nodes.append(node)

    for output in graph.output:
        if output.name in floats and produced[output.name] != io_type:
            internal = f"{output.name}_{'fp16' if produced[output.name] == _HALF else 'fp32'}"
            for node in new_nodes:  # the producer now writes the internal name
                node.output[:] = [internal if o == output.name else o for o in node.output]
            new_nodes.append(
                helper.make_node("Cast", [internal], [output.name], to=io_type, name=f"{output.name}_cast_out")
            )
        if output.name in floats:
            output.type.tensor_type.elem_type = io_type
    for graph_input in graph.input:
        if graph_input.name in floats:
            graph_input.type.tensor_type.elem_type = io_type

    # drop float32 weights no node reads any more
    used = {name for node in new_nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(_toposort(new_nodes, {i.name for i in graph.input} | used & {t.name for t in kept}))
    del graph.value_info[:]
    return model


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes ordered so that every input is produced before it is read (stable)."""
    ready, ordered, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a dangling input at {rest[0].name}")
        pending = rest
    return ordered


def find_fp16_overflows(
    model: onnx.ModelProto,
    inputs: np.ndarray,
    weights: WeightFile | None = None,
    chunk: int | None = None,
    margin: float = 0.5,
) -> list[str]:
    """Nodes of the FP32 ``model`` whose outputs exceed ``margin`` x the FP16 range on ``inputs``.

    The extremes are computed inside the graph (``ReduceMax`` and ``ReduceMin`` of each
    tensor, the only outputs), so ONNX Runtime frees every activation as usual: the check
    needs no more memory than one inference of ``chunk`` inputs (default: all at once). With
    ``weights`` the probe graph is saved beside them (external weights cannot travel as bytes).
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    floats = float_tensors(probe)
    producer = {o: n.name for n in probe.graph.node for o in n.output if o in floats}
    nodes, outputs = [], []
    for node in probe.graph.node:  # each reduction right after its producer: runs (and frees) early
        nodes.append(node)
        for name in (o for o in node.output if o in producer):
            for reduce in ("ReduceMax", "ReduceMin"):  # max|x| without an |x| copy of the tensor
                outputs.append(f"{name}_{reduce}")
                nodes.append(helper.make_node(reduce, [name], [outputs[-1]], keepdims=0, name=outputs[-1]))
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(o, _FLOAT, []) for o in outputs)
    session = cpu_session(
        weights.save_view(probe, "fp16_probe.onnx") if weights else probe.SerializeToString(), probe=True
    )
    feed, chunk = session.get_inputs()[0].name, chunk or len(inputs)
    names = list(dict.fromkeys(producer))  # the order the reductions were added in
    extremes = np.zeros(len(names))
    for start in range(0, len(inputs), chunk):
        values = session.run(outputs, {feed: inputs[start : start + chunk]})
        extremes = np.maximum(extremes, np.abs(np.asarray(values, dtype=np.float64)).reshape(len(names), 2).max(axis=1))
    return sorted({producer[name] for name, value in zip(names, extremes) if value > margin * FP16_MAX})
