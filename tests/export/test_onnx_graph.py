"""The written ONNX files: clean, TensorRT-friendly, deterministic, validated."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.graph.ort_eval import ort_logits

BANNED_OPS = {"BatchNormalization", "Shape", "ConstantOfShape", "Identity", "Pad", "Range", "Where", "Constant"}


def _load(result) -> onnx.ModelProto:
    return onnx.load(str(result.onnx_path))


def _value_shapes(model: onnx.ModelProto):
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        yield info.name, info.type.tensor_type.shape


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_quality(exported, precision):
    model = _load(exported(precision))
    ops = Counter(node.op_type for node in model.graph.node)
    assert not BANNED_OPS & set(ops), {op: ops[op] for op in BANNED_OPS & set(ops)}
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert ops["LayerNormalization"] > 0
    for name, shape in _value_shapes(model):
        assert len(shape.dim) <= 6, f"{name} has rank {len(shape.dim)}"
        symbolic = [i for i, d in enumerate(shape.dim) if not d.HasField("dim_value")]
        assert symbolic in ([], [0]), f"{name}: symbolic axes {symbolic}"  # batch (x windows)
    for io in (model.graph.input[0], model.graph.output[0]):
        dims = io.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and all(d.HasField("dim_value") for d in dims[1:])


def test_fp32_node_budget(exported):
    nodes = len(_load(exported("fp32")).graph.node)
    assert nodes <= 800, nodes  # the official export has 3,268; through onnxslim 882


@pytest.mark.slow
def test_export_is_byte_identical(exported, tmp_path, realistic_checkpoint):
    first = exported("fp32")
    again = export_model(ExportOptions(precision="fp32", output_dir=tmp_path, checkpoint=realistic_checkpoint))
    assert first.onnx_path.read_bytes() == again.onnx_path.read_bytes()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_validation_recorded_and_passed(exported, precision):
    report = exported(precision).report
    validation = report["validation"]
    assert validation["passed"] is True
    if precision == "fp32":
        assert validation["full_batch"]["relative_diff"] <= 1e-4
        assert validation["batch_1"]["relative_diff"] <= 1e-4
    else:
        assert validation["full_batch"]["min_cosine"] >= 0.999
    assert report["random_init"] is False and report["onnx"]["sha256"]


def test_fp16_policy(exported):
    """float16 everywhere except LayerNorm / Softmax / ReduceMean islands; float32 I/O."""
    model = _load(exported("fp16"))
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert types["input"] == fp32 and types["logits"] == fp32
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceMean"):
            assert all(types[name] == fp32 for name in node.input if name), node.name
        elif node.op_type in ("Conv", "MatMul", "Gemm"):
            assert all(types[name] == fp16 for name in node.input if name), node.name
    weight_bytes = Counter()
    for tensor in model.graph.initializer:
        weight_bytes[tensor.data_type] += len(tensor.raw_data)
    assert weight_bytes[fp16] > 50 * weight_bytes[fp32]


@pytest.mark.slow
def test_fp16_io_dtype_option(exported):
    result = exported("fp16", io_dtype="fp16")
    model = _load(result)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert result.report["validation"]["passed"]


def test_metadata_carries_preprocessing(exported):
    from fastervit_trt.export.onnx_export import read_metadata

    meta = read_metadata(_load(exported("fp32")))
    assert meta["model"] == "faster_vit_0_224"
    assert meta["preprocess"]["crop_pct"] == 0.875 and meta["preprocess"]["input_size"] == [224, 224]
    assert meta["batch_profile"] == [1, 8, 32]


def test_any_res_non_square_export(exported):
    result = exported("fp32", model="faster_vit_0_any_res", resolution=(480, 640), validation_batch=2)
    model = _load(result)
    ops = Counter(node.op_type for node in model.graph.node)
    assert "Pad" not in ops and "Shape" not in ops
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 480, 640]
    assert result.report["validation"]["passed"]


@pytest.mark.slow
def test_external_data_above_threshold(tmp_path):
    """Weights beyond the threshold (2 GB by default) go to <file>.onnx.data and still validate."""
    result = export_model(
        ExportOptions(precision="fp32", output_dir=tmp_path, external_data_threshold=1 << 20, validation_batch=2)
    )
    data = tmp_path / "faster_vit_0_224_fp32.onnx.data"
    assert data.stat().st_size > 100e6 and result.onnx_path.stat().st_size < 1e6
    assert result.report["validation"]["passed"]
    x = np.zeros((1, 3, 224, 224), np.float32)
    assert ort_logits(result.onnx_path, x).shape == (1, 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "faster_vit_0_224_fp32.onnx",
        "faster_vit_0_224_fp32.onnx.data",
        "faster_vit_0_224_fp32.report.json",
    ]
