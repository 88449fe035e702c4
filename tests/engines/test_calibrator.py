"""The TensorRT 10 build path (implicit INT8 calibrator, timing cache) through a stand-in
TensorRT builder that calls back as the real one does (tests/stand_in_builder.py; its CUDA
from tests/stand_in_tensorrt.py): runs without TensorRT, and without a GPU."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastervit_trt.calibration.dataset import DEFAULT_DATA, CalibrationDataError
from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine
from fastervit_trt.sidecar import METADATA_KEY
from tests import stand_in_builder
from tests import stand_in_tensorrt as stand_in

PREPROCESS = {
    "input_size": [16, 16],
    "mean": [0.5] * 3,
    "std": [0.5] * 3,
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "squash",
}


@pytest.fixture
def fp32_onnx(tmp_path):
    """A tiny FP32 classifier graph (N, 3, 16, 16) -> (N, 3) carrying the toolkit's metadata."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"model": "tiny", "precision": "fp32", "preprocess": PREPROCESS})
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def builder(monkeypatch):
    """TensorRT 10.13 (weak typing: builder flags and calibrator classes), standing in."""
    from fastervit_trt.engines import builder as builder_module
    from fastervit_trt.engines import calibrator

    world = stand_in_builder.Builder()
    cuda = stand_in.Cuda(reuse=True)  # its buffer a block the caller's stream may still be using
    monkeypatch.setattr(builder_module, "load_tensorrt", lambda backend="auto": ("tensorrt", world.trt))
    monkeypatch.setattr(calibrator, "open_cuda", lambda: cuda)
    world.cuda = cuda
    return world


def test_legacy_calibrator_feeds_batches_of_the_profiles_opt_and_saves_tensorrts_cache(fp32_onnx, tmp_path, builder):
    """TensorRT 10 calibrates at OPT (a buffer of 8 with --batch 1,16,32 was overrun); the
    cache it hands back as a memoryview is written as is."""
    cache = tmp_path / "tiny.cache"
    sidecar = build_engine(
        fp32_onnx,
        tmp_path / "tiny.engine",
        BuildConfig(batch=(1, 16, 32), precision="int8", calib_data=DEFAULT_DATA, calib_cache=cache),
    )
    batches = dict(e for e in builder.events if e[0] == "batches")["batches"]
    assert batches == 256 // 16  # max(256, OPT) inputs from the shipped photos, in batches of OPT
    assert ("alloc", 16 * 3 * 16 * 16 * 4) in builder.cuda.log
    assert cache.read_bytes().startswith(b"TRT-10130-EntropyCalibration2\n")
    assert sidecar["precision"] == "int8" and sidecar["build"]["strongly_typed"] is False
    assert sidecar["calibration_cache"]["path"] == str(cache)


def test_an_existing_cache_is_read_and_no_image_is_needed(fp32_onnx, tmp_path, builder):
    cache = tmp_path / "tiny.cache"
    cache.write_bytes(b"TRT-10130-EntropyCalibration2\ninput: 3c010a14\n")
    build_engine(fp32_onnx, tmp_path / "tiny.engine", BuildConfig(precision="int8", calib_cache=cache))
    assert ("cache read", {"input": struct.unpack(">f", bytes.fromhex("3c010a14"))[0]}) in builder.events
    assert not any(e[0] == "batches" for e in builder.events)


def test_a_minmax_cache_is_read_by_tensorrts_minmax_calibrator(fp32_onnx, tmp_path, builder):
    """TensorRT uses a cache only with the calibrator class that wrote it (its header names it)."""
    cache = tmp_path / "tiny.cache"
    cache.write_bytes(b"TRT-10130-MinMaxCalibration\ninput: 3c010a14\n")
    build_engine(fp32_onnx, tmp_path / "tiny.engine", BuildConfig(precision="int8", calib_cache=cache))
    assert [e[0] for e in builder.events] == ["cache read", "built"]


def test_an_int8_build_calibrates_with_the_int8_flag(fp32_onnx, tmp_path, builder):
    """TensorRT 10 ignores a calibrator unless BuilderFlag.INT8 is set: the engine would be FP16."""
    cache = tmp_path / "tiny.cache"
    cache.write_bytes(b"TRT-10130-EntropyCalibration2\ninput: 3c010a14\n")
    build_engine(fp32_onnx, tmp_path / "tiny.engine", BuildConfig(precision="int8", calib_cache=cache))
    assert builder.events[-1] == ("built", ("FP16", "INT8"), True)


def test_stand_in_calibrates_only_with_the_int8_flag():
    """The stand-in's own promise: without BuilderFlag.INT8 the calibrator is never called."""
    world = stand_in_builder.Builder()
    trt = world.trt
    calls = []

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def read_calibration_cache(self):
            calls.append("read")
            return b"TRT-10130-EntropyCalibration2\ninput: 3c010a14\n"

    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = Calibrator()
    assert builder.build_serialized_network(builder.create_network(), config) is not None
    assert calls == [] and world.events == [("built", ("FP16",), False)]


