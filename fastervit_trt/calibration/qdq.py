"""Explicit quantization: where Q/DQ pairs go, and inserting them with calibrated scales.

Placement follows TensorRT's fusion rules ("Q/DQ layer placement" in its developer guide):
the inputs of Conv, MatMul-with-weights and Gemm are quantized (activations per tensor,
weights per output channel, symmetric, zero point 0; int8, or FP8 E4M3 for the FP8 export);
bias is not quantized; the residual input of an Add that follows a quantized Conv is
quantized too (``residual_inputs``), so TensorRT reads it in INT8 in the convolution's
fused epilogue; LayerNorm, Softmax, GELU, the other adds and the attention matrix products
stay in the graph's float type. A tensor read by several quantized layers gets one shared
Q/DQ pair. By default the layer writing a graph output (a classifier head) stays in float,
and for FP8 every layer in series with the whole network too (``placement``). Weights are
stored quantized (int8 or FLOAT8E4M3FN initializers) followed by a DequantizeLinear, so
the file shrinks and the scales are explicit.

Weight rounding shifts each layer's mean output (E[dW x], dW the rounding error): with the
layer inputs' per-channel means from calibration, ``insert_qdq`` subtracts that shift from
the layer's float bias ("bias correction", Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction"). Global average pooling averages input-dependent
rounding noise away but not this shift, so it is most of what weight rounding costs the
logits: FasterViT-0 FP8 0.99894 -> 0.99964 logit cosine, INT8 0.99979 -> 0.99988.

Q/DQ over a float16 graph needs opset 19 (QuantizeLinear takes float16 from 19 on);
``to_opset`` raises the graph's opset when needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant_formats import QUANT_FORMATS, quant_format

if TYPE_CHECKING:  # importing the export package pulls in torch; inspect reads Q/DQ graphs without it
    from ..graph.weights import WeightFile

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
QDQ_MIN_OPSET = {TensorProto.FLOAT: 13, TensorProto.FLOAT16: 19}  # by the float type quantized


@dataclass(frozen=True)
class QuantTarget:
    """One layer to quantize: its activation input and its weight (with output-channel axis)."""

    node: str
    activation: str
    weight: str
    axis: int


def _attribute(node: onnx.NodeProto, name: str, default: int | float) -> int | float:
    """``node``'s int or float attribute ``name``, or ``default`` where it is not set."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def quant_targets(model: onnx.ModelProto, exclude: frozenset[str] = frozenset()) -> list[QuantTarget]:
    """Conv / MatMul / Gemm nodes whose second input is a weight initializer."""
    weights = {t.name: t for t in model.graph.initializer}
    targets = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name in exclude:
            continue
        activation, weight = node.input[0], node.input[1]
        if weight not in weights or activation in weights:
            continue  # activation x activation products (attention) stay in float
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            axis = 0 if _attribute(node, "transB", 0) else 1
        else:
            axis = len(weights[weight].dims) - 1
        targets.append(QuantTarget(node.name, activation, weight, axis))
    return targets


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each tensor."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _fused_conv(
    add: onnx.NodeProto, residual: int, producer: dict[str, onnx.NodeProto], readers: dict[str, list[onnx.NodeProto]]
) -> onnx.NodeProto | None:
    """The Conv TensorRT fuses ``add`` into when input ``residual`` is the residual: the
    producer of the other input, if it is a Conv that only this Add reads."""
    name = add.input[1 - residual]
    conv = producer.get(name)
    return conv if conv is not None and conv.op_type == "Conv" and len(readers[name]) == 1 else None


@dataclass(frozen=True)
class ResidualInput:
    """The residual input of an Add fed by a quantized Conv (``conv``): input ``index`` of
    node ``node``, tensor ``activation`` of the FP32 graph."""

    node: str
    index: int
    activation: str
    conv: str


