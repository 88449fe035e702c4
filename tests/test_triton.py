"""Triton: model repositories validated against Triton's schema, and a real server answering."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastervit_trt.cli import export_main, triton_main
from fastervit_trt.errors import ModelFileError
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.preprocess import load_image
from fastervit_trt.runtime import load
from fastervit_trt.runtime.labels import class_names, model_class_names
from fastervit_trt.sidecar import METADATA_KEY, read_metadata
from fastervit_trt.triton import TritonOptions, write_model_repository
from tests.conftest import has_tensorrt

CHECKPOINT = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"
STAND_IN = Path(__file__).parent / "triton_onnx_stand_in.py"
PHOTOS = Path(__file__).parents[1] / "calibration"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


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
    # the classification extension's labels: the model's class names, one a line, in output order
    assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == class_names("digits", 10)


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
    assert config.output[0].label_filename == "labels.txt"  # the names from the engine's sidecar
    assert (folder / "labels.txt").read_text().splitlines() == class_names("digits", 10)


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
    assert ensemble.output[0].label_filename == "labels.txt"
    assert (repo / "digits_bytes" / "labels.txt").read_bytes() == (repo / "digits" / "labels.txt").read_bytes()

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


def _tiny_onnx(path: Path, outputs: dict[str, list[int]], metadata: dict) -> Path:
    """A (batch, 3, 8, 8) float model with ``outputs`` {name: dims after the batch} (Identity for
    (3, 8, 8) feature maps, a global average pool for (3,) vectors) and the toolkit's ``metadata``."""
    nodes, values = [], []
    for name, dims in outputs.items():
        if len(dims) == 3:
            nodes.append(helper.make_node("Identity", ["input"], [name]))
        else:
            nodes += [
                helper.make_node("GlobalAveragePool", ["input"], [f"{name}_pooled"]),
                helper.make_node("Flatten", [f"{name}_pooled"], [name]),
            ]
        values.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])], values
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {METADATA_KEY: json.dumps({"batch_profile": [1, 2, 4], **metadata})})
    onnx.save(model, str(path))
    return path


TINY_PREPROCESS = {"input_size": [8, 8], "crop_mode": "squash", "crop_pct": 1.0, "label_set": "imagenet-1k"}


def test_a_classifier_gets_its_own_class_names_and_a_backbone_or_embedding_none(tmp_path):
    classifier = _tiny_onnx(
        tmp_path / "pets.onnx",
        {"logits": [3]},
        {"arch": {"num_classes": 3}, "preprocess": TINY_PREPROCESS, "class_names": ["cat", "dog", "bird"]},
    )
    repo = tmp_path / "models"
    folder = write_model_repository(classifier, repo, TritonOptions(image_bytes=True))
    assert (folder / "labels.txt").read_text() == "cat\ndog\nbird\n"
    assert parse_config(folder / "config.pbtxt").output[0].label_filename == "labels.txt"
    assert (repo / "pets_bytes" / "labels.txt").read_text() == "cat\ndog\nbird\n"
    assert parse_config(repo / "pets_bytes" / "config.pbtxt").output[0].label_filename == "labels.txt"

    unnamed = _tiny_onnx(tmp_path / "plain.onnx", {"logits": [3]}, {"preprocess": TINY_PREPROCESS})
    folder = write_model_repository(unnamed, repo)  # no names of its own, no 3-class label set
    assert (folder / "labels.txt").read_text().splitlines() == ["class 0", "class 1", "class 2"]

    embedding = _tiny_onnx(
        tmp_path / "embed.onnx", {"embedding": [3]}, {"arch": {"num_classes": 0}, "output": "embedding"}
    )
    backbone = _tiny_onnx(
        tmp_path / "backbone.onnx",
        {"stage1": [3, 8, 8], "stage2": [3, 8, 8]},
        {"features": {"stages": ["stage1", "stage2"]}},
    )
    for model in (embedding, backbone):
        folder = write_model_repository(model, repo, TritonOptions(image_bytes=True))
        config = parse_config(folder / "config.pbtxt")
        assert [o.label_filename for o in config.output] == [""] * len(config.output)
        assert not (folder / "labels.txt").exists() and not (repo / f"{model.stem}_bytes" / "labels.txt").exists()
        ensemble = parse_config(repo / f"{model.stem}_bytes" / "config.pbtxt")
        assert [o.label_filename for o in ensemble.output] == [""] * len(config.output)