@pytest.mark.parametrize(
    "cache, reason",
    [
        (b"input: 3c010a14\n", "header"),
        (b"TRT-10130-MinMaxCalibration\ninput: 3c010a14\n", "MinMaxCalibration"),
        (b"TRT-10130-EntropyCalibration2\ninput 3c010a14\n", "line 2"),
        (b"TRT-10130-EntropyCalibration2\ninput: 3c010a1\n", "line 2"),
        (b"TRT-10130-EntropyCalibration2\ninput: 0.0078\n", "line 2"),
    ],
)
def test_stand_in_skips_a_cache_tensorrt_cannot_use_and_calibrates(cache, reason):
    """A malformed cache (or one of another calibrator) is not used: calibration runs from
    get_batch, and with no batch the build fails, as TensorRT 10 does."""
    world = stand_in_builder.Builder()
    trt = world.trt

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def read_calibration_cache(self):
            return cache

        def get_batch(self, names):
            return None

    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = Calibrator()
    assert builder.build_serialized_network(builder.create_network(), config) is None
    (skipped, why), *rest = world.events
    assert skipped == "cache skipped" and reason in why
    assert rest == [("batches", 0), ("calibration failure",)]


def test_a_calibration_batch_that_fails_is_the_error_not_failed_to_build(fp32_onnx, tmp_path, builder):
    """TensorRT swallows what get_batch raises and reports a failed build; the toolkit says
    what went wrong with the data instead, and writes nothing."""
    photos = tmp_path / "photos"
    photos.mkdir()
    whole = sorted(DEFAULT_DATA.glob("*.jpg"))[0].read_bytes()
    (photos / "truncated.jpg").write_bytes(whole[: len(whole) // 3])  # its header reads; its pixels do not
    with pytest.raises(CalibrationDataError, match="photos: not enough readable images"):
        build_engine(fp32_onnx, tmp_path / "tiny.engine", BuildConfig(precision="int8", calib_data=photos))
    assert ("calibration failure",) in builder.events
    assert not (tmp_path / "tiny.engine").exists() and not (tmp_path / "tiny.json").exists()


def test_legacy_calibrator_needs_toolkit_metadata_for_images(tmp_path, builder):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "bare",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 16, 16])],
    )
    path = tmp_path / "bare.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(EngineBuildError, match="bare.onnx: has no fastervit-trt metadata"):
        build_engine(path, tmp_path / "bare.engine", BuildConfig(precision="int8", calib_data=DEFAULT_DATA))


def test_a_timing_cache_tensorrt_cannot_read_is_replaced_not_fatal(fp32_onnx, tmp_path, builder, capsys):
    """createTimingCache returns None for bytes that are no cache (a truncated file):
    build without it, say so, and save the new one over it."""
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"\x00garbage" * 8)
    build_engine(fp32_onnx, tmp_path / "tiny.engine", BuildConfig(timing_cache=timing))
    assert ("timing cache unreadable", 64) in builder.events
    assert "was made by another GPU or TensorRT version (or is damaged); building without it" in capsys.readouterr().err
    assert timing.read_bytes() == builder.timing_cache_bytes
    assert (tmp_path / "tiny.engine").read_bytes() == b"engine"


def test_a_readable_timing_cache_is_used_and_kept(fp32_onnx, tmp_path, builder, capsys):
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"timing cache from last time")
    build_engine(fp32_onnx, tmp_path / "tiny.engine", BuildConfig(timing_cache=timing))
    assert "building without it" not in capsys.readouterr().err
    assert timing.read_bytes() == b"timing cache from last time"


def test_stand_in_memory_is_aligned_and_bounded():
    """The stand-in's own promises, on which the adapter tests rely."""
    cuda = stand_in.Cuda()
    buffer, address = cuda.device((5, 3), np.float32)
    assert address % 256 == 0 and buffer.shape == (5, 3)
    assert cuda.view(address + 12, (2, 3), np.float32).base is not None
    with pytest.raises(stand_in.IllegalAddress):
        cuda.view(address, (6, 3), np.float32)  # one row past the end


def test_the_calibrators_stream_is_released_after_the_build(fp32_onnx, tmp_path, builder):
    """The calibrator makes a stream of its own for its uploads: destroyed once TensorRT has
    calibrated (it was never released), whether the build succeeded or not."""
    build_engine(
        fp32_onnx,
        tmp_path / "tiny.engine",
        BuildConfig(batch=(1, 4, 8), precision="int8", calib_data=DEFAULT_DATA, calib_cache=tmp_path / "c.cache"),
    )
    assert builder.cuda.streams == {}