def residual_inputs(model: onnx.ModelProto, targets: list[QuantTarget]) -> list[ResidualInput]:
    """Adds that TensorRT fuses into a quantized Conv before them (``_fused_conv``), and
    their other (residual) input, an activation."""
    convs = {t.node for t in targets}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = _readers(model)
    weights = {t.name for t in model.graph.initializer}
    found = []
    for node in (n for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2):
        for residual in (1, 0):
            conv = _fused_conv(node, residual, producer, readers)
            if conv is not None and conv.name in convs and node.input[residual] not in weights:
                found.append(ResidualInput(node.name, residual, node.input[residual], conv.name))
                break
    return found


def in_series(model: onnx.ModelProto, targets: list[QuantTarget]) -> list[str]:
    """The targets every path from the graph's input to its outputs runs through (no
    residual or branch around them): a stem convolution, a downsampling, a classifier head.
    Found by removing each in turn and checking whether an output is still reachable."""
    readers = _readers(model)
    outputs = {o.name for o in model.graph.output}

    def reaches_output(without: str) -> bool:
        seen, frontier = set(), [i.name for i in model.graph.input]
        while frontier:
            name = frontier.pop()
            if name in outputs:
                return True
            for node in readers.get(name, []):
                if node.name != without and node.name not in seen:
                    seen.add(node.name)
                    frontier.extend(node.output)
        return False

    return [t.node for t in targets if not reaches_output(t.node)]


def kept_in_float(model: onnx.ModelProto, targets: list[QuantTarget], fmt: str) -> list[str]:
    """Targets left unquantized by default. The layer writing a graph output (a classifier
    head): its error reaches the output undiluted, and it is a tiny share of the work (0.02 %
    of FasterViT-0's multiply-adds). For FP8 every layer ``in_series`` too: E4M3 keeps three
    mantissa bits, and such a layer's error is carried by all that follows (measured on
    FasterViT-0: its 6 in-series layers, 8 % of the multiply-adds, cost 70 % of the FP8 error)."""
    outputs = {o.name for o in model.graph.output}
    nodes = {n.name: n for n in model.graph.node}
    kept = [t.node for t in targets if outputs & set(nodes[t.node].output)]
    if quant_format(fmt).in_series_in_float:
        kept += [name for name in in_series(model, targets) if name not in kept]
    return kept


@dataclass(frozen=True)
class Placement:
    """Where a format's Q/DQ pairs go by default: the layers quantized, the residual inputs
    quantized with their Conv (INT8 only), and the layers ``kept_in_float``."""

    targets: list[QuantTarget]
    residuals: list[ResidualInput]
    kept: list[str]

    @property
    def activations(self) -> list[str]:
        """The FP32 graph's tensors that need a calibrated range."""
        return sorted({t.activation for t in self.targets} | {r.activation for r in self.residuals})


def placement(model: onnx.ModelProto, fmt: str, residuals: bool = True) -> Placement:
    """The default placement in ``model`` (the FP32 graph) for ``fmt``. Residual inputs are
    quantized with ``residuals`` and for INT8 only: TensorRT's residual fusion is INT8
    guidance, and in E4M3 the quantized residual cost FasterViT-0 0.00011 of logit cosine."""
    candidates = quant_targets(model)
    kept = kept_in_float(model, candidates, fmt)
    targets = [t for t in candidates if t.node not in kept]
    quantized = residuals and quant_format(fmt).quantizes_residuals
    return Placement(targets, residual_inputs(model, targets) if quantized else [], kept)


# the largest magnitude of each quantized format: a tensor's scale is amax / QMAX
QMAX = {name: f.max for name, f in QUANT_FORMATS.items()}


