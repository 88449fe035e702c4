"""Every script in bench/ in its smoke size: a benchmark the README quotes keeps running."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import has_tensorrt

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    child = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *argv], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return child


@pytest.mark.slow
def test_export_speed_smoke(tmp_path):
    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    child = _run("export_speed.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["ratio_ours_vs_official"]["1"] > 0 and "ours/official" in child.stdout
    assert all(isinstance(s, float) for s in result["tensorrt_rtx_build_seconds"].values()), result


@pytest.mark.slow
def test_build_times_smoke(tmp_path):
    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    _run("build_times.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "int8", "fp8"] and all(r["seconds"] > 0 for r in rows)
    assert all(r["export_s"] > 0 for r in rows)


@pytest.mark.slow
def test_calibration_speed_smoke(tmp_path):
    _run("calibration_speed.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["calibration_seconds"] > 0 and result["ort_img_per_s"]["fp32"] > 0


@pytest.mark.slow
def test_triton_load_smoke(tmp_path):
    if not all(importlib.util.find_spec(m) for m in ("pytriton", "tritonclient")):
        pytest.skip("PyTriton / tritonclient not installed (pip install fastervit-trt[triton])")
    from fastervit_trt.export.pipeline import ExportOptions, export_model

    onnx_path = export_model(ExportOptions(model="faster_vit_digits", precision="fp32", output_dir=tmp_path)).onnx_path
    _run("triton_load.py", "--model", str(onnx_path), "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert len(json.loads((tmp_path / "r.json").read_text())["rows"]) == 2


@pytest.mark.slow
def test_export_all_smoke(tmp_path):
    out = tmp_path / "rows.json"
    child = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "export_all.py"),
            "--models",
            "faster_vit_digits",
            "--precisions",
            "fp32",
            "int8",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("faster_vit_digits", "fp32"),
        ("faster_vit_digits", "int8"),
    ]
    for row in rows:
        assert row["passed"] and row["within_bound"] and row["nodes"] > 50
        assert 0 < row["peak_rss_bytes"] < 4e9 and row["parameters"] > 5e5
    assert "| faster_vit_digits | 128x128 | fp32 |" in child.stdout
    assert out.with_suffix(".md").read_text().count("faster_vit_digits") == 2


@pytest.mark.slow
def test_gpu_suite_smoke_runs_what_it_can_and_says_what_it_skipped(tmp_path):
    import torch

    child = _run("gpu_suite.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    ran = {r["contender"] for r in result["rows"]}
    skipped = {s["contender"]: s["reason"] for s in result["skipped"]}
    assert "eager" in ran and ran.isdisjoint(skipped) and ran | set(skipped) >= {"eager", "amp", "trt-fp16", "trt-fp8"}
    if "trt-fp8" in skipped:  # no TensorRT or no GPU here: said, not an FP8 gap
        assert "FP8" not in skipped["trt-fp8"] and skipped["trt-fp8"] == skipped["trt-fp16"]
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in skipped["amp"] and "skipped amp" in child.stdout


@pytest.mark.slow
def test_gpu_suite_closes_each_contender_once_measured(tmp_path, monkeypatch):
    """Engines and models leave the GPU before the next contender loads (they were kept to the end)."""
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    suite = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_suite", suite)
    spec.loader.exec_module(suite)
    from fastervit_trt.export.pipeline import ExportOptions, export_model
    from fastervit_trt.runtime import load

    served = load(
        export_model(
            ExportOptions(model="faster_vit_digits", precision="fp32", batch=(1, 4, 8), output_dir=tmp_path)
        ).onnx_path
    )  # plays an engine's model
    log = []

    def make(contender, name, resolution, tmp, device):
        log.append(("make", contender))
        return suite.Contender(
            lambda x: log.append(("run", contender)),
            "numpy",
            close=lambda: log.append(("close", contender)),
            model=served if contender == "ort-cuda" else None,
        )

    monkeypatch.setattr(suite, "make_contender", make)
    monkeypatch.setattr(
        sys,
        "argv",
        ["gpu_suite.py", "--smoke", "--contenders", "eager", "ort-cuda", "--json", str(tmp_path / "r.json")],
    )
    assert suite.main() == 0
    assert [event for event in log if event[0] != "run"] == [
        ("make", "eager"),
        ("close", "eager"),
        ("make", "ort-cuda"),
        ("close", "ort-cuda"),
    ]
    assert ("run", "ort-cuda") in log
    serving = json.loads((tmp_path / "r.json").read_text())["serving"]  # engines are served to clients too
    assert [(r["contender"], r["clients"]) for r in serving] == [("ort-cuda", 1), ("ort-cuda", 8), ("ort-cuda", 32)]
    assert all(r["batcher"]["requests"] > 0 and r["mean_batch"] >= 1 for r in serving)


@pytest.mark.slow
def test_serving_smoke(tmp_path):
    child = _run("serving.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["clients"] for r in result["rows"]] == [1, 4]
    for row in result["rows"]:
        assert row["direct"]["requests"] > 0 and row["batcher"]["requests"] > 0
        assert 1 <= row["mean_batch"] <= row["clients"] and row["engine_calls"] > 0
    assert set(result["checks"].values()) <= {True, False} and "| clients | direct req/s" in child.stdout


@pytest.mark.slow
def test_service_path_smoke(tmp_path):
    child = _run("service_path.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    assert {r["files"] for r in result["rows"]} == {"12 MP JPEG", "1080p JPEG", "640x480 JPEG", "640x480 PNG"}
    assert all(r[path] > 0 for r in result["rows"] for path in ("before", "exact", "reduced", "uint8", "timm"))
    assert result["reduced_decoding_cost"]["faster_vit_digits"]["min_logit_cosine"] > 0.99
    assert "reduced/before" in child.stdout


@pytest.mark.slow
def test_backbone_smoke(tmp_path):
    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    _run("backbone.py", "--smoke", "--json", str(tmp_path / "b.json"), cwd=tmp_path)
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["nodes"] > 0 and row["engine_bytes"] > 0 and row["ort_cpu_ms"] > 0 and row["eager_ms"] > 0


@pytest.mark.slow
def test_precision_accuracy_table(tmp_path):
    _run("precision_accuracy.py", "--calib-images", "16", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    tables = json.loads((tmp_path / "r.json").read_text())
    spread = tables.pop("faster_vit_0_224 fp8 sensitivity")
    assert spread["layers"] > 0 and 0 < spread["max_layer_cost"] <= spread["sum_of_layer_costs"]
    assert spread["whole_graph_cost"] > 0
    assert len(tables) == 2
    for rows in tables.values():
        assert list(rows) == ["fp32", "fp16", "int8", "fp8", "int8_no_bias_correction", "fp8_no_bias_correction"]
        assert rows["fp32"]["mean_cosine"] == 1.0
        assert all(0.99 < row["mean_cosine"] <= 1.0 + 1e-6 for row in rows.values()), rows


@pytest.mark.slow
def test_batch_smoke(tmp_path):
    """fastervit-infer's one process against fastervit-batch on a local Ray (1 and 2 actors)."""
    pytest.importorskip("ray")
    child = _run("batch.py", "--smoke", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    assert [row["path"] for row in result["rows"]] == ["infer", "ray-1", "ray-2"], result
    assert result["images"] == 24 and all(row["images_per_s"] > 0 for row in result["rows"])
    assert result["ray_overhead_at_1_actor"] > 0 and "| path |" in child.stdout


def test_quantized_speed_smoke(tmp_path):
    """Every graph of the which-graph-for-which-runtime table is exported, run, timed and drawn."""
    child = _run("quantized_speed.py", "--smoke", "--out", str(tmp_path), cwd=tmp_path)
    result = json.loads((tmp_path / "quantized_speed_faster_vit_digits.json").read_text())
    graphs = ["FP32", "FP16", "INT8 --target tensorrt (default)", "INT8 --target onnxruntime-cpu"]
    assert result["graphs"] == [*graphs, "FP8 (E4M3, --target tensorrt)", "ONNX Runtime quantize_static"]
    assert all(result["seconds"][b][g] > 0 for b in ("1", "2") for g in result["graphs"])
    assert result["accuracy"]["FP32"]["mean_cosine"] == pytest.approx(1.0)
    assert all(0.99 < a["mean_cosine"] <= 1 + 1e-6 for a in result["accuracy"].values()), result["accuracy"]
    assert (tmp_path / "quantized_speed_faster_vit_digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| INT8 --target onnxruntime-cpu |" in child.stdout
