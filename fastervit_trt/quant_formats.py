"""The quantized formats of ``--precision``, one record each: everything a stage needs to
know of a format is read here, so a new format is one more entry.

``QUANT_FORMATS["int8"]``, or ``quant_format(name)`` (a ``ValueError``, the options' error,
for an unknown name). Q/DQ follows one scheme for every format: symmetric scales
(zero point 0), activations per tensor, weights per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OptionsError


@dataclass(frozen=True)
class QuantFormat:
    """One quantized format: its element type, scales and placement, and what the engine
    builder, ONNX Runtime, DeepStream and ``fastervit-inspect`` do with it."""

    name: str  # --precision, and the ONNX metadata's precision
    label: str  # what reports and fastervit-inspect call it
    element: str  # the stored element type: a NumPy or ml_dtypes dtype name
    onnx_type: int  # that element as an ONNX TensorProto data type
    element_range: tuple[float, float]  # the element type's own smallest and largest value
    max: float  # the largest magnitude Q/DQ uses: a tensor's scale is amax / max
    rounding: str  # QuantizeLinear's rounding of values / scale onto the element type
    scale_granularity: str
    min_opset: int  # the ONNX opset whose QuantizeLinear takes the element type
    in_series_in_float: bool  # layers every path runs through stay in float by default
    quantizes_residuals: bool  # an Add's residual input is quantized with its Conv
    min_compute_capability: tuple[int, int] | None  # the GPUs its engine runs on; None: any
    capable_gpus: str  # those GPUs by name
    trt_implicit_flag: str | None  # TensorRT 10's BuilderFlag for implicit quantization of a float graph
    ort_optimizes: bool  # ONNX Runtime's graph optimisations keep it right (CPU: fused integer kernels)
    network_mode: str  # DeepStream nvinfer's network-mode for its engine
    nvinfer_builds_onnx: bool  # nvinfer can build the engine from the ONNX file itself
    nvinfer_calib_file: bool  # nvinfer reads the calibration cache (int8-calib-file)


INT8 = QuantFormat(
    name="int8",
    label="INT8",
    element="int8",
    onnx_type=3,  # TensorProto.INT8
    element_range=(-128.0, 127.0),
    max=127.0,
    rounding="half to even",
    scale_granularity="activations per tensor, weights per output channel",
    min_opset=13,  # per-axis QuantizeLinear
    in_series_in_float=False,
    quantizes_residuals=True,
    min_compute_capability=None,
    capable_gpus="every GPU TensorRT supports",
    trt_implicit_flag="INT8",
    ort_optimizes=True,
    network_mode="int8",
    nvinfer_builds_onnx=True,
    nvinfer_calib_file=True,
)

FP8 = QuantFormat(
    name="fp8",
    label="FP8",
    element="float8_e4m3fn",
    onnx_type=17,  # TensorProto.FLOAT8E4M3FN
    element_range=(-448.0, 448.0),
    max=448.0,
    rounding="half to even",  # to the nearest E4M3 value, saturating
    scale_granularity="activations per tensor, weights per output channel",
    min_opset=19,  # FLOAT8E4M3FN QuantizeLinear
    in_series_in_float=True,  # E4M3 keeps three mantissa bits: such layers' error reaches everything
    quantizes_residuals=False,  # TensorRT's residual fusion is INT8 guidance; E4M3 residuals cost accuracy
    min_compute_capability=(8, 9),  # FP8 tensor cores
    capable_gpus="Ada: L4, L40S, RTX 40xx; Hopper: H100, H200; Blackwell: B200, RTX 50xx",
    trt_implicit_flag=None,
    ort_optimizes=False,  # its Q/DQ rewrites mistreat FP8: such a graph runs unoptimized
    network_mode="fp16",  # a strongly typed engine: FP16 around the FP8 layers
    nvinfer_builds_onnx=False,  # nvinfer has no FP8 mode
    nvinfer_calib_file=False,
)

QUANT_FORMATS = {f.name: f for f in (INT8, FP8)}


def quant_format(name: str) -> QuantFormat:
    """The record of ``name``; an ``OptionsError`` (a ``ValueError``) naming the formats for any other."""
    if name not in QUANT_FORMATS:
        raise OptionsError(f"quantized format must be one of {', '.join(QUANT_FORMATS)}, not {name!r}")
    return QUANT_FORMATS[name]


@dataclass(frozen=True)
class Target:
    """The runtime a quantized graph is shaped for (``--target``): the same calibrated scales,
    placed and typed the way that runtime's integer kernels take them."""

    name: str  # --target, and the ONNX metadata's quantization.target
    label: str  # what reports call it
    formats: tuple[str, ...]  # the quantized formats it runs
    base: str  # float type of the layers left unquantized ("fp16" / "fp32"); --qdq-base may change TensorRT's
    activation_element: str  # int8: symmetric (zero point 0); uint8: zero point 128, 0 for bounded tensors
    layer_outputs: bool  # Conv outputs get a Q/DQ pair: ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv
    integer_bias: bool  # a quantized Conv's bias as int32 (scale = input scale x weight scale), as QLinearConv takes it
    residuals: bool  # the residual rule (an Add fused into its Conv's epilogue reads the residual in INT8)
    attention: bool  # attention matmuls (Q.K^T, softmax.V) quantized by default
    builds_engines: bool  # TensorRT builds its graph (the export goes on to an engine)


TENSORRT = Target(
    name="tensorrt",
    label="TensorRT",
    formats=("int8", "fp8"),
    base="fp16",
    activation_element="int8",
    layer_outputs=False,
    integer_bias=False,
    residuals=True,
    attention=False,  # fused attention's speed is measured on a GPU: --attention-qdq on opts in
    builds_engines=True,
)

ONNXRUNTIME_CPU = Target(
    name="onnxruntime-cpu",
    label="ONNX Runtime CPU",
    formats=("int8",),
    base="fp32",  # the CPU provider runs FP16 through casts: float layers stay FP32
    activation_element="uint8",  # its x86 int8 kernels: U8 activations, S8 weights
    layer_outputs=True,
    integer_bias=True,
    residuals=False,  # ONNX Runtime fuses no QLinearAdd there (measured): the Add runs in float either way
    attention=True,  # QLinearMatMul / MatMulIntegerToFloat: measured faster on faster_vit_0_224
    builds_engines=False,
)

TARGETS = {t.name: t for t in (TENSORRT, ONNXRUNTIME_CPU)}


def target(name: str) -> Target:
    """The record of ``name``; an ``OptionsError`` naming the targets for any other."""
    if name not in TARGETS:
        raise OptionsError(f"--target must be one of {', '.join(TARGETS)}, not {name!r}")
    return TARGETS[name]
