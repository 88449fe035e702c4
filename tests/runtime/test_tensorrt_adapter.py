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
    real = sys.modules.pop("tensorrt", None)
    try:
        assert import_tensorrt("tensorrt") is None
        with pytest.raises(EngineBuildError, match="no TensorRT is installed"):
            load_tensorrt("tensorrt")
    finally:  # the stubs' namespace module must not outlive the test
        sys.modules.pop("tensorrt", None)
        if real is not None:
            sys.modules["tensorrt"] = real


class _FakeEngineWorld:
    """Just enough of TensorRT (and CUDA memory) to drive TensorRTBackend on the CPU: the
    context writes each image's sum times k into every value of its k-th output (``outputs``:
    name -> shape per image; default one (1,) "logits"), at the addresses the backend set,
    and records what the backend asked of it."""

    def __init__(self, low: int, high: int, output: str = "float32", outputs: dict | None = None):
        world = self
        self.calls, self.events, self.buffers = [], [], {}
        outputs = outputs or {"logits": (1,)}
        names = ["input", *outputs]

        class Context:
            def __init__(self):
                self.addresses = {}

            def set_input_shape(self, name, shape):
                self.shape = shape
                return low <= shape[0] <= high

            def set_tensor_address(self, name, pointer):
                self.addresses[name] = pointer

            def execute_async_v3(self, handle):
                count = self.shape[0]
                world.calls.append(count)
                inputs = world.buffers[self.addresses["input"]][:count]
                sums = inputs.reshape(count, -1).sum(1)
                for k, (name, shape) in enumerate(outputs.items(), start=1):
                    world.buffers[self.addresses[name]][:count] = (k * sums).reshape(-1, *[1] * len(shape))
                return True

        class Engine:
            num_io_tensors = len(names)

            def get_tensor_name(self, i):
                return names[i]

            def get_tensor_mode(self, name):
                return "in" if name == "input" else "out"

            def get_tensor_dtype(self, name):
                return "float32" if name == "input" else output

            def get_tensor_profile_shape(self, name, index):
                return (low, 3, 2, 2), (high, 3, 2, 2), (high, 3, 2, 2)

            def get_tensor_shape(self, name):
                return (-1, *outputs[name])

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                self._host_code = False

            @property
            def engine_host_code_allowed(self):
                return self._host_code

            @engine_host_code_allowed.setter
            def engine_host_code_allowed(self, value):
                world.events.append(("host code allowed", value))
                self._host_code = value

            def deserialize_cuda_engine(self, data):
                world.events.append(("deserialize", self._host_code))
                return Engine()

        logger = type("Logger", (), {"ERROR": 0, "__init__": lambda self, level=0: None})
        self.trt = types.SimpleNamespace(Logger=logger, Runtime=Runtime, __version__="10.0",
                                         TensorIOMode=types.SimpleNamespace(INPUT="in"),
                                         nptype=lambda dtype: np.dtype(dtype).type)

    def cuda(self):
        world = self
        fake = _FakeCuda()

        def device(shape, dtype):
            buffer = np.zeros(shape, dtype)
            world.buffers[len(world.buffers) + 1] = buffer  # its "address"
            return buffer, len(world.buffers)
        fake.device = device
        fake.pinned = lambda shape, dtype: np.zeros(shape, dtype)
        fake.download = lambda host, device, count, stream: host.__setitem__(slice(0, count), device[:count])
        return fake


@pytest.mark.parametrize("low,high,count,calls", [(4, 8, 1, [4]), (4, 8, 10, [8, 4]), (1, 8, 3, [3])])
def test_backend_pads_to_the_profile_minimum_and_drops_the_padding(low, high, count, calls, tmp_path, monkeypatch):
    from fastervit_trt.runtime import tensorrt_backend
    world = _FakeEngineWorld(low, high)
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda flavour=None: world.trt)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", world.cuda)
    (tmp_path / "m.engine").write_bytes(b"engine")
    backend = TensorRTBackend(tmp_path / "m.engine", contexts=1)
    x = np.random.default_rng(0).standard_normal((count, 3, 2, 2)).astype(np.float32)
    logits = backend.infer(x)
    assert world.calls == calls and logits.shape == (count, 1)
    np.testing.assert_allclose(logits[:, 0], x.reshape(count, -1).sum(1), rtol=1e-6)


