"""Triton: model repositories validated against Triton's schema, and a real server answering."""

from __future__ import annotations

import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fastervit_trt.cli import export_main, triton_main
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.preprocess import load_image
from fastervit_trt.runtime import load
from fastervit_trt.triton import TritonOptions, write_model_repository
from tests.conftest import has_tensorrt

CHECKPOINT = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton")
    return export_model(
        ExportOptions(
            model="faster_vit_digits", checkpoint=CHECKPOINT, precision="fp32", batch=(1, 4, 16), output_dir=out
        )
    ).onnx_path


def test_onnx_repository_parses_with_tritons_model_config(digits_onnx, tmp_path):
    folder = write_model_repository(
        digits_onnx, tmp_path / "models", TritonOptions(instances=2, max_queue_delay_us=250)
    )
    config = parse_config(folder / "config.pbtxt")
    assert (folder / "1" / "model.onnx").read_bytes() == digits_onnx.read_bytes()
    assert config.name == "faster_vit_digits_fp32" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert config.input[0].name == "input" and list(config.input[0].dims) == [3, 128, 128]
    assert config.input[0].data_type == config.output[0].data_type == 11  # TYPE_FP32
    assert config.output[0].name == "logits" and list(config.output[0].dims) == [10]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == 2  # KIND_CPU
    assert config.parameters["preprocess.crop_mode"].string_value == '"squash"'
    assert config.parameters["preprocess.input_size"].string_value == "[128, 128]"
    assert config.parameters["fastervit.model"].string_value == "faster_vit_digits"