def lone_quantizers(model: onnx.ModelProto) -> list[str]:
    """QuantizeLinear nodes whose dequantized output reaches an op TensorRT cannot fuse it
    into: anything but a Conv, MatMul or Gemm, or an Add whose other input is a quantized
    Conv's output that only the Add reads (the Conv's fused epilogue reads the residual
    quantized). TensorRT would run such a quantize on its own (its "Q/DQ layer placement"
    guidance). The toolkit's graphs have none."""
    readers = _readers(model)
    producer = {o: n for n in model.graph.node for o in n.output}

    def dequantized(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    def fuses(reader: onnx.NodeProto, value: str) -> bool:
        """Whether TensorRT fuses the Q/DQ pair of ``value`` into ``reader``."""
        if reader.op_type in QUANTIZED_OPS:
            return True
        if reader.op_type != "Add" or len(reader.input) != 2:
            return False
        convs = (
            _fused_conv(reader, index, producer, readers) for index, name in enumerate(reader.input) if name == value
        )
        return any(conv is not None and dequantized(conv.input[0]) for conv in convs)

    lone = []
    for node in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        values = [
            o for q in node.output for dq in readers.get(q, []) if dq.op_type == "DequantizeLinear" for o in dq.output
        ]
        consumers = [(reader, value) for value in values for reader in readers.get(value, [])]
        if not consumers or not all(fuses(reader, value) for reader, value in consumers):
            lone.append(node.name)
    return lone


def scale_of(amax: float | np.ndarray, fmt: str = "int8") -> np.ndarray:
    """Symmetric scale amax / QMAX[fmt]; an all-zero range gets scale 1 (any value is exact)."""
    amax = np.asarray(amax, np.float64)
    return np.where(amax > 0, amax / QMAX[fmt], 1.0)


def quantize(values: np.ndarray, scales: np.ndarray, fmt: str) -> np.ndarray:
    """``values / scales`` in ``fmt``, saturated: int8 rounded half to even as QuantizeLinear
    does, E4M3 rounded to nearest (ml_dtypes, as ONNX Runtime and TensorRT)."""
    scaled, dtype = values / scales, element_dtype(fmt)
    if np.issubdtype(dtype, np.integer):
        scaled = np.round(scaled)
    return np.clip(scaled, -QMAX[fmt], QMAX[fmt]).astype(dtype)


def element_dtype(fmt: str) -> np.dtype:
    """The NumPy dtype ``fmt`` stores (ml_dtypes for the float8 types)."""
    import ml_dtypes

    element = quant_format(fmt).element
    return np.dtype(getattr(ml_dtypes, element, element))


def stored_scale(scales: np.ndarray, dtype: type) -> np.ndarray:
    """``scales`` in the graph's float type; in float16 at least its smallest normal number
    (6.1e-5): a subnormal scale keeps few significant bits (FP8 scales of weights below 0.03
    would), and a larger scale only moves such a channel's values down the FP8 grid."""
    if dtype == np.float16:
        scales = np.maximum(scales, np.finfo(np.float16).tiny)
    return np.asarray(scales).astype(dtype)


def zeros(fmt: str, count: int | None = None) -> np.ndarray:
    """Zero points in ``fmt`` (a scalar, or ``count`` of them)."""
    return np.zeros(() if count is None else (count,), element_dtype(fmt))


def weight_amax(weight: np.ndarray, axis: int) -> np.ndarray:
    """Per-output-channel max |w|."""
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    return np.abs(weight.astype(np.float64)).max(axis=reduce)


def input_channel_axes(model: onnx.ModelProto, targets: list[QuantTarget]) -> dict[str, int]:
    """The channel axis of each target's activation input: 1 for a Conv (NCHW), 0 for a
    Gemm with transA, else the last."""
    nodes = {n.name: n for n in model.graph.node}

    def axis(node: onnx.NodeProto) -> int:
        if node.op_type == "Conv":
            return 1
        return 0 if _attribute(node, "transA", 0) else -1

    return {t.activation: axis(nodes[t.node]) for t in targets}


def mean_shift(node: onnx.NodeProto, weight_error: np.ndarray, axis: int, input_mean: np.ndarray) -> np.ndarray | None:
    """E[dW x] per output channel of ``node`` (Conv, MatMul or Gemm) for weight error
    ``weight_error`` (output-channel axis ``axis``) and per-channel input mean ``input_mean``;
    a Conv's padded border is taken at the mean too. None where the shapes do not match (a
    batched MatMul weight, or means of another layout)."""
    if node.op_type == "Conv":
        groups = int(_attribute(node, "group", 1))
        out_channels, group_inputs = weight_error.shape[:2]
        if input_mean.size != groups * group_inputs or out_channels % groups:
            return None
        summed = weight_error.reshape(groups, out_channels // groups, group_inputs, -1).sum(-1)
        return np.einsum("goc,gc->go", summed, input_mean.reshape(groups, group_inputs)).reshape(-1)
    if weight_error.ndim != 2:
        return None
    inputs = weight_error.T if axis == 0 else weight_error  # (in, out)
    alpha = _attribute(node, "alpha", 1.0)  # a Gemm's A B factor
    return alpha * (input_mean @ inputs) if input_mean.size == inputs.shape[0] else None


def to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` at (at least) ``opset`` via ONNX's version converter."""
    current = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current >= opset:
        return model
    from onnx import version_converter

    converted = version_converter.convert_version(model, opset)
    # the converter writes new operands (ReduceMean's axes from opset 18) as Constant nodes:
    # initializers instead, so the graph keeps its no-Constant-node form
    constants = [
        n
        for n in converted.graph.node
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"
    ]
    for node in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        converted.graph.initializer.append(tensor)
        converted.graph.node.remove(node)
    return converted


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every input, activation and initializer (ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.value_info]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def insert_qdq(
    model: onnx.ModelProto,
    targets: list[QuantTarget],
    activation_amax: dict[str, float],
    fp32_weights: Mapping[str, np.ndarray],
    types: dict[str, int] | None = None,
    store: WeightFile | None = None,
    fmt: str = "int8",
    residuals: Sequence[ResidualInput] = (),
    input_means: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` (float32 or float16 graph) with Q/DQ on every target, in ``fmt``
    (``int8``, or ``fp8``: FLOAT8E4M3FN, weights stored as such), and on the ``residuals``
    whose Conv is among the targets. With ``input_means`` (per-channel means of the targets'
    activations, by FP32 name) each target's bias absorbs its weight rounding's mean shift.

    ``activation_amax`` is keyed by the activation names of the FP32 graph; in a float16
    graph a target may read a ``<name>_fp16`` cast of it, which is what gets quantized.
    ``fp32_weights`` holds the FP32 weights the per-channel scales are computed from;
    ``types`` (from ``tensor_types(model)``) saves a shape inference when inserting repeatedly;
    with ``store`` the quantized weights are stored there instead of inline.
    """
    elem_type = types or tensor_types(model)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    graph = quantized.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {t.name: t for t in graph.initializer}
    readers = _readers(quantized)
    zero_point = "qdq_zero_point"
    graph.initializer.append(numpy_helper.from_array(zeros(fmt), zero_point))
    shared: dict[str, str] = {}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted before the named node
    after_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted after it

    def np_float(name: str) -> type:
        return np.float16 if elem_type[name] == TensorProto.FLOAT16 else np.float32

    def quantize_input(node: onnx.NodeProto, index: int, activation: str) -> None:
        """Input ``index`` of ``node`` through the (shared) Q/DQ pair of its tensor."""
        source = node.input[index]
        if source not in shared:
            scale_name = f"{source}_scale"
            graph.initializer.append(
                numpy_helper.from_array(
                    stored_scale(scale_of(activation_amax[activation], fmt), np_float(source)), scale_name
                )
            )
            q, dq = f"{source}_quantized", f"{source}_dequantized"
            new_nodes.setdefault(node.name, []).extend(
                [
                    helper.make_node("QuantizeLinear", [source, scale_name, zero_point], [q], name=f"{source}_Q"),
                    helper.make_node("DequantizeLinear", [q, scale_name, zero_point], [dq], name=f"{source}_DQ"),
                ]
            )
            shared[source] = dq
        node.input[index] = shared[source]

    for target in targets:
        node = nodes[target.node]
        float_type = np_float(node.input[0])  # before the input is renamed to its dequantized value
        quantize_input(node, 0, target.activation)
        weight_name = node.input[1]
        fp32 = fp32_weights[target.weight]
        scales = stored_scale(scale_of(weight_amax(fp32, target.axis), fmt), float_type)
        shape = [1] * fp32.ndim
        shape[target.axis] = -1
        stored, stored_name = quantize(fp32, scales.astype(np.float64).reshape(shape), fmt), f"{weight_name}_{fmt}"
        graph.initializer.append(
            store.add(stored_name, stored) if store else numpy_helper.from_array(stored, stored_name)
        )
        graph.initializer.append(numpy_helper.from_array(scales.astype(float_type), f"{weight_name}_wscale"))
        graph.initializer.append(numpy_helper.from_array(zeros(fmt, len(scales)), f"{weight_name}_wzero"))
        new_nodes.setdefault(node.name, []).append(
            helper.make_node(
                "DequantizeLinear",
                [stored_name, f"{weight_name}_wscale", f"{weight_name}_wzero"],
                [f"{weight_name}_dequantized"],
                axis=target.axis,
                name=f"{weight_name}_DQ",
            )
        )
        node.input[1] = f"{weight_name}_dequantized"
        mean = (input_means or {}).get(target.activation)
        shift = (
            None
            if mean is None
            else mean_shift(
                node, stored.astype(np.float64) * scales.astype(np.float64).reshape(shape) - fp32, target.axis, mean
            )
        )
        if shift is not None:
            _subtract_from_bias(graph, node, shift, float_type, initializers, readers, store, after_nodes)

    chosen = {t.node for t in targets}
    for residual in residuals:
        if residual.conv in chosen:
            quantize_input(nodes[residual.node], residual.index, residual.activation)

    ordered = []
    for node in graph.node:
        ordered.extend(new_nodes.get(node.name, []))
        ordered.append(node)
        ordered.extend(after_nodes.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    return quantized


def _bias_slot(
    node: onnx.NodeProto,
    channels: int,
    initializers: dict[str, onnx.TensorProto],
    readers: dict[str, list[onnx.NodeProto]],
) -> tuple[onnx.NodeProto, int] | None:
    """Where ``node``'s bias constant goes: (node, input index) of a Conv's bias or a Gemm's
    C (beta 1), present as an initializer or absent, or of the 1-D constant of the Add that
    alone reads a MatMul; None when there is no such place."""
    if node.op_type in ("Conv", "Gemm"):
        beta = _attribute(node, "beta", 1.0)
        absent = len(node.input) < 3 or not node.input[2]
        return (node, 2) if beta == 1.0 and (absent or node.input[2] in initializers) else None
    add = readers.get(node.output[0], [])
    if len(add) != 1 or add[0].op_type != "Add":
        return None
    constant = [
        i for i, name in enumerate(add[0].input) if name in initializers and list(initializers[name].dims) == [channels]
    ]
    return (add[0], constant[0]) if constant else None


def _subtract_from_bias(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    shift: np.ndarray,
    float_type: type,
    initializers: dict[str, onnx.TensorProto],
    readers: dict[str, list[onnx.NodeProto]],
    store: WeightFile | None,
    after_nodes: dict[str, list[onnx.NodeProto]],
) -> None:
    """Subtract ``shift`` (per output channel) from ``node``'s bias (``_bias_slot``), in a new
    initializer (the old one may be shared); a layer with no bias slot gets an Add after it."""
    name = f"{node.name}_bias_corrected"
    slot = _bias_slot(node, shift.size, initializers, readers)
    if slot is None:
        graph.initializer.append(numpy_helper.from_array((-shift).astype(float_type), name))
        output = node.output[0]
        node.output[0] = f"{output}_uncorrected"
        after_nodes.setdefault(node.name, []).append(
            helper.make_node("Add", [node.output[0], name], [output], name=f"{node.name}_bias_correction")
        )
        return
    owner, index = slot
    if index < len(owner.input) and owner.input[index]:
        tensor = initializers[owner.input[index]]
        bias = store.read(tensor) if store else numpy_helper.to_array(tensor)
        corrected = (bias.astype(np.float64) - shift).astype(bias.dtype)
    else:  # no bias, or an empty optional input in its place
        corrected = (-shift).astype(float_type)
        owner.input.extend([""] * (index + 1 - len(owner.input)))
    graph.initializer.append(numpy_helper.from_array(corrected, name))
    owner.input[index] = name
