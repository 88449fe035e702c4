"""fastervit-export --precision int8: Q/DQ ONNX + TensorRT cache, accuracy, reuse, bad input."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from fastervit_trt.calibration.cache import CalibrationCache
from fastervit_trt.cli import export_main
from fastervit_trt.graph.ort_eval import ort_logits


@pytest.mark.slow
def test_int8_report_and_accuracy(int8_export):
    report = int8_export.report
    quant = report["quantization"]
    assert quant["method"] == "entropy" and quant["qdq_base"] == "fp16" and not quant["cache_reused"]
    assert quant["calibration_inputs"] == 64 and quant["layers"] > 80
    accuracy = report["accuracy"]
    plain = accuracy["quantized_vs_fp32_qdq_arithmetic"]
    assert plain["mean_cosine"] >= 0.999, accuracy["summary"]  # ModelOpt reaches 0.9992 here
    assert accuracy["fp32_vs_pytorch"]["relative_diff"] <= 1e-4


def _ops_onnx_runtime_runs(path, tmp_path) -> set[str]:
    """The op types of ONNX Runtime's optimized CPU graph of ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node}


@pytest.mark.slow
def test_int8_kernel_figure_only_where_onnx_runtime_runs_int8_kernels(int8_export, tmp_path):
    """Over an FP16 base ONNX Runtime fuses no int8 kernels (it casts to float32): the report
    gives no int8-kernel figure then, and gives one over an FP32 base, where it fuses them."""
    integer_ops = {"MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "ConvInteger"}
    assert int8_export.report["accuracy"]["quantized_vs_fp32_ort_int8_kernels"] is None
    assert not _ops_onnx_runtime_runs(int8_export.onnx_path, tmp_path) & integer_ops
    code = export_main(
        [
            "--precision",
            "int8",
            "--qdq-base",
            "fp32",
            "--output-dir",
            str(tmp_path),
            "--calib-images",
            "16",
            "--calib-heldout",
            "4",
            "--quiet",
            "--no-engine",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "faster_vit_0_224_int8.report.json").read_text())
    assert 0.99 <= report["accuracy"]["quantized_vs_fp32_ort_int8_kernels"]["mean_cosine"] <= 1
    assert _ops_onnx_runtime_runs(tmp_path / "faster_vit_0_224_int8.onnx", tmp_path) & integer_ops


def test_int8_graph_structure(int8_export):
    model = onnx.load(str(int8_export.onnx_path))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Constant"] == 0  # the opset-19 conversion's operands are initializers too
    layers = int8_export.report["quantization"]["layers"]
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + layers  # weights: int8 + DQ only
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Erf"):  # left unquantized
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input)
        if node.op_type == "Conv":
            assert produced_by[node.input[0]] == produced_by[node.input[1]] == "DequantizeLinear"
            assert len(node.input) < 3 or produced_by.get(node.input[2]) != "DequantizeLinear"
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [19]
    from fastervit_trt.calibration.qdq import lone_quantizers

    assert lone_quantizers(model) == []  # every Q/DQ pair feeds a layer TensorRT fuses it into
    quant = int8_export.report["quantization"]
    assert quant["kept_in_float_by_default"] == ["/head/Gemm"] and quant["residual_inputs"] == 5
    assert quant["bias_correction"] == "on"  # every quantized layer's bias absorbs its rounding's mean shift
    assert sum(t.name.endswith("_bias_corrected") for t in model.graph.initializer) == layers
    nodes = {n.name: n for n in model.graph.node}
    assert produced_by[nodes["/head/Gemm"].input[0]] != "DequantizeLinear"  # the classifier stays in FP16
    for block in (
        "levels.0/blocks.0",
        "levels.0/blocks.1",
        "levels.1/blocks.0",
        "levels.1/blocks.1",
        "levels.1/blocks.2",
    ):
        add, conv1 = nodes[f"/{block}/Add"], nodes[f"/{block}/conv1/Conv"]
        assert conv1.input[0] in add.input  # the residual shares conv1's Q/DQ pair
    int8_weights = sum(len(t.raw_data) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert int8_weights > 0.9 * sum(len(t.raw_data) for t in model.graph.initializer)
    x = np.zeros((2, 3, 224, 224), np.float32)
    assert ort_logits(int8_export.onnx_path, x).shape == (2, 1000)


def test_cache_written_in_tensorrt_format(int8_export):
    cache_path = int8_export.onnx_path.with_suffix(".cache")
    lines = cache_path.read_text().splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    cache = CalibrationCache.read(cache_path)
    model = onnx.load(str(int8_export.onnx_path), load_external_data=False)
    graph_tensors = {o for n in model.graph.node for o in n.output} | {"input"}
    assert set(cache.scales) <= graph_tensors  # names are the graph's (= TensorRT's) tensor names
    assert all(s > 0 for s in cache.scales.values())


@pytest.mark.slow
def test_existing_cache_is_reused_without_reading_images(int8_export, tmp_path, capsys, monkeypatch):
    from fastervit_trt.export import quantized as pipeline

    cache = int8_export.onnx_path.with_suffix(".cache")
    monkeypatch.setattr(pipeline, "collect_histograms", None)  # calibrating would now crash
    code = export_main(
        [
            "--precision",
            "int8",
            "--output-dir",
            str(tmp_path),
            "--calib-cache",
            str(cache),
            "--calib-images",
            "64",
            "--quiet",
            "--no-engine",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "reused" in out
    reused = onnx.load(str(tmp_path / "faster_vit_0_224_int8.onnx"))
    first = onnx.load(str(int8_export.onnx_path))
    for suffix in ("_scale", "_bias_corrected"):  # the scales, and the biases from the kept channel means
        kept = lambda m: {t.name: t.raw_data for t in m.graph.initializer if t.name.endswith(suffix)}
        assert kept(reused) and kept(reused) == kept(first)


def _digits_int8(folder, *argv) -> dict:
    code = export_main(
        [
            "--variant",
            "faster_vit_digits",
            "--precision",
            "int8",
            "--output-dir",
            str(folder),
            "--calib-images",
            "16",
            "--quiet",
            "--no-engine",
            *argv,
        ]
    )
    assert code == 0
    return json.loads((folder / "faster_vit_digits_int8.report.json").read_text())["quantization"]


@pytest.mark.slow
def test_cache_made_with_other_flags_is_refused_not_silently_reused(tmp_path, capsys):
    """--calib-percentile 90 once said "reused" and kept the old scales."""
    cache = tmp_path / "digits.cache"
    first = _digits_int8(tmp_path / "a", "--calib-cache", str(cache), "--calib-method", "percentile")
    before = CalibrationCache.read(cache).scales
    again = _digits_int8(tmp_path / "b", "--calib-cache", str(cache), "--calib-method", "percentile")
    assert not first["cache_reused"] and again["cache_reused"]  # same flags: reused
    line = _fails(
        capsys,
        tmp_path,
        "--calib-cache",
        str(cache),
        "--calib-method",
        "percentile",
        "--calib-images",
        "16",
        "--calib-percentile",
        "90",
        "--no-engine",
    )
    assert "percentile 99.99 -> 90.0" in line and "--recalibrate" in line
    assert CalibrationCache.read(cache).scales == before
    changed = _digits_int8(
        tmp_path / "c",
        "--calib-cache",
        str(cache),
        "--calib-method",
        "percentile",
        "--calib-percentile",
        "90",
        "--recalibrate",
    )
    assert not changed["cache_reused"] and CalibrationCache.read(cache).scales != before


@pytest.mark.slow
def test_recalibrate_replaces_the_cache_it_names_without_force(tmp_path, capsys):
    cache = tmp_path / "digits.cache"
    _digits_int8(tmp_path / "a", "--calib-cache", str(cache))
    again = _digits_int8(tmp_path / "b", "--calib-cache", str(cache), "--recalibrate")
    assert not again["cache_reused"] and again["calibration_inputs"] == 16


@pytest.mark.slow
def test_bias_correction_needs_the_means_kept_beside_the_cache(tmp_path, capsys, caplog):
    cache = tmp_path / "digits.cache"
    assert _digits_int8(tmp_path / "a", "--calib-cache", str(cache))["bias_correction"] == "on"
    means = cache.with_name("digits.cache.means.npz")
    assert _digits_int8(tmp_path / "b", "--calib-cache", str(cache))["bias_correction"] == "on"
    off = _digits_int8(tmp_path / "c", "--calib-cache", str(cache), "--bias-correction", "off")
    assert off["bias_correction"] == "off (--bias-correction off)"
    model = onnx.load(str(tmp_path / "c" / "faster_vit_digits_int8.onnx"))
    assert not [t for t in model.graph.initializer if t.name.endswith("_bias_corrected")]
    means.write_bytes(b"not an npz")
    line = _fails(capsys, tmp_path, "--calib-cache", str(cache), "--calib-images", "16", "--no-engine")
    assert str(means) in line and "--recalibrate" in line
    ignored = _digits_int8(tmp_path / "e", "--calib-cache", str(cache), "--bias-correction", "off")
    assert ignored["bias_correction"] == "off (--bias-correction off)"  # the flag the message offers works
    means.unlink()  # a cache made before bias correction, or by another tool
    without = _digits_int8(tmp_path / "d", "--calib-cache", str(cache))["bias_correction"]
    assert without.startswith("off: the reused cache has no digits.cache.means.npz")
    assert f"bias correction {without}" in caplog.text


def _fails(capsys, tmp_path, *argv) -> str:
    out = tmp_path / "out"
    code = export_main(
        ["--variant", "faster_vit_digits", "--precision", "int8", "--output-dir", str(out), "--quiet", *argv]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1, err
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert leftovers == [], leftovers  # nothing half-written
    return lines[0]


def test_cache_from_another_model(int8_export, tmp_path, capsys):
    line = _fails(capsys, tmp_path, "--calib-cache", str(int8_export.onnx_path.with_suffix(".cache")))
    assert "model 'faster_vit_0_224' -> 'faster_vit_digits'" in line and "--recalibrate" in line


def test_cache_from_another_model_without_a_record(int8_export, tmp_path, capsys):
    cache = tmp_path / "foreign.cache"  # e.g. written by another tool: only the graph can tell
    cache.write_bytes(int8_export.onnx_path.with_suffix(".cache").read_bytes())
    line = _fails(capsys, tmp_path, "--calib-cache", str(cache))
    assert "does not match this graph" in line and "e.g. /" in line


def test_cache_of_another_calibrator(int8_export, tmp_path, capsys):
    cache = tmp_path / "foreign.cache"
    cache.write_bytes(int8_export.onnx_path.with_suffix(".cache").read_bytes())
    line = _fails(capsys, tmp_path, "--calib-cache", str(cache), "--calib-method", "minmax")
    assert "EntropyCalibration2 calibrator" in line and "--calib-method entropy" in line


def test_malformed_cache(tmp_path, capsys):
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-8601-EntropyCalibration2\ninput: zzzz\n")
    assert "line 2 is malformed" in _fails(capsys, tmp_path, "--calib-cache", str(bad))


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no usable image" in _fails(capsys, tmp_path, "--calib-data", str(tmp_path / "empty"))


def test_folder_of_non_images(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    (folder / "b.png").write_text("not a png")
    assert "no usable image" in _fails(capsys, tmp_path, "--calib-data", str(folder))


def test_fewer_images_than_one_batch(tmp_path, capsys):
    line = _fails(capsys, tmp_path, "--calib-images", "4", "--calib-batch", "8")
    assert "fewer than one batch of 8" in line
