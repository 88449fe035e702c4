"""PyTorch -> clean ONNX: trace the deploy-form model, fold constants, name the batch axis.

The model's shapes are all static except the batch axis, so tracing yields no shape
arithmetic. The trace is taken without its weights (they are graph inputs named after the
model's parameters), onnxslim folds what tracing leaves behind (Constant and Identity
nodes, constant sub-expressions, reshape chains) on that weightless graph, and only then
do the parameters become initializers, streamed one by one into a scratch ``WeightFile``.
No step holds a second copy of the weights. The result is deterministic: the same weights
give byte-identical files.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from .. import __version__
from ..errors import ExportError, OptionsError
from ..graph.weights import WeightFile, tensor_bytes
from ..sidecar import METADATA_KEY, read_metadata  # noqa: F401  (read_metadata: public here too)
from .deploy import Exportable, ImageInput

INPUT_NAME = "input"
BATCH_DIM = "batch"
DEFAULT_OPSET = 17
# IR version 8 is the one paired with opset 17; newer onnx releases write higher versions
# that older ONNX Runtime and TensorRT parsers reject.
IR_VERSION = 8
PROTOBUF_LIMIT = 2**31 - 1


def trace_to_onnx(model: Exportable, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``model`` (already in deploy form; a float NCHW input, or an ``ImageInput``'s
    uint8 NHWC images or float NCHW pixels) to ONNX with a symbolic batch axis and its ``output_names`` (``logits``,
    or a backbone's ``stage1``..``stage4``); its parameters and buffers are graph inputs
    (``attach_weights`` makes them initializers)."""
    if model.variant is None:
        raise OptionsError("trace_to_onnx needs a model made by create_model (it records the variant's input size)")
    (height, width), channels = model.variant.arch.resolution, model.variant.arch.in_chans
    nhwc = isinstance(model, ImageInput) and not model.channels_first
    example = (
        torch.zeros(1, height, width, channels, dtype=torch.uint8) if nhwc else torch.zeros(1, channels, height, width)
    )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        path = Path(tmp) / "traced.onnx"
        outputs = model.output_names
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            export_params=False,
            dynamic_axes={name: {0: BATCH_DIM} for name in [INPUT_NAME, *outputs]},
        )
        return onnx.load(str(path))


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and drop no-op nodes (onnxslim), keeping the opset's own ops; nodes
    that compute from weights alone then run right before their first reader."""
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sink_weight_nodes(onnxslim.slim(model, no_shape_infer=model_bytes(model) > PROTOBUF_LIMIT))


def sink_weight_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder ``model``'s nodes (in place) so that each node not reached from the image input
    (the attention-bias Gathers) comes right before its first reader. Sorting hoists them
    all to the top, and ONNX Runtime runs nodes in that order: at 768x768 every bias of a
    stage would be alive at once (4 GB)."""
    graph = model.graph
    dynamic = {INPUT_NAME}
    for node in graph.node:
        if dynamic.intersection(node.input):
            dynamic.update(node.output)
    producer = {o: n for n in graph.node if not dynamic.intersection(n.output) for o in n.output}
    ordered: list[onnx.NodeProto] = []
    placed: set[int] = set()

    def place(name: str) -> None:
        node = producer.get(name)
        if node is None or id(node) in placed:
            return
        placed.add(id(node))
        for source in node.input:
            place(source)
        ordered.append(node)

    for node in graph.node:
        if dynamic.intersection(node.output):
            for source in node.input:
                place(source)
            ordered.append(node)
    for output in graph.output:
        place(output.name)
    assert len(ordered) == len(graph.node), "every node is placed once"
    ordered = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def attach_weights(graph: onnx.ModelProto, model: torch.nn.Module, weights: WeightFile) -> onnx.ModelProto:
    """Turn the parameter inputs of a traced ``graph`` into initializers stored in ``weights``."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    used = {name for node in graph.graph.node for name in node.input}
    inputs = list(graph.graph.input)
    unknown = [i.name for i in inputs if i.name != INPUT_NAME and i.name not in state]
    if unknown:
        raise ExportError(f"the trace made constants that are not parameters: {unknown[:3]}")
    del graph.graph.input[:]
    graph.graph.input.extend(i for i in inputs if i.name == INPUT_NAME)
    for name in (i.name for i in inputs if i.name != INPUT_NAME and i.name in used):
        graph.graph.initializer.append(weights.add(name, state[name].detach().numpy()))
    return graph


def finalize(model: onnx.ModelProto, metadata: dict) -> onnx.ModelProto:
    """Pin the IR version, name the graph, and attach the toolkit's metadata as JSON."""
    model.ir_version = IR_VERSION
    model.producer_name, model.producer_version = "fastervit-trt", __version__
    model.graph.name = metadata.get("model", model.graph.name)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    return model


def model_bytes(model: onnx.ModelProto) -> int:
    """Size of the weights (inline or external) plus graph, without serialising."""
    return sum(tensor_bytes(t) for t in model.graph.initializer) + sum(n.ByteSize() for n in model.graph.node)