def test_backend_returns_every_output_of_a_backbone_engine(tmp_path, monkeypatch):
    """Feature-map engines: one buffer per output, each read back in full, split batches
    joined per output, and results that later calls do not overwrite."""
    from fastervit_trt.runtime import tensorrt_backend
    shapes = {"stage2": (4, 3, 3), "stage3": (8, 2, 2), "stage4": (16, 1, 1)}
    world = _FakeEngineWorld(2, 4, outputs=shapes)
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda flavour=None: world.trt)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", world.cuda)
    (tmp_path / "m.engine").write_bytes(b"engine")
    backend = TensorRTBackend(tmp_path / "m.engine", contexts=1)
    assert backend.output_names == list(shapes) and backend.output_shapes == shapes
    x = np.random.default_rng(0).standard_normal((5, 3, 2, 2)).astype(np.float32)
    outputs = backend.infer_all(x)
    assert world.calls == [4, 2]  # split at MAX, the remainder padded to MIN
    backend.infer_all(-x)  # reuses the same buffers
    sums = x.reshape(5, -1).sum(1)
    for k, (name, shape) in enumerate(shapes.items(), start=1):
        assert outputs[name].shape == (5, *shape) and outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], np.broadcast_to((k * sums).reshape(5, 1, 1, 1), (5, *shape)),
                                   rtol=1e-6)
    np.testing.assert_array_equal(backend.infer(x), outputs["stage2"])  # infer: the first output


def test_version_compatible_engines_get_host_code_allowed_before_deserializing(tmp_path, monkeypatch):
    from fastervit_trt.runtime import tensorrt_backend
    world = _FakeEngineWorld(1, 8)
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda flavour=None: world.trt)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", world.cuda)
    (tmp_path / "m.engine").write_bytes(b"engine")
    TensorRTBackend(tmp_path / "m.engine", version_compat=True)
    TensorRTBackend(tmp_path / "m.engine")
    assert world.events == [("host code allowed", True), ("deserialize", True), ("deserialize", False)]


def test_rebuild_hint_keeps_every_build_input():
    """The hint once rebuilt an implicit-INT8 engine as FP32 and dropped its data and caches."""
    import shlex
    from fastervit_trt.sidecar import rebuild_command
    sidecar = {"precision": "int8", "tensorrt": {"flavour": "tensorrt"},
               "onnx": {"path": "/m/x.onnx"}, "engine": {"path": "/e/x.engine"},
               "build": {"batch": [1, 8, 32], "strongly_typed": False, "calib_cache": "c.cache",
                         "calib_data": "photos dir", "timing_cache": "t.cache"}}
    argv = shlex.split(rebuild_command(sidecar))
    for flag, value in [("--precision", "int8"), ("--backend", "tensorrt"), ("--calib-cache", "c.cache"),
                        ("--calib-data", "photos dir"), ("--timing-cache", "t.cache"), ("--batch", "1,8,32")]:
        assert argv[argv.index(flag) + 1] == value


def test_an_engine_with_integer_output_is_not_served_as_logits(tmp_path, monkeypatch):
    """An ArgMax (int64) output was once printed as "class 0 100.00 %"."""
    from fastervit_trt.runtime import tensorrt_backend
    world = _FakeEngineWorld(1, 8, output="int64")
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda flavour=None: world.trt)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", world.cuda)
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(FasterViTTRTError, match="m.engine: output 'logits' is int64, not float"):
        TensorRTBackend(tmp_path / "m.engine")
