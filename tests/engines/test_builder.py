"""fastervit-build through TensorRT-RTX: sidecar, profiles, precision rules, timing cache, INT8."""

from __future__ import annotations

import io
import json

import pytest

from fastervit_trt.artifacts import sha256
from fastervit_trt.cli import build_main
from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine
from fastervit_trt.sidecar import SCHEMA_VERSION, read_sidecar, rebuild_command
from tests.conftest import requires_tensorrt

pytestmark = requires_tensorrt


@pytest.fixture(scope="module")
def fp16_engine(exported, tmp_path_factory):
    result = exported("fp16")
    engine = tmp_path_factory.mktemp("engines") / "fv0_fp16.engine"
    progress = io.StringIO()
    sidecar = build_engine(result.onnx_path, engine, BuildConfig(batch=(1, 4, 8), opt_level=2), progress)
    return result, engine, sidecar, progress.getvalue()


@pytest.mark.slow
def test_sidecar_contents(fp16_engine):
    result, engine, sidecar, _ = fp16_engine
    assert read_sidecar(engine) == sidecar
    assert sidecar["schema_version"] == SCHEMA_VERSION
    assert sidecar["model"] == "faster_vit_0_224" and sidecar["precision"] == "fp16"
    assert sidecar["arch"]["depths"] == [2, 3, 6, 5]
    assert sidecar["preprocess"]["crop_pct"] == 0.875 and sidecar["label_set"] == "imagenet-1k"
    (io_in,), (io_out,) = sidecar["inputs"], sidecar["outputs"]
    assert io_in["name"] == "input" and io_in["dtype"] == "float" and io_in["shape"] == [-1, 3, 224, 224]
    assert io_in["profile"] == {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}
    assert io_out["name"] == "logits" and io_out["shape"] == [-1, 1000]
    assert sidecar["tensorrt"]["flavour"] in ("tensorrt", "tensorrt-rtx") and sidecar["tensorrt"]["version"]
    assert sidecar["build"]["opt_level"] == 2 and sidecar["build"]["strongly_typed"] is True
    assert sidecar["onnx"]["sha256"] == sha256(result.onnx_path)
    assert sidecar["engine"]["sha256"] == sha256(engine)
    assert "created" in sidecar and "device" in sidecar


def test_progress_is_shown(fp16_engine):
    *_, progress = fp16_engine
    assert "builder: Building engine" in progress


@pytest.mark.slow
def test_int8_qdq_engine_records_no_calibration_cache_it_did_not_use(int8_export, tmp_path):
    """Q/DQ graphs carry their scales; the cache beside them is not read by the build, so the
    sidecar does not claim it (its provenance stays in the ONNX metadata)."""
    sidecar = build_engine(int8_export.onnx_path, tmp_path / "int8.engine", BuildConfig(batch=(1, 2, 4)))
    assert sidecar["precision"] == "int8" and sidecar["calibration_cache"] is None


@pytest.mark.slow
def test_timing_cache_on_tensorrt_rtx_says_it_does_not_apply(exported, tmp_path):
    from fastervit_trt.engines import load_tensorrt

    if load_tensorrt()[0] != "tensorrt-rtx":
        pytest.skip("TensorRT proper is installed: its timing cache is exercised on GPU machines")
    out = io.StringIO()
    cache = tmp_path / "timing.cache"
    build_engine(
        exported("fp32").onnx_path, tmp_path / "e.engine", BuildConfig(batch=(1, 1, 2), timing_cache=cache), out
    )
    assert "does not apply to TensorRT-RTX" in out.getvalue() and not cache.exists()


def test_precision_comes_from_the_onnx_on_strongly_typed_tensorrt(exported, tmp_path):
    from fastervit_trt.engines import load_tensorrt

    flavour, trt = load_tensorrt()
    if flavour == "tensorrt" and int(trt.__version__.split(".")[0]) <= 10:
        pytest.skip("TensorRT 10 builds FP32 graphs as FP16 with builder flags")
    with pytest.raises(
        EngineBuildError,
        match=r"fastervit-export --variant faster_vit_0_224 --checkpoint \S+"
        r"faster_vit_0_randomized.pth --precision fp16",
    ):
        build_engine(exported("fp32").onnx_path, tmp_path / "e.engine", BuildConfig(precision="fp16"))
    assert not (tmp_path / "e.engine").exists()


def test_profile_checked(exported, tmp_path):
    with pytest.raises(EngineBuildError, match="MIN <= OPT <= MAX"):
        build_engine(exported("fp32").onnx_path, tmp_path / "e.engine", BuildConfig(batch=(4, 2, 8)))


def test_existing_engine_needs_force(fp16_engine, capsys):
    result, engine, *_ = fp16_engine
    code = build_main([str(result.onnx_path), "--output", str(engine), "--quiet"])
    assert code == 1 and "--force" in capsys.readouterr().err


def test_rebuild_command_reproduces_the_options(fp16_engine):
    _, engine, sidecar, _ = fp16_engine
    command = rebuild_command(sidecar)
    assert command.startswith("fastervit-build ") and "--batch 1,4,8" in command
    assert "--opt-level 2" in command and str(engine) in command


@pytest.mark.slow
def test_build_cli(exported, tmp_path, capsys):
    onnx_path = exported("fp32").onnx_path
    engine = tmp_path / "cli.engine"
    code = build_main([str(onnx_path), "--output", str(engine), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "engine" in out and engine.exists()
    assert json.loads(engine.with_suffix(".json").read_text())["inputs"][0]["profile"]["max"][0] == 32
    with pytest.raises(SystemExit):
        build_main(["--help"])
    assert "examples:" in capsys.readouterr().out