@pytest.mark.skipif(not has_tensorrt(), reason="no TensorRT / TensorRT-RTX to build an engine")
@pytest.mark.slow
def test_engine_repository_via_export(tmp_path, capsys):
    code = export_main(
        [
            "--variant",
            "faster_vit_digits",
            "--checkpoint",
            str(CHECKPOINT),
            "--precision",
            "fp16",
            "--batch",
            "1,8,32",
            "--output-dir",
            str(tmp_path / "export"),
            "--engine-dir",
            str(tmp_path / "engines"),
            "--triton-repo",
            str(tmp_path / "models"),
            "--quiet",
        ]
    )
    assert code == 0 and "tritonserver --model-repository" in capsys.readouterr().out
    folder = tmp_path / "models" / "faster_vit_digits_fp16"
    config = parse_config(folder / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.instance_group[0].kind == 1  # KIND_GPU
    engine = tmp_path / "engines" / "faster_vit_digits_fp16.engine"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()


def test_cli_and_bad_input(digits_onnx, tmp_path, capsys):
    assert triton_main([str(digits_onnx), "--repo", str(tmp_path), "--name", "digits"]) == 0
    assert (tmp_path / "digits" / "config.pbtxt").exists()
    assert triton_main([str(digits_onnx), "--repo", str(tmp_path), "--name", "digits"]) == 1
    assert "--force" in capsys.readouterr().err
    assert triton_main([str(tmp_path / "none.onnx"), "--repo", str(tmp_path)]) == 1
    assert "no such engine or ONNX file" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_can_run() -> str | None:
    """None when PyTriton's tritonserver binary starts on this machine, else the reason."""
    try:
        import pytriton
    except ImportError:
        return "nvidia-pytriton is not installed"
    binary = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
    try:
        probe = subprocess.run([str(binary), "--help"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tritonserver does not start here: {exc}"
    return (
        None
        if probe.returncode in (0, 1) and b"model-repository" in probe.stdout + probe.stderr
        else f"tritonserver does not start here: {probe.stderr[-200:]!r}"
    )


@pytest.mark.skipif(_server_can_run() is not None, reason=str(_server_can_run()))
@pytest.mark.slow
def test_served_for_real_over_http_and_grpc(digits_onnx, digits_folders):
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client

    from fastervit_trt.triton import serve_pytriton

    model = load(digits_onnx)
    images = sorted(digits_folders["heldout"].glob("*/*.png"))[:24]
    inputs = [model.preprocess(load_image(p)) for p in images]
    expected = model.logits(np.stack(inputs))
    ports = {"http_port": _free_port(), "grpc_port": _free_port(), "metrics_port": _free_port()}
    triton = serve_pytriton(model, "digits", **ports)
    try:
        http = http_client.InferenceServerClient(f"127.0.0.1:{ports['http_port']}", concurrency=8)
        grpc = grpc_client.InferenceServerClient(f"127.0.0.1:{ports['grpc_port']}")
        assert http.is_model_ready("digits") and grpc.is_model_ready("digits")

        def request(module, index: int):
            batch = np.stack(inputs[index : index + 1 + index % 3])
            tensor = module.InferInput("input", batch.shape, "FP32")
            tensor.set_data_from_numpy(batch)
            return [tensor]

        indices = range(len(inputs) - 3)
        # HTTP: tritonclient's own concurrency (gevent clients stay on one thread); gRPC: 8 threads
        pending = {i: http.async_infer("digits", request(http_client, i)) for i in indices if i % 2 == 0}
        with ThreadPoolExecutor(8) as pool:
            grpc_answers = dict(
                zip(
                    [i for i in indices if i % 2],
                    pool.map(lambda i: grpc.infer("digits", request(grpc_client, i)), [i for i in indices if i % 2]),
                )
            )
        answers = {i: r.get_result().as_numpy("logits") for i, r in pending.items()}
        answers.update({i: r.as_numpy("logits") for i, r in grpc_answers.items()})
        assert len(answers) == len(indices)
        for index, logits in answers.items():
            assert np.allclose(logits, expected[index : index + 1 + index % 3], atol=1e-5)
        # encoded images as bytes (TYPE_STRING / BYTES): the same logits as the runtime gives them
        encoded = np.array([[p.read_bytes()] for p in images[:3]], dtype=np.object_)
        tensor = grpc_client.InferInput("image", encoded.shape, "BYTES")
        tensor.set_data_from_numpy(encoded)
        served = grpc.infer("digits_bytes", [tensor]).as_numpy("logits")
        assert np.allclose(served, model.logits([p.read_bytes() for p in images[:3]]), atol=1e-5)
        http.close()
        grpc.close()
    finally:
        triton.stop()


def test_image_bytes_ensemble_parses_and_its_python_model_preprocesses(digits_onnx, tmp_path, monkeypatch):
    """--image-bytes: a Python-backend model decoding bytes and an ensemble feeding the
    classifier, checked against Triton's schema; the model.py run with a stand-in for
    Triton's pb_utils gives the runtime's own preprocessing."""
    import importlib.util
    import json
    import sys
    import types

    repo = tmp_path / "models"
    write_model_repository(digits_onnx, repo, TritonOptions(name="digits", image_bytes=True))
    pre, ensemble = (
        parse_config(repo / "digits_preprocess" / "config.pbtxt"),
        parse_config(repo / "digits_bytes" / "config.pbtxt"),
    )
    assert pre.backend == "python" and pre.input[0].data_type == 13  # TYPE_STRING
    assert list(pre.output[0].dims) == [3, 128, 128] and pre.output[0].name == "input"
    assert ensemble.platform == "ensemble" and [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "digits_preprocess",
        "digits",
    ]
    assert ensemble.output[0].name == "logits" and (repo / "digits_bytes" / "1").is_dir()

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    fake = types.SimpleNamespace(
        Tensor=Tensor,
        InferenceResponse=lambda tensors=(), error=None: (tensors, error),
        TritonError=str,
        get_input_tensor_by_name=lambda request, name: request[name],
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("digits_model_py", repo / "digits_preprocess" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from google.protobuf import json_format

    backend = module.TritonPythonModel()
    backend.initialize({"model_config": json.dumps(json_format.MessageToDict(pre, preserving_proto_field_name=True))})
    photos = sorted((Path(__file__).parents[1] / "calibration").glob("*.jpg"))[:2]
    request = {"image": Tensor("image", np.array([[p.read_bytes()] for p in photos], dtype=np.object_))}
    ((tensors, error), (_, bad_error)) = backend.execute(
        [request, {"image": Tensor("image", np.array([[b"x"]], dtype=np.object_))}]
    )
    model = load(digits_onnx)
    assert error is None and tensors[0].name == "input"
    np.testing.assert_array_equal(tensors[0].array, np.stack([model.preprocess.load(p) for p in photos]))
    assert "cannot decode" in bad_error
