"""What is inside an exported ONNX file or a built engine (``fastervit-inspect``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .errors import ModelFileError
from .quant_formats import QUANT_FORMATS
from .sidecar import read_metadata


def inspect_onnx(path: Path) -> dict:
    """Op histogram, Q/DQ count, float16 and FP8 shares of the weights, external data,
    metadata, report."""
    import onnx

    from .calibration.qdq import lone_quantizers, quantized_attention

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    weight_bytes: Counter = Counter()
    external = 0
    for tensor in model.graph.initializer:
        kind = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            size = int(next((e.value for e in tensor.external_data if e.key == "length"), 0))
            external += size
        else:
            size = len(tensor.raw_data)
        weight_bytes[kind] += size
    total = sum(weight_bytes.values()) or 1
    metadata = read_metadata(model)
    info = {
        "file": str(path),
        "model": metadata.get("model"),
        "precision": metadata.get("precision"),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "input": _input_line(model, metadata),
        "outputs": _output_lines(model, metadata),
        "nodes": len(model.graph.node),
        "qdq_nodes": ops["QuantizeLinear"] + ops["DequantizeLinear"],
        "lone_quantizers": len(lone_quantizers(model)),
        "attention_matmuls": _attention_line(*quantized_attention(model)),
        "float16_weight_share": round(weight_bytes["float16"] / total, 4),
        "fp8_weight_share": round(weight_bytes["float8e4m3fn"] / total, 4),
        "weights_mb": {k: round(v / 1e6, 2) for k, v in weight_bytes.items()},
        "external_data_mb": round(external / 1e6, 2),
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
    }
    report = path.with_name(f"{path.stem}.report.json")  # written by fastervit-export
    if report.is_file():
        data = json.loads(report.read_text())
        for section in ("validation", "accuracy"):
            if section in data:
                info[section] = data[section].get("verdict") or data[section].get("summary")
        if "quantization" in data:
            quant = data["quantization"]
            kept = quant.get("kept_in_float_by_default", [])
            known = QUANT_FORMATS.get(quant["format"])
            info["quantized_layers"] = (
                f"{quant['layers']} layers {known.label if known else quant['format'].upper()}, "
                f"{quant.get('residual_inputs', 0)} residual inputs; "
                f"left in float by default: {', '.join(kept) or 'none'}; "
                f"bias correction {quant.get('bias_correction', 'off')}"
            )
            info["quantized_for"] = quant.get("target", "tensorrt")  # files before --target: TensorRT's
        if "speed" in data:
            info["speed"] = data["speed"]["summary"]
        if "mixed_precision" in data:
            mixed = data["mixed_precision"]
            info["mixed_precision"] = (
                f"{mixed['int8_layers']} of {mixed['layers']} layers INT8, "
                f"{len(mixed['excluded'])} in float; top-1 agreement "
                f"{mixed['top1_agreement']:.2f} % (budget {mixed['budget_points']} points)"
            )
        if "sensitivity" in data:
            info["most_sensitive_layers"] = [
                f"{r['layer']} (cosine {r['mean_cosine']:.6f})" for r in data["sensitivity"][:5]
            ]
    return info


def _attention_line(quantized: list[str], products: list[str]) -> str:
    """``34 of 34 quantized (levels.2: 24, levels.3: 10)``: the attention matmuls (Q.K^T and
    softmax.V) that read dequantized inputs, by the module they belong to."""
    by_module = Counter(name.strip("/").split("/")[0] for name in quantized)
    where = ", ".join(f"{module}: {count}" for module, count in by_module.items())
    return f"{len(quantized)} of {len(products)} quantized" + (f" ({where})" if where else "")


def _input_line(model, metadata: dict) -> str:
    """``input: uint8 [batch, 224, 224, 3] (uint8 NHWC RGB, resized and cropped; ...)``."""
    import onnx

    graph_input = model.graph.input[0]
    dtype = onnx.TensorProto.DataType.Name(graph_input.type.tensor_type.elem_type).lower()
    shape = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    described = (metadata.get("input") or {}).get("format")
    return f"{graph_input.name}: {dtype} {shape}" + (f" ({described})" if described else "")


def _output_lines(model, metadata: dict) -> list[str]:
    """``stage2: float32 ['batch', 128, 28, 28] (stride 8)`` per output."""
    import onnx

    strides = (metadata.get("features") or {}).get("strides") or {}
    lines = []
    for output in model.graph.output:
        dtype = onnx.TensorProto.DataType.Name(output.type.tensor_type.elem_type).lower()
        shape = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
        lines.append(
            f"{output.name}: {dtype} {shape}" + (f" (stride {strides[output.name]})" if output.name in strides else "")
        )
    return lines


def inspect_engine(path: Path) -> dict:
    """The sidecar's facts, and the engine's layers with their precisions when it deserializes here."""
    from .runtime.tensorrt_backend import verify_engine

    sidecar = verify_engine(path, check_device=False)  # a truncated or replaced engine is refused
    info = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "model": sidecar.get("model"),
        "precision": sidecar.get("precision"),
        "tensorrt": sidecar.get("tensorrt"),
        "device": sidecar.get("device"),
        "build": sidecar.get("build"),
        "inputs": sidecar.get("inputs"),
        "outputs": sidecar.get("outputs"),
    }
    from .tensorrt_import import import_tensorrt

    trt = import_tensorrt((sidecar.get("tensorrt") or {}).get("flavour"))
    engine = None
    if trt is not None:
        try:
            engine = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR)).deserialize_cuda_engine(path.read_bytes())
        except Exception:  # no GPU / driver here: the sidecar facts stand alone
            engine = None
    if trt is None or engine is None:
        info["layers"] = ["(layer list needs TensorRT and a GPU that can deserialize this engine)"]
        return info
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))["Layers"]
    info["layers"] = [
        layer
        if isinstance(layer, str)
        else f"{layer.get('Name')}  [{layer.get('LayerType')}]  {layer.get('Precision', '')}"
        for layer in layers
    ]
    return info


def inspect_path(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.suffix == ".onnx":
        return inspect_onnx(path)
    if path.suffix in (".engine", ".plan", ".trt"):
        return inspect_engine(path)
    raise ModelFileError(f"{path}: expected an .onnx or .engine file")