def test_a_class_name_spanning_lines_is_refused_before_anything_is_written(tmp_path):
    model = _tiny_onnx(
        tmp_path / "bad.onnx",
        {"logits": [2]},
        {"arch": {"num_classes": 2}, "preprocess": TINY_PREPROCESS, "class_names": ["cat", "big\ndog"]},
    )
    with pytest.raises(ModelFileError, match=r"bad.onnx: class name 'big\\ndog' spans lines"):
        write_model_repository(model, tmp_path / "models")
    assert not (tmp_path / "models").exists()


def _with_class_names(source: Path, target: Path, names: list[str]) -> Path:
    """A copy of the export ``source`` whose metadata carries ``names`` as its own class names."""
    model = onnx.load(str(source))
    metadata = read_metadata(model)
    (entry,) = [e for e in model.metadata_props if e.key == METADATA_KEY]
    entry.value = json.dumps({**metadata, "class_names": names})
    onnx.save(model, str(target))
    return target


def _stand_in_for_the_onnx_backend(folder: Path) -> None:
    """Serve ``folder``'s model.onnx with the Python backend (tests/triton_onnx_stand_in.py): only
    the config's platform changes; its inputs, outputs, labels and batching stay as written."""
    config = folder / "config.pbtxt"
    text = config.read_text()
    assert text.count('platform: "onnxruntime_onnx"') == 1
    config.write_text(text.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    shutil.copyfile(STAND_IN, folder / "1" / "model.py")


@contextmanager
def tritonserver(repo: Path, work: Path, ready_s: float = 120.0) -> Iterator[str]:
    """PyTriton's ``tritonserver`` binary serving ``repo`` on loopback; yields its HTTP address.

    Set up as PyTriton sets up its own: the Python backend copied beside the stub built for
    this Python, the stub linking this interpreter's libpython (LD_LIBRARY_PATH) and finding
    this environment's packages (PATH), a shared-memory prefix of its own. Not ready within
    ``ready_s``, or exited: the test fails with the server's log."""
    import pytriton
    import tritonclient.http as http_client

    dist = Path(pytriton.__file__).parent / "tritonserver"
    backends = work / "backends"
    shutil.copytree(dist / "backends", backends)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python")
    env = dict(os.environ)
    libs = [
        sysconfig.get_config_var("LIBDIR"),
        str(dist.parents[1] / "nvidia_pytriton.libs"),
        env.get("LD_LIBRARY_PATH"),
    ]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    command = [
        str(dist / "bin" / "tritonserver"),
        *("--model-repository", str(repo), "--backend-directory", str(backends)),
        *("--backend-config", f"python,shm-region-prefix-name=fastervit_test_{os.getpid()}_"),
        *("--backend-config", "python,shm-default-byte-size=4194304"),
        *("--http-address", "127.0.0.1", "--http-port", str(http_port)),
        *("--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port)),
        *("--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port), "--allow-gpu-metrics", "false"),
        *("--exit-timeout-secs", "10", "--log-verbose", "0"),
    ]
    log_path = work / "tritonserver.log"
    with open(log_path, "wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{http_port}"
    try:
        client = http_client.InferenceServerClient(address)
        start, ready = time.monotonic(), False
        for _ in range(int(ready_s / 0.25)):  # bounded: count and time
            if server.poll() is not None or time.monotonic() - start > ready_s:
                break
            try:
                ready = client.is_server_ready()  # strict readiness: every model loaded
            except Exception:  # not listening yet
                ready = False
            if ready:
                break
            time.sleep(0.25)
        client.close()
        if not ready:
            log = log_path.read_text(errors="replace")
            errors = "\n".join(line for line in log.splitlines() if line.startswith("E"))
            pytest.fail(
                f"tritonserver not ready after {time.monotonic() - start:.1f} s (exit code {server.poll()}); "
                f"its errors:\n{errors}\nthe end of its log ({log_path}):\n{log[-3000:]}"
            )
        print(f"tritonserver ready in {time.monotonic() - start:.1f} s at {address}")
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def _png(image: np.ndarray) -> bytes:
    from tests.fixtures.digits import to_pil

    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_tritons_own_server_answers_the_class_names_and_the_onnx_logits(digits_onnx, tmp_path):
    """The written repository served by Triton's server (2.51, from PyPI nvidia-pytriton): the
    ``_bytes`` ensemble decodes real PNG/JPEG files with the Python-backend model the toolkit
    wrote and answers the classification extension (class_count=3) with the export's own class
    names, ranked as the runtime ranks them; the plain model answers ONNX Runtime's logits."""
    import onnxruntime
    import tritonclient.http as http_client

    from tests.fixtures.digits import split_named

    began = time.monotonic()
    named = _with_class_names(digits_onnx, tmp_path / "digits_named.onnx", DIGIT_NAMES)
    assert model_class_names(read_metadata(onnx.load(str(named))), 10) == DIGIT_NAMES != class_names("digits", 10)
    repo = tmp_path / "models"
    folder = write_model_repository(named, repo, TritonOptions(name="digits", image_bytes=True))
    _stand_in_for_the_onnx_backend(folder)
    assert parse_config(folder / "config.pbtxt").output[0].label_filename == "labels.txt"  # still Triton's schema

    digits, labels = split_named()["heldout"]
    encoded = [_png(image) for image in digits[:4]] + [(PHOTOS / "sklearn_flower.jpg").read_bytes()]
    model = load(named)
    expected = model.logits(encoded).astype(np.float64)
    predictions = model.predict(encoded, topk=3)
    assert [p[0].index for p in predictions[:4]] == list(labels[:4])  # the trained model reads these right
    pixels = np.stack([model.preprocess.load(item) for item in encoded])
    session = onnxruntime.InferenceSession(str(named), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"input": pixels})

    (tmp_path / "server").mkdir()
    with tritonserver(repo, tmp_path / "server") as address:
        client = http_client.InferenceServerClient(address)
        try:
            images = http_client.InferInput("image", [len(encoded), 1], "BYTES")
            images.set_data_from_numpy(np.array([[item] for item in encoded], dtype=np.object_))
            top3 = http_client.InferRequestedOutput("logits", class_count=3)
            answered = client.infer("digits_bytes", [images], outputs=[top3]).as_numpy("logits")

            floats = http_client.InferInput("input", list(pixels.shape), "FP32")
            floats.set_data_from_numpy(pixels)
            served = client.infer("digits", [floats]).as_numpy("logits")
            answered_plain = client.infer("digits", [floats], outputs=[top3]).as_numpy("logits")
        finally:
            client.close()

    assert answered.shape == (len(encoded), 3)
    for row, logits, prediction in zip(answered, expected, predictions):
        fields = [item.decode().split(":", 2) for item in row]  # "score:index:label"
        indices = [int(index) for _, index, _ in fields]
        assert indices == [p.index for p in prediction]  # ranked as the runtime ranks them
        assert [label for _, _, label in fields] == [DIGIT_NAMES[i] for i in indices]
        np.testing.assert_allclose([float(score) for score, _, _ in fields], logits[indices], atol=1e-5)
    np.testing.assert_array_equal(answered_plain, answered)
    np.testing.assert_allclose(served, onnx_logits, atol=1e-5, rtol=0)
    print(
        f"tritonserver test: {len(encoded)} images, top-1 {[f[0].decode() for f in answered]}, "
        f"max |served - onnxruntime| {np.abs(served - onnx_logits).max():.2e}, {time.monotonic() - began:.1f} s in all"
    )
