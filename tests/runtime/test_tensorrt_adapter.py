"""The TensorRT adapter's logic that runs without a GPU: batch planning against the profile,
dtype mapping through TensorRT's own ``nptype``, the closed state, and the legacy INT8
calibrator (batch size from the profile's OPT, errors kept instead of swallowed)."""
from __future__ import annotations

import types

import numpy as np
import pytest

from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.runtime.tensorrt_backend import TensorRTBackend, batch_plan, numpy_dtype


@pytest.mark.parametrize("count,low,high,plan", [
    (5, 1, 32, [(0, 5, 5)]),
    (70, 1, 32, [(0, 32, 32), (32, 64, 32), (64, 70, 6)]),
    (1, 4, 8, [(0, 1, 4)]),                       # below the profile's MIN: padded up
    (10, 4, 8, [(0, 8, 8), (8, 10, 4)]),          # the remainder of a split batch too
    (3, 8, 8, [(0, 3, 8)]),                       # a fixed-batch engine
])
def test_batch_plan_respects_the_profile(count, low, high, plan):
    assert batch_plan(count, low, high) == plan
    assert all(low <= run_as <= high and run_as >= stop - start for start, stop, run_as in plan)


def test_io_dtypes_come_from_tensorrt_itself():
    from tests.conftest import has_tensorrt
    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    from fastervit_trt.engines import load_tensorrt
    _, trt = load_tensorrt()
    for name, expected in [("float32", np.float32), ("float16", np.float16), ("int64", np.int64),
                           ("bool", np.bool_), ("uint8", np.uint8), ("int8", np.int8)]:
        assert numpy_dtype(trt, getattr(trt, name), "m.engine") == np.dtype(expected)
    with pytest.raises(FasterViTTRTError, match="m.engine: TensorRT type .* has no NumPy equivalent"):
        numpy_dtype(trt, trt.bfloat16, "m.engine")


def test_a_closed_model_refuses_calls_instead_of_hanging():
    import queue
    backend = object.__new__(TensorRTBackend)  # the state close() leaves, without a GPU
    backend.path, backend.pool, backend.closed = "m.engine", queue.Queue(), False
    backend.min_batch, backend.max_batch, backend.engine = 1, 8, object()
    backend.close()
    with pytest.raises(FasterViTTRTError, match="m.engine: the model is closed"):
        backend.infer(np.zeros((2, 3, 8, 8), np.float32))


class _FakeCuda:
    """Host memory standing in for device memory, to drive the calibrator on the CPU."""

    def __init__(self):
        self.uploads = []

    def active(self):
        import contextlib
        return contextlib.nullcontext()

    def device(self, shape, dtype):
        return np.zeros(shape, dtype), 1234

    def stream(self):
        return types.SimpleNamespace(synchronize=lambda: None), 0

    def upload(self, device, host, stream):
        device[: len(host)] = host
        self.uploads.append(host.shape)


def _calibrator(monkeypatch, tmp_path, batch, metadata):
    from fastervit_trt.engines import BuildConfig, calibrator
    fake = _FakeCuda()
    monkeypatch.setattr(calibrator, "open_cuda", lambda: fake)
    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=type("Entropy", (), {"__init__": lambda self: None}),
                                IInt8MinMaxCalibrator=type("MinMax", (), {"__init__": lambda self: None}))
    facts = {"path": tmp_path / "m.onnx", "dims": [-1, 3, 128, 128], "metadata": metadata}
    from fastervit_trt.calibration.dataset import DEFAULT_DATA
    config = BuildConfig(batch=batch, calib_data=DEFAULT_DATA)
    return calibrator.make_calibrator(trt, facts, config), fake


def test_legacy_calibrator_feeds_batches_of_the_profiles_opt(monkeypatch, tmp_path):
    """TensorRT 10 calibrates at OPT: a buffer of 8 with --batch 1,16,32 was overrun."""
    preprocess = {"input_size": [128, 128], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                  "crop_pct": 1.0, "crop_mode": "squash"}
    calibrator, fake = _calibrator(monkeypatch, tmp_path, (1, 16, 32), {"preprocess": preprocess})
    assert calibrator.get_batch_size() == 16
    fed = 0
    while calibrator.get_batch(["input"]) is not None:
        fed += 1
    assert fed >= 1 and set(fake.uploads) == {(16, 3, 128, 128)} and calibrator.error is None


def test_legacy_calibrator_keeps_errors_tensorrt_would_swallow(monkeypatch, tmp_path):
    preprocess = {"input_size": [128, 128], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                  "crop_pct": 1.0, "crop_mode": "squash"}
    calibrator, _ = _calibrator(monkeypatch, tmp_path, (1, 4, 8), {"preprocess": preprocess})

    def broken():
        raise OSError("disk gone")
        yield
    calibrator.batches = broken()
    assert calibrator.get_batch(["input"]) is None and "disk gone" in str(calibrator.error)


def test_legacy_calibrator_needs_toolkit_metadata_for_images(monkeypatch, tmp_path):
    from fastervit_trt.engines import EngineBuildError
    with pytest.raises(EngineBuildError, match="m.onnx: has no fastervit-trt metadata"):
        _calibrator(monkeypatch, tmp_path, (1, 8, 32), {})


def test_a_stubs_only_tensorrt_package_is_not_taken_for_tensorrt(tmp_path, monkeypatch):
    """tensorrt-stubs installs a `tensorrt` folder of .pyi files: importable, but no TensorRT."""
    import sys
    from fastervit_trt.engines import EngineBuildError, load_tensorrt
    from fastervit_trt.runtime.tensorrt_backend import import_tensorrt
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("def nptype(t): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    assert import_tensorrt("tensorrt") is None
    with pytest.raises(EngineBuildError, match="no TensorRT is installed"):
        load_tensorrt("tensorrt")
