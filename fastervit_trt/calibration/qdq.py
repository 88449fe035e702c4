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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant_formats import QUANT_FORMATS, Target, quant_format
from ..quant_formats import target as graph_target

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
class AttentionProduct:
    """An activation x activation MatMul of an attention (Q.K^T or softmax.V): node ``node``
    and its two inputs, tensors of the FP32 graph."""

    node: str
    inputs: tuple[str, str]


def attention_products(model: onnx.ModelProto) -> list[AttentionProduct]:
    """The MatMuls neither of whose inputs is a weight (an initializer, or one dequantized):
    every attention's two batched matrix products (windowed and carrier-token alike)."""
    weights = {t.name for t in model.graph.initializer}
    weights |= {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights for o in n.output
    }
    return [
        AttentionProduct(n.name, (n.input[0], n.input[1]))
        for n in model.graph.node
        if n.op_type == "MatMul" and not weights & set(n.input)
    ]


def quantized_attention(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(the attention products both of whose inputs are dequantized values, all of them) in a
    Q/DQ graph: which attention matmuls run quantized."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    products = attention_products(model)
    return [a.node for a in products if set(a.inputs) <= dequantized], [a.node for a in products]


@dataclass(frozen=True)
class Placement:
    """Where Q/DQ pairs go by default for a format and a target: the layers quantized, the
    residual inputs quantized with their Conv (INT8 for TensorRT), the attention products,
    the layer outputs quantized (ONNX Runtime's QLinearConv needs them), and the layers
    ``kept_in_float``."""

    targets: list[QuantTarget]
    residuals: list[ResidualInput]
    kept: list[str]
    attention: list[AttentionProduct] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def activations(self) -> list[str]:
        """The FP32 graph's tensors that need a calibrated range."""
        inputs = {t.activation for t in self.targets} | {r.activation for r in self.residuals}
        return sorted(inputs | {i for a in self.attention for i in a.inputs} | set(self.outputs))

    def bounded(self, model: onnx.ModelProto) -> list[str]:
        """Those of ``activations`` that are probabilities (Softmax outputs), calibrated by
        their largest value: entropy fits zero-centred tensors, and on attention weights
        spread over many tokens it clipped most of them (faster_vit_0_224's last stage: amax
        0.009 of a largest 0.05, logit cosine 0.915)."""
        producer = {o: n for n in model.graph.node for o in n.output}
        return [name for name in self.activations if is_probability(name, producer)]


def is_probability(tensor: str, producer: Mapping[str, onnx.NodeProto]) -> bool:
    """Whether ``tensor`` holds probabilities (a Softmax output): never negative, at most 1,
    calibrated by its largest value and, for uint8, quantized with zero point 0."""
    return tensor in producer and producer[tensor].op_type == "Softmax"


def placement(
    model: onnx.ModelProto,
    fmt: str,
    residuals: bool = True,
    target: str = "tensorrt",
    attention: bool | None = None,
) -> Placement:
    """The default placement in ``model`` (the FP32 graph) for ``fmt`` on ``target``. Residual
    inputs are quantized with ``residuals``, for INT8 on TensorRT only: its residual fusion is
    INT8 guidance, and in E4M3 the quantized residual cost FasterViT-0 0.00011 of logit
    cosine. ``attention`` (None: the target's default) quantizes both inputs of every
    attention product."""
    shape = graph_target(target)
    candidates = quant_targets(model)
    kept = kept_in_float(model, candidates, fmt)
    targets = [t for t in candidates if t.node not in kept]
    quantized = residuals and quant_format(fmt).quantizes_residuals and shape.residuals
    nodes = {n.name: n for n in model.graph.node}
    outputs = (
        [nodes[t.node].output[0] for t in targets if nodes[t.node].op_type == "Conv"] if shape.layer_outputs else []
    )
    return Placement(
        targets,
        residual_inputs(model, targets) if quantized else [],
        kept,
        attention_products(model) if (shape.attention if attention is None else attention) else [],
        outputs,
    )


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


def activation_qparams(amax: float, fmt: str, element: str, bounded: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of an activation with range ``amax``: symmetric in ``fmt`` for an
    int8 element; for uint8 (ONNX Runtime's x86 kernels) zero point 128 and the same scale, or,
    for a ``bounded`` tensor (probabilities, never negative), zero point 0 and amax / 255."""
    if element == "uint8":
        if bounded:
            return np.where(amax > 0, amax / 255.0, 1.0), np.array(0, np.uint8)
        return scale_of(amax, fmt), np.array(128, np.uint8)
    return scale_of(amax, fmt), zeros(fmt)


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
    attention: Sequence[AttentionProduct] = (),
    outputs: Sequence[str] = (),
    target: str = "tensorrt",
) -> onnx.ModelProto:
    """A copy of ``model`` (float32 or float16 graph) with Q/DQ on every target, in ``fmt``
    (``int8``, or ``fp8``: FLOAT8E4M3FN, weights stored as such), on the ``residuals`` whose
    Conv is among the targets, on both inputs of each ``attention`` product and after each
    layer output in ``outputs``, typed for ``target`` (``onnxruntime-cpu``: uint8 activations
    and int32 Conv biases). With ``input_means`` (per-channel means of the targets'
    activations, by FP32 name) each target's bias absorbs its weight rounding's mean shift.

    ``activation_amax`` is keyed by the activation names of the FP32 graph; in a float16
    graph a target may read a ``<name>_fp16`` cast of it, which is what gets quantized.
    ``fp32_weights`` holds the FP32 weights the per-channel scales are computed from;
    ``types`` (from ``tensor_types(model)``) saves a shape inference when inserting repeatedly;
    with ``store`` the quantized weights are stored there instead of inline.
    """
    writer = _QDQWriter(model, activation_amax, types or tensor_types(model), store, fmt, graph_target(target))
    for name in outputs:
        writer.quantize_output(name)
    chosen = {t.node for t in targets}
    for t in targets:
        writer.quantize_layer(t, fp32_weights[t.weight], (input_means or {}).get(t.activation))
    for residual in residuals:
        if residual.conv in chosen:
            writer.quantize_input(writer.nodes[residual.node], residual.index, residual.activation)
    for product in attention:
        for index, activation in enumerate(product.inputs):
            writer.quantize_input(writer.nodes[product.node], index, activation)
    return writer.finish()


class _QDQWriter:
    """Q/DQ pairs and quantized weights written into a copy of one graph; ``finish`` orders
    the new nodes and drops the initializers no longer read."""

    def __init__(
        self,
        model: onnx.ModelProto,
        amax: Mapping[str, float],
        types: dict[str, int],
        store: WeightFile | None,
        fmt: str,
        shape: Target,
    ) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.amax, self.types, self.store, self.fmt, self.shape = amax, dict(types), store, fmt, shape
        self.nodes = {node.name: node for node in self.graph.node}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.readers = _readers(self.model)
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.shared: dict[str, str] = {}  # quantized tensor -> its dequantized value
        self.scales: dict[str, np.ndarray] = {}  # dequantized value -> its scale
        self.zero_points: set[str] = set()
        self.before: dict[str, list[onnx.NodeProto]] = {}  # inserted before the named node
        self.after: dict[str, list[onnx.NodeProto]] = {}  # inserted after it

    def np_float(self, name: str) -> type:
        return np.float16 if self.types[name] == TensorProto.FLOAT16 else np.float32

    def _pair(self, source: str, activation: str, where: dict[str, list[onnx.NodeProto]], node: str) -> str:
        """The Q/DQ pair of tensor ``source`` (range of FP32 tensor ``activation``), placed
        beside ``node``; returns the dequantized value."""
        bounded = is_probability(activation, self.producer)
        scale, zero = activation_qparams(self.amax[activation], self.fmt, self.shape.activation_element, bounded)
        scale_name, zero_name = f"{source}_scale", self._zero_point(zero)
        self.graph.initializer.append(numpy_helper.from_array(stored_scale(scale, self.np_float(source)), scale_name))
        q, dq = f"{source}_quantized", f"{source}_dequantized"
        where.setdefault(node, []).extend(
            [
                helper.make_node("QuantizeLinear", [source, scale_name, zero_name], [q], name=f"{source}_Q"),
                helper.make_node("DequantizeLinear", [q, scale_name, zero_name], [dq], name=f"{source}_DQ"),
            ]
        )
        self.shared[source], self.scales[dq] = dq, np.asarray(scale, np.float64)
        self.types[dq] = self.types[source]
        return dq

    def _zero_point(self, zero: np.ndarray) -> str:
        """The initializer holding activation zero point ``zero``, one per value: the
        format's zero is ``qdq_zero_point``, uint8's 128 ``qdq_zero_point_uint8_128``."""
        name = (
            "qdq_zero_point"
            if not zero.any() and zero.dtype == element_dtype(self.fmt)
            else f"qdq_zero_point_{zero.dtype}_{int(zero)}"
        )
        if name not in self.zero_points:
            self.graph.initializer.append(numpy_helper.from_array(zero, name))
            self.zero_points.add(name)
        return name

    def quantize_input(self, node: onnx.NodeProto, index: int, activation: str) -> None:
        """Input ``index`` of ``node`` through the (shared) Q/DQ pair of its tensor."""
        source = node.input[index]
        if source in self.scales:  # already a dequantized value (a quantized layer output)
            return
        if source not in self.shared:
            self._pair(source, activation, self.before, node.name)
        node.input[index] = self.shared[source]

    def quantize_output(self, name: str) -> None:
        """A Q/DQ pair right after the producer of ``name``, read by all its readers (ONNX
        Runtime fuses DQ -> Conv -> Q into QLinearConv)."""
        dq = self._pair(name, name, self.after, self.producer[name].name)
        for reader in self.readers.get(name, []):
            reader.input[:] = [dq if value == name else value for value in reader.input]

    def quantize_layer(self, target: QuantTarget, fp32: np.ndarray, mean: np.ndarray | None) -> None:
        """The target's activation through its Q/DQ pair, its weight stored quantized per
        output channel behind a DequantizeLinear, its bias corrected for the rounding's mean
        shift (with ``mean``) and, where the target asks, stored as int32."""
        node = self.nodes[target.node]
        float_type = self.np_float(node.input[0])  # before the input is renamed to its dequantized value
        self.quantize_input(node, 0, target.activation)
        scales = stored_scale(scale_of(weight_amax(fp32, target.axis), self.fmt), float_type)
        shape = [1] * fp32.ndim
        shape[target.axis] = -1
        weight_name = node.input[1]
        stored, stored_name = (
            quantize(fp32, scales.astype(np.float64).reshape(shape), self.fmt),
            f"{weight_name}_{self.fmt}",
        )
        self.graph.initializer.extend(
            [
                self.store.add(stored_name, stored) if self.store else numpy_helper.from_array(stored, stored_name),
                numpy_helper.from_array(scales.astype(float_type), f"{weight_name}_wscale"),
                numpy_helper.from_array(zeros(self.fmt, len(scales)), f"{weight_name}_wzero"),
            ]
        )
        self.before.setdefault(node.name, []).append(
            helper.make_node(
                "DequantizeLinear",
                [stored_name, f"{weight_name}_wscale", f"{weight_name}_wzero"],
                [f"{weight_name}_dequantized"],
                axis=target.axis,
                name=f"{weight_name}_DQ",
            )
        )
        node.input[1] = f"{weight_name}_dequantized"
        error = stored.astype(np.float64) * scales.astype(np.float64).reshape(shape) - fp32
        shift = None if mean is None else mean_shift(node, error, target.axis, mean)
        if shift is not None:
            _subtract_from_bias(
                self.graph, node, shift, float_type, self.initializers, self.readers, self.store, self.after
            )
        if self.shape.integer_bias and node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            self._integer_bias(node, self.scales[node.input[0]] * scales.astype(np.float64))

    def _integer_bias(self, node: onnx.NodeProto, scales: np.ndarray) -> None:
        """``node``'s float bias as int32 (scale = input scale x weight scale per output
        channel, zero point 0) behind a DequantizeLinear: QLinearConv's bias."""
        tensor = next(t for t in self.graph.initializer if t.name == node.input[2])
        bias = self.store.read(tensor) if self.store else numpy_helper.to_array(tensor)
        name = f"{node.name}_bias"
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(np.round(bias.astype(np.float64) / scales).astype(np.int32), f"{name}_int32"),
                numpy_helper.from_array(scales.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros(len(scales), np.int32), f"{name}_zero_point"),
            ]
        )
        self.before.setdefault(node.name, []).append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int32", f"{name}_scale", f"{name}_zero_point"],
                [f"{name}_dequantized"],
                axis=0,
                name=f"{name}_DQ",
            )
        )
        node.input[2] = f"{name}_dequantized"

    def finish(self) -> onnx.ModelProto:
        graph = self.graph
        ordered = []
        for node in graph.node:
            ordered.extend(self.before.get(node.name, []))
            ordered.append(node)
            ordered.extend(self.after.get(node.name, []))
        del graph.node[:]
        graph.node.extend(ordered)
        used = {name for node in graph.node for name in node.input}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.value_info[:]
        return self.model


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
