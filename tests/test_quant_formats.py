"""The quantized formats' records against the facts they restate, and no format named by a
string comparison anywhere else in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastervit_trt.calibration.qdq import QMAX, element_dtype, quantize, scale_of, zeros
from fastervit_trt.deepstream import NETWORK_MODES
from fastervit_trt.export.stages import PRECISIONS, QUANTIZED
from fastervit_trt.quant_formats import FP8, INT8, QUANT_FORMATS, quant_format

PACKAGE = Path(__file__).resolve().parents[1] / "fastervit_trt"


def test_the_records_are_looked_up_by_name():
    assert list(QUANT_FORMATS) == ["int8", "fp8"]
    assert quant_format("int8") is INT8 and quant_format("fp8") is FP8
    with pytest.raises(ValueError, match="one of int8, fp8, not 'nvfp4'"):
        quant_format("nvfp4")


def test_the_export_precisions_are_the_float_ones_and_the_records():
    assert QUANTIZED == tuple(QUANT_FORMATS)
    assert PRECISIONS == ("fp32", "fp16", *QUANT_FORMATS)


def test_int8_is_onnx_int8_symmetric_and_rounded_half_to_even():
    info = np.iinfo(np.int8)
    assert INT8.element_range == (info.min, info.max) == (-128, 127)
    assert INT8.max == 127 and QMAX["int8"] == 127  # symmetric: -128 is never used
    assert element_dtype("int8") == np.int8
    assert helper.tensor_dtype_to_np_dtype(INT8.onnx_type) == np.int8
    # ties go to the even integer, as QuantizeLinear does; beyond the range saturates at +-127
    values = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0])
    assert quantize(values, np.ones(1), "int8").tolist() == [0, 2, 2, 0, -2, 127, -127]
    assert zeros("int8", 3).dtype == np.int8 and INT8.min_opset == 13


def test_fp8_is_e4m3fn_with_opset_19():
    finfo = ml_dtypes.finfo(ml_dtypes.float8_e4m3fn)
    assert FP8.element_range == (float(finfo.min), float(finfo.max)) == (-448.0, 448.0)
    assert FP8.max == float(finfo.max) == QMAX["fp8"]
    assert element_dtype("fp8") == np.dtype(ml_dtypes.float8_e4m3fn)
    assert FP8.onnx_type == TensorProto.FLOAT8E4M3FN
    assert helper.tensor_dtype_to_np_dtype(FP8.onnx_type) == np.dtype(ml_dtypes.float8_e4m3fn)
    # FLOAT8E4M3FN QuantizeLinear came with opset 19: the schema below it does not take it
    schema = onnx.defs.get_schema("QuantizeLinear", FP8.min_opset)
    assert schema.since_version == 19 and "tensor(float8e4m3fn)" in str(schema.type_constraints)
    older = onnx.defs.get_schema("QuantizeLinear", FP8.min_opset - 1)
    assert "float8e4m3fn" not in str(older.type_constraints)
    assert FP8.min_compute_capability == (8, 9)
    # saturating, to the nearest E4M3 value (17 lies halfway between 16 and 18: ties to even, 16)
    stored = quantize(np.array([17.0, 1000.0, -1000.0]), np.ones(1), "fp8")
    assert stored.dtype == ml_dtypes.float8_e4m3fn and stored.astype(np.float32).tolist() == [16.0, 448.0, -448.0]


def test_scales_and_zero_points_are_what_onnx_dequantizes():
    """A weight stored in each format dequantizes (ONNX's reference) to scale * stored."""
    from onnx.reference import ReferenceEvaluator

    weights = np.array([[0.3, -1.2], [2.0, 0.01]], np.float32)
    for name in QUANT_FORMATS:
        scales = scale_of(np.abs(weights).max(axis=1), name).astype(np.float32)
        stored = quantize(weights, scales[:, None].astype(np.float64), name)
        node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0)
        graph = helper.make_graph(
            [node],
            "dq",
            [],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [
                numpy_helper.from_array(stored, "q"),
                numpy_helper.from_array(scales, "s"),
                numpy_helper.from_array(zeros(name, 2), "z"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])  # every format's DequantizeLinear
        (dequantized,) = ReferenceEvaluator(model).run(None, {})
        assert np.allclose(dequantized, stored.astype(np.float32) * scales[:, None])
        assert np.allclose(dequantized, weights, atol=np.abs(weights).max() / 8)


def test_placement_and_deployment_facts():
    assert (INT8.quantizes_residuals, FP8.quantizes_residuals) == (True, False)
    assert (INT8.in_series_in_float, FP8.in_series_in_float) == (False, True)
    assert (INT8.trt_implicit_flag, FP8.trt_implicit_flag) == ("INT8", None)
    assert (INT8.ort_optimizes, FP8.ort_optimizes) == (True, False)
    assert (INT8.nvinfer_builds_onnx, FP8.nvinfer_builds_onnx) == (True, False)
    assert (INT8.nvinfer_calib_file, FP8.nvinfer_calib_file) == (True, False)
    assert {f.network_mode for f in QUANT_FORMATS.values()} <= set(NETWORK_MODES)
    assert (NETWORK_MODES[INT8.network_mode], NETWORK_MODES[FP8.network_mode]) == (1, 2)
    assert all(f.rounding == "half to even" for f in QUANT_FORMATS.values())
    assert (INT8.label, FP8.label) == ("INT8", "FP8")


def _format_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something to a format's name written as a string literal."""
    names = set(QUANT_FORMATS)

    def literals(node: ast.expr) -> set[str]:
        items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
        return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}

    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and any(literals(side) & names for side in [node.left, *node.comparators])
    ]


def test_no_module_compares_a_format_name_to_a_string():
    """Formats are told apart by their records' fields, never by ``fmt == "int8"``."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "quant_formats.py"
        for line in _format_comparisons(ast.parse(path.read_text(), str(path)))
    ]
    assert offenders == []


def test_the_comparison_check_finds_one():
    tree = ast.parse('if fmt == "fp8" or precision in ("int8", "fp16"):\n    pass\nx = "int8" if a else b\n')
    assert _format_comparisons(tree) == [1, 1]
