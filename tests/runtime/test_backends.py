"""Backends are chosen, not guessed: the registry, the runtime options each backend reads, ONNX
Runtime's provider as an explicit choice, and where a loaded model says it runs."""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest

from fastervit_trt.errors import ModelFileError, OptionsError
from fastervit_trt.runtime import BACKENDS, RunsOn, RuntimeOptions, load
from fastervit_trt.runtime.backend import choose_backend
from fastervit_trt.runtime.onnxruntime_backend import session_providers
from tests import stand_in_tensorrt as stand_in

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture
def stand_in_engine(tmp_path, monkeypatch):
    """An ``.engine`` file (no sidecar) that loads through the stand-in TensorRT and CUDA."""
    from fastervit_trt.runtime import tensorrt_backend

    world = stand_in.tensorrt(1, 8)
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda flavour=None: world.trt)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", world.open_cuda)
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    return path


def test_load_takes_the_runtime_options_fields():
    """One set of runtime options: ``load``'s keywords are ``RuntimeOptions``'s fields, defaults alike."""
    parameters = list(inspect.signature(load).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [(f.name, f.default) for f in fields(RuntimeOptions)]


@pytest.mark.parametrize("name,backend", [("m.onnx", "onnxruntime"), ("m.engine", "tensorrt"), ("m.plan", "tensorrt")])
def test_auto_chooses_by_suffix(name, backend):
    assert choose_backend(Path(name), RuntimeOptions()) == backend
    assert choose_backend(Path(name), RuntimeOptions(backend=backend)) == backend


def test_an_explicit_backend_runs_a_file_of_any_other_suffix():
    assert choose_backend(Path("model.bin"), RuntimeOptions(backend="onnxruntime")) == "onnxruntime"
    with pytest.raises(ModelFileError, match=r"model\.bin: expected an \.engine/\.plan or \.onnx model"):
        choose_backend(Path("model.bin"), RuntimeOptions())


def test_an_explicit_backend_given_the_other_kind_of_file_is_one_clear_error(digits_fp32_onnx, stand_in_engine):
    with pytest.raises(ModelFileError) as error:
        load(digits_fp32_onnx, backend="tensorrt")
    assert str(error.value) == (
        f"{digits_fp32_onnx}: the tensorrt backend runs TensorRT engines (.engine/.plan), not ONNX files; "
        "pass backend='onnxruntime' (--backend onnxruntime) or 'auto'"
    )
    with pytest.raises(ModelFileError, match=r"m\.engine: the onnxruntime backend runs ONNX files .*'tensorrt'"):
        load(stand_in_engine, backend="onnxruntime")


def test_an_unknown_backend_names_the_registered_ones():
    with pytest.raises(OptionsError, match="backend 'openvino': expected auto or one of tensorrt, onnxruntime"):
        RuntimeOptions(backend="openvino")
    assert list(BACKENDS) == ["tensorrt", "onnxruntime"]


def test_options_a_backend_does_not_read_are_refused(digits_fp32_onnx, stand_in_engine):
    with pytest.raises(OptionsError, match="CUDA graphs apply to TensorRT engines; pass an .engine"):
        load(digits_fp32_onnx, cuda_graphs=True)
    with pytest.raises(OptionsError, match="execution contexts apply to TensorRT engines; pass an .engine"):
        load(digits_fp32_onnx, contexts=4)
    with pytest.raises(OptionsError, match="m.engine: ONNX Runtime providers apply to ONNX files; pass an .onnx"):
        load(stand_in_engine, provider="cpu")


def test_the_provider_is_chosen_and_reported(digits_fp32_onnx):
    for provider in ("auto", "cpu", CPU):  # this onnxruntime has the CPU provider only
        with load(digits_fp32_onnx, provider=provider) as model:
            assert model.runs_on == RunsOn("onnxruntime", CPU, "cpu")
            assert model.backend.session.get_providers() == [CPU]


@pytest.mark.parametrize("provider,name", [("cuda", CUDA), ("tensorrt", TRT), ("OpenVINOExecutionProvider", None)])
def test_a_provider_this_onnxruntime_lacks_is_one_line_naming_what_it_has(digits_fp32_onnx, provider, name):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    with pytest.raises(OptionsError) as error:
        load(digits_fp32_onnx, provider=provider)
    message = str(error.value)
    assert "\n" not in message and f"{provider!r} ({name or provider}) is not in this onnxruntime" in message
    assert f"which has {', '.join(available)}; pass --provider cpu" in message


@pytest.mark.parametrize(
    "provider,available,chosen",
    [
        ("auto", [TRT, CUDA, CPU], [CUDA, CPU]),  # never the TensorRT provider unasked
        ("auto", [TRT, CPU], [CPU]),
        ("auto", [CPU], [CPU]),
        ("tensorrt", [TRT, CUDA, CPU], [TRT, CUDA, CPU]),  # asked: it first, the others for what it cannot run
        ("cuda", [TRT, CUDA, CPU], [CUDA, CPU]),
        ("cpu", [TRT, CUDA, CPU], [CPU]),
        ("DmlExecutionProvider", ["DmlExecutionProvider", CPU], ["DmlExecutionProvider", CPU]),
    ],
)
def test_session_providers(provider, available, chosen):
    assert session_providers(provider, available) == chosen


def test_a_device_for_the_cpu_provider_is_refused(digits_fp32_onnx):
    with pytest.raises(OptionsError, match="device 1 is for a CUDA provider; ONNX Runtime runs it on the CPU"):
        load(digits_fp32_onnx, device=1)


def test_the_summary_says_what_the_model_is_and_where_it_runs(digits_fp32_onnx):
    with load(**{"path": digits_fp32_onnx, **asdict(RuntimeOptions(provider="cpu"))}) as model:
        assert (
            model.summary
            == f"{digits_fp32_onnx.name}: classifier, 10 classes, onnxruntime (CPUExecutionProvider) on cpu"
        )


def test_an_engine_reports_its_tensorrt_and_device(stand_in_engine):
    with load(stand_in_engine, device=1, contexts=1) as model:
        assert model.runs_on == RunsOn("tensorrt", "tensorrt 10.13.0", "cuda:1")
        assert model.backend.metadata == {}  # no sidecar beside it
        assert model.summary == "m.engine: classifier, 1 classes, tensorrt (tensorrt 10.13.0) on cuda:1"
        np.testing.assert_allclose(model.logits(np.ones((2, 3, 2, 2), np.float32))[:, 0], [12, 12])


class _Echo:
    """A whole backend: the sum of each input, from a file that names nothing."""

    input_name, output_names, output_shapes = "input", ["logits"], {"logits": (1,)}
    input_dtype, input_shape, max_batch, metadata, device = np.dtype(np.float32), (3, 2, 2), 4, {}, None
    runs_on = RunsOn("echo", "numpy", "cpu")

    def infer(self, batch):
        return self.infer_all(batch)["logits"]

    def infer_all(self, batch):
        return {"logits": batch.reshape(len(batch), -1).sum(1, keepdims=True)}

    def close(self):
        pass


def open_backend(path, options):
    """The echo backend's opener (this module stands in for a backend's own)."""
    return _Echo()


def test_a_new_backend_is_a_module_and_one_registry_entry(tmp_path, monkeypatch, capsys):
    from fastervit_trt.cli import infer
    from fastervit_trt.runtime.backend import BackendKind

    monkeypatch.setitem(BACKENDS, "echo", BackendKind(__name__, (".echo",), "echo files", (), gpu=False))
    path = tmp_path / "m.echo"
    path.write_bytes(b"")
    with load(path) as model:
        assert model.summary == "m.echo: classifier, 1 classes, echo (numpy) on cpu"
        np.testing.assert_allclose(model.logits(np.ones((5, 3, 2, 2), np.float32)), np.full((5, 1), 12.0))
    assert infer.parser().parse_args(["x.jpg", "--model", str(path), "--backend", "echo"]).backend == "echo"
    with pytest.raises(OptionsError, match="m.echo: CUDA devices apply to TensorRT engines and ONNX files"):
        load(path, device=0)


AZURE = "AzureExecutionProvider"  # in this onnxruntime: a provider that takes no CUDA device


def test_a_provider_that_takes_no_device_is_not_given_one_nor_claims_cuda(digits_fp32_onnx):
    with load(digits_fp32_onnx, provider=AZURE) as model:
        assert model.runs_on == RunsOn("onnxruntime", AZURE, "default")
        assert model.backend.device is None
    with pytest.raises(OptionsError) as error:
        load(digits_fp32_onnx, provider=AZURE, device=1)
    assert str(error.value) == (
        f"{digits_fp32_onnx}: device 1 is for a CUDA provider; ONNX Runtime runs it on {AZURE}, which takes none: "
        "drop --device"
    )


class _CudaBuild:
    """``onnxruntime.InferenceSession`` of a CUDA build, over this CPU one: the session is the
    CPU's, the providers and options are what ONNX Runtime reports. ``starts=False``: the CUDA
    provider fails to start and, as onnxruntime_inference_collection.py does, the session is
    made again on the fallback providers without their options."""

    def __init__(self, session_type: type, starts: bool = True) -> None:
        self.session_type, self.starts = session_type, starts
        self.made: list = []  # (providers asked for, session)

    def __call__(self, path, options, providers):
        session = self.session_type(path, options, providers=[CPU])
        named = [p if isinstance(p, tuple) else (p, {}) for p in providers]
        if not self.starts:
            named = [(CPU, {})]
        reported = {name: {k: str(v) for k, v in given.items()} for name, given in named}
        if CUDA in reported:
            reported[CUDA].setdefault("device_id", "0")  # the CUDA provider's default device
        session.get_providers = lambda: [name for name, _ in named]
        session.get_provider_options = lambda: reported
        self.made.append((providers, session))
        return session


@pytest.fixture
def cuda_build(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [AZURE, CUDA, CPU])
    build = _CudaBuild(onnxruntime.InferenceSession)
    monkeypatch.setattr(onnxruntime, "InferenceSession", build)
    return build


def test_the_cuda_provider_is_given_the_device_and_reports_the_one_it_runs_on(digits_fp32_onnx, cuda_build):
    with load(digits_fp32_onnx, provider="cuda", device=1) as model:
        assert cuda_build.made[-1][0] == [(CUDA, {"device_id": 1}), CPU]
        assert model.runs_on == RunsOn("onnxruntime", CUDA, "cuda:1") and model.backend.device == 1
    with load(digits_fp32_onnx) as model:  # auto: CUDA on its default device
        assert cuda_build.made[-1][0] == [CUDA, CPU]
        assert model.runs_on == RunsOn("onnxruntime", CUDA, "cuda:0") and model.backend.device == 0


def test_a_device_the_provider_did_not_start_on_is_refused_not_run_on_the_fallback(digits_fp32_onnx, cuda_build):
    cuda_build.starts = False
    for provider in ("auto", "cuda"):
        with pytest.raises(OptionsError) as error:
            load(digits_fp32_onnx, provider=provider, device=3)
        message = str(error.value)
        assert message.startswith(f"{digits_fp32_onnx}: ONNX Runtime could not start {CUDA} on device 3") and (
            "\n" not in message
        )
        assert message.endswith(
            "would run on CPUExecutionProvider; check --device 3 against nvidia-smi and "
            "CUDA_VISIBLE_DEVICES, or drop it"
        )
    with load(digits_fp32_onnx) as model:  # auto, no device asked for: the CPU, with a warning
        assert model.runs_on == RunsOn("onnxruntime", CPU, "cpu")


def test_run_cannot_fall_back_to_other_providers(digits_fp32_onnx):
    """ONNX Runtime's ``run`` re-creates the session on its fallback providers, without their
    options, when a provider fails a run (EPFail), unless fallback is disabled."""
    with load(digits_fp32_onnx) as model:
        assert model.backend.session._enable_fallback is False


def test_a_device_beyond_those_cuda_sees_is_refused_naming_the_count(stand_in_engine, monkeypatch):
    from fastervit_trt.runtime.cuda import TorchCuda

    stand_in.install_cuda(monkeypatch, devices=2)
    with pytest.raises(OptionsError) as error:
        load(stand_in_engine, device=2)
    assert str(error.value) == (
        f"{stand_in_engine}: device 2: this process sees 2 CUDA devices (0 to 1); pass --device 0 to 1, "
        "or check CUDA_VISIBLE_DEVICES"
    )
    with pytest.raises(OptionsError, match="^device 5: this process sees 2 CUDA devices"):
        TorchCuda(5)
    assert TorchCuda(1).index == 1


def test_the_device_help_says_what_each_backend_runs_on_by_default():
    (device,) = [f for f in fields(RuntimeOptions) if f.name == "device"]
    assert "ONNX Runtime's CUDA and TensorRT providers: device 0" in device.metadata["help"]
    assert "engines: the current device" in device.metadata["help"]
