"""fastervit-serve for real: uvicorn on 127.0.0.1 (a free port), a real HTTP client, bounded
load (every answer checked against model.predict), refusals, metrics, graceful shutdown."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.runtime import load
from fastervit_trt.runtime.inputs import to_input
from fastervit_trt.serve import DRAIN_BYTES, ServeOptions, create_app
from tests.runtime.test_batcher import _Held
from tests.test_triton import _with_class_names

PHOTOS = sorted(p for p in (Path(__file__).parents[1] / "calibration").iterdir() if p.suffix in (".jpg", ".png"))
TYPES = {".jpg": "image/jpeg", ".png": "image/png"}


@pytest.fixture(scope="module")
def model(digits_batch8_onnx):
    with load(digits_batch8_onnx) as loaded:
        yield loaded


@contextmanager
def serving(model, **options):
    """The app under uvicorn on 127.0.0.1, any free port; yields (base URL, server)."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, ServeOptions(**options)),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


def _post(url, path, timeout=60):
    return httpx.post(
        f"{url}/v1/classify", content=path.read_bytes(), headers={"Content-Type": TYPES[path.suffix]}, timeout=timeout
    )


def _expected(model, path, topk=5):
    return [p.__dict__ for p in model.predict(path, topk=topk)[0]]


def _same(got, want):
    assert [(p["index"], p["name"]) for p in got] == [(p["index"], p["name"]) for p in want]
    np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in want], rtol=1e-4, atol=1e-6)


def test_concurrent_clients_get_the_models_answers_batched(model):
    """16 clients x 4 requests each: all 200, each equal to model.predict of its image, none
    lost or duplicated, and fewer engine calls than images."""
    jobs = [PHOTOS[i % len(PHOTOS)] for i in range(64)]
    expected = {path: _expected(model, path) for path in set(jobs)}
    with serving(model, max_delay_ms=20) as (url, _), ThreadPoolExecutor(16) as clients:
        responses = list(clients.map(lambda path: (path, _post(url, path)), jobs))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert [r.status_code for _, r in responses] == [200] * 64
    for path, response in responses:
        _same(response.json()["top"], expected[path])
    assert 'fastervit_requests_total{code="200",endpoint="classify"} 64.0' in metrics
    images = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("fastervit_batch_size_sum"))
    )
    calls = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("fastervit_batch_size_count"))
    )
    assert images == 64 and calls < 64
    assert "fastervit_queue_depth 0.0" in metrics and "fastervit_request_seconds_bucket" in metrics


def test_the_service_decodes_as_the_model_and_triton_do(model):
    """fastervit-triton --image-bytes decodes with model.preprocess.load (tests/test_triton.py);
    the service's batcher feeds exactly that input."""
    data = PHOTOS[0].read_bytes()
    np.testing.assert_array_equal(to_input(data, model.preprocess), model.preprocess.load(data))


def test_json_batches_answer_each_image_and_name_a_bad_one(model):
    images = [PHOTOS[0].read_bytes(), b"not an image", PHOTOS[1].read_bytes()]
    with serving(model) as (url, _):
        response = httpx.post(
            f"{url}/v1/classify", json={"images": [base64.b64encode(i).decode() for i in images], "topk": 2}, timeout=60
        )
        malformed = httpx.post(f"{url}/v1/classify", content=b"{", headers={"Content-Type": "application/json"})
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 3
    _same(results[0]["top"], _expected(model, PHOTOS[0], 2))
    _same(results[2]["top"], _expected(model, PHOTOS[1], 2))
    assert "cannot decode the image" in results[1]["error"]
    assert malformed.status_code == 400 and "expected JSON" in malformed.json()["error"]


def test_json_entries_that_are_not_base64_are_answered_each(model):
    """A bad entry is its own error, counted as a bad image; only a body that is not
    {"images": [...]} refuses the whole request."""
    photo = base64.b64encode(PHOTOS[0].read_bytes()).decode()
    entries = [photo, "not base64 at all!", 42, base64.b64encode(b"not an image").decode(), "QUJ"]
    with serving(model) as (url, _):
        response = httpx.post(f"{url}/v1/classify", json={"images": entries, "topk": 2}, timeout=60)
        whole = [
            httpx.post(f"{url}/v1/classify", content=body, headers={"Content-Type": "application/json"})
            for body in (b"not json", b"[1, 2]", b'{"pictures": []}', b'{"images": "QUJD"}', b'{"images": []}')
        ]
        metrics = httpx.get(f"{url}/metrics").text
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 5
    _same(results[0]["top"], _expected(model, PHOTOS[0], 2))
    assert results[1]["error"].startswith("image 1: not valid base64 (")
    assert results[2] == {"error": "image 2: not valid base64 (a JSON number, not a string)"}
    assert "cannot decode the image" in results[3]["error"]
    assert results[4]["error"].startswith("image 4: not valid base64 (")
    assert [r.status_code for r in whole] == [400] * 5
    assert ["expected JSON" in r.json()["error"] for r in whole] == [True] * 4 + [False]
    assert 'fastervit_errors_total{reason="bad_image"} 4.0' in metrics
    assert 'fastervit_errors_total{reason="bad_request"} 5.0' in metrics


def _small_png():
    """A 32x32 PNG, well under the small limits the refusal tests set."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _raw(url, data, reply=True):
    """Send ``data`` on a plain socket; the server's whole answer (read until it closes), or
    None when ``reply`` is False (the client hangs up at once)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        if not reply:
            return None
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_oversized_body_is_a_413_that_clients_read(model):
    """8 MB over a 64 KiB limit: urllib (which asks the server to close), httpx and a chunked
    upload each read the 413 and its JSON, not a reset connection; a declared length past
    the drain bound is answered at once; the service goes on serving."""
    limit, big = 64 << 10, b"\xff" * (8 << 20)
    headers = {"Content-Type": "image/jpeg"}
    with serving(model, max_body_bytes=limit) as (url, _):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{url}/v1/classify", data=big, headers=headers), timeout=30)
        sized = httpx.post(f"{url}/v1/classify", content=big, headers=headers, timeout=30)
        chunked = httpx.post(
            f"{url}/v1/classify",
            content=iter([big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20)]),
            headers=headers,
            timeout=30,
        )
        declared = limit + DRAIN_BYTES + 1
        at_once = _raw(
            url,
            f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {declared}\r\n\r\n".encode(),
        )
        after = httpx.post(f"{url}/v1/classify", content=_small_png(), headers={"Content-Type": "image/png"})
        metrics = httpx.get(f"{url}/metrics").text
    message = f"the body is over the limit of {limit} bytes; send a smaller image"
    assert refused.value.code == 413 and json.loads(refused.value.read()) == {"error": message}
    assert refused.value.headers["Connection"] == "close"
    for response in (sized, chunked):
        assert response.status_code == 413 and response.json() == {"error": message}
    assert at_once.startswith(b"HTTP/1.1 413 ") and message.encode() in at_once
    assert after.status_code == 200
    assert 'fastervit_errors_total{reason="too_large"} 4.0' in metrics


def test_curl_reads_the_413(model, tmp_path):
    """curl, with its "Expect: 100-continue" (answered before it sends) and without."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    body = tmp_path / "big.jpg"
    body.write_bytes(b"\xff" * (4 << 20))
    with serving(model, max_body_bytes=64 << 10) as (url, _):
        runs = [
            subprocess.run(
                ["curl", "-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}", *expect]
                + ["-H", "Content-Type: image/jpeg", "--data-binary", f"@{body}", f"{url}/v1/classify"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            for expect in ([], ["-H", "Expect:"])
        ]
    for run in runs:
        answer, code = run.stdout.rsplit("\n", 1)
        assert run.returncode == 0 and code == "413", run.stderr
        assert "over the limit of 65536 bytes" in json.loads(answer)["error"]


def test_a_client_hanging_up_mid_upload_is_one_log_line(model, caplog):
    """Headers promising 8 MB, 256 KB of it, then the socket closes: one warning naming the
    client, no traceback (the service's or uvicorn's), a metric, and the next request served."""
    with caplog.at_level(logging.INFO), serving(model) as (url, _):
        uvicorn_log = logging.getLogger("uvicorn")  # set up by uvicorn.Config: its records stop there
        uvicorn_log.addHandler(caplog.handler)
        try:
            head = (
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 8388608\r\n\r\n"
            )
            _raw(url, head + b"\xff" * (256 << 10), reply=False)
            deadline = time.monotonic() + 20
            while not any("hung up" in r.getMessage() or r.levelno >= logging.ERROR for r in caplog.records):
                assert time.monotonic() < deadline, "no log line about the client that hung up"
                time.sleep(0.05)
            time.sleep(0.2)  # a traceback logged just after the line would still be seen
            after = _post(url, PHOTOS[0])
            metrics = httpx.get(f"{url}/metrics").text
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    lines = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert len(lines) == 1 and lines[0].name == "fastervit_trt.serve" and lines[0].levelno == logging.WARNING
    assert lines[0].getMessage().startswith("client 127.0.0.1:")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert after.status_code == 200
    assert 'fastervit_errors_total{reason="client_disconnected"} 1.0' in metrics
    assert 'fastervit_requests_total{code="499",endpoint="classify"} 1.0' in metrics


def test_refusals_are_one_line_with_the_right_status(model):
    with serving(model, max_body_bytes=1000) as (url, _):
        bad = httpx.post(f"{url}/v1/classify", content=b"not an image", headers={"Content-Type": "image/jpeg"})
        large = _post(url, PHOTOS[0])
        text = httpx.post(f"{url}/v1/classify", content=b"hello", headers={"Content-Type": "text/plain"})
        topk = httpx.post(f"{url}/v1/classify?topk=0", content=b"x", headers={"Content-Type": "image/png"})
        empty = httpx.post(f"{url}/v1/classify", content=b"", headers={"Content-Type": "image/png"})
        metrics = httpx.get(f"{url}/metrics").text
    assert bad.status_code == 400 and bad.json()["error"] == (
        "<image bytes>: cannot decode the image (UnidentifiedImageError); check that it is a readable JPEG/PNG/WebP/BMP"
    )
    assert large.status_code == 413 and "over the limit of 1000 bytes" in large.json()["error"]
    assert text.status_code == 415 and "content type 'text/plain'" in text.json()["error"]
    assert topk.status_code == 400 and "topk='0'" in topk.json()["error"]
    assert empty.status_code == 400 and "empty body" in empty.json()["error"]
    for reason, count in [("bad_image", 1), ("too_large", 1), ("unsupported_type", 1), ("bad_request", 2)]:
        assert f'fastervit_errors_total{{reason="{reason}"}} {count}.0' in metrics


def test_overload_is_503_with_retry_after_and_nothing_is_lost(model, monkeypatch):
    held = _Held(model, monkeypatch)
    with serving(model, max_batch=1, max_delay_ms=0, max_queue=1) as (url, _), ThreadPoolExecutor(2) as clients:
        running = clients.submit(_post, url, PHOTOS[0])
        assert held.entered.wait(30)
        waiting = clients.submit(_post, url, PHOTOS[1])
        deadline = time.monotonic() + 30
        while "fastervit_queue_depth 1.0" not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = _post(url, PHOTOS[2])
        held.release.set()
        answers = [running.result(60), waiting.result(60)]
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "requests already wait (max_queue=1)" in refused.json()["error"]
    assert [a.status_code for a in answers] == [200, 200]
    _same(answers[1].json()["top"], _expected(model, PHOTOS[1]))


def test_shutdown_finishes_requests_in_flight(model, monkeypatch):
    held = _Held(model, monkeypatch)
    with ThreadPoolExecutor(1) as clients:
        with serving(model) as (url, server):
            ready = httpx.get(f"{url}/health/ready")
            info = httpx.get(f"{url}/v1/model").json()
            in_flight = clients.submit(_post, url, PHOTOS[0])
            assert held.entered.wait(30)
            server.should_exit = True  # SIGTERM's effect
            threading.Timer(0.3, held.release.set).start()
        answer = in_flight.result(60)  # the server has stopped by now
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert info["classes"] == 10 and info["input_size"] == [128, 128] and info["batching"]["max_batch"] == 8
    assert answer.status_code == 200
    _same(answer.json()["top"], _expected(model, PHOTOS[0]))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health/live", timeout=2)


def test_the_command_serves_until_sigterm(model):
    """fastervit-serve as a user runs it: a child process on a free loopback port, one
    request, then SIGTERM: a clean exit 0."""
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from fastervit_trt.cli import serve_main; raise SystemExit(serve_main())",
            "--model",
            str(model.source),
            "--port",
            str(port),
            "--provider",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read() if child.poll() else "slow"
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        answer = _post(url, PHOTOS[0])
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert answer.status_code == 200
    _same(answer.json()["top"], _expected(model, PHOTOS[0]))
    assert child.returncode == 0 and f"on http://127.0.0.1:{port}: POST /v1/classify" in err
    assert f"{model.source.name}: classifier, 10 classes, onnxruntime (CPUExecutionProvider) on cpu\n" in err


def test_v1_model_says_which_backend_provider_and_device_run_it(model):
    with serving(model) as (url, _):
        info = httpx.get(f"{url}/v1/model").json()
    assert (info["backend"], info["provider"], info["device"]) == ("onnxruntime", "CPUExecutionProvider", "cpu")


def test_the_models_own_class_names_answer_and_describe_it(digits_batch8_onnx, tmp_path):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    with (
        load(_with_class_names(digits_batch8_onnx, tmp_path / "named.onnx", names)) as named,
        serving(named) as (url, _),
    ):
        answer = _post(url, PHOTOS[0]).json()
        info = httpx.get(f"{url}/v1/model").json()
    assert [p["name"] for p in answer["top"]] == [names[p["index"]] for p in answer["top"]]
    assert info["class_names"] == names and info["kind"] == "classifier" and info["endpoint"] == "/v1/classify"
    assert info["preprocess"]["mean"] == list(named.preprocess.mean)


def test_a_headless_model_answers_embeddings_on_v1_embed(tmp_path):
    from fastervit_trt.export.pipeline import ExportOptions, export_model

    options = ExportOptions(model="faster_vit_digits", num_classes=0, precision="fp32", output_dir=tmp_path)
    with load(export_model(options).onnx_path) as headless, serving(headless) as (url, _):
        data = PHOTOS[0].read_bytes()
        single = httpx.post(f"{url}/v1/embed", content=data, headers={"Content-Type": TYPES[PHOTOS[0].suffix]})
        batch = httpx.post(f"{url}/v1/embed", json={"images": [base64.b64encode(data).decode(), "!!"]})
        wrong = httpx.post(f"{url}/v1/classify", content=data, headers={"Content-Type": TYPES[PHOTOS[0].suffix]})
        info = httpx.get(f"{url}/v1/model").json()
        expected = headless.embed(PHOTOS[0])[0]
    assert single.status_code == 200
    np.testing.assert_allclose(single.json()["embedding"], expected, rtol=1e-4, atol=1e-5)
    first, bad = batch.json()["results"]
    np.testing.assert_allclose(first["embedding"], expected, rtol=1e-4, atol=1e-5)
    assert "base64" in bad["error"]
    assert wrong.status_code == 404 and "POST /v1/embed" in wrong.json()["error"]
    assert info["kind"] == "embedding" and info["embedding_size"] == len(expected) and info["class_names"] == []


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        FasterViTTRTError("m.engine: TensorRT failed to run the engine (see its log)"),
    ],
    ids=["cuda", "tensorrt"],
)
def test_an_engine_failure_is_a_500_naming_it_and_not_ready_until_the_engine_runs(model, monkeypatch, failure):
    """Not a bad image: 500 with the cause, counted as an engine error and as a 500, and
    /health/ready is 503 with the cause until the engine runs again."""
    real, broken = model.outputs, threading.Event()
    broken.set()

    def outputs(batch):
        if broken.is_set():
            raise failure
        return real(batch)

    monkeypatch.setattr(model, "outputs", outputs)
    photo = base64.b64encode(PHOTOS[0].read_bytes()).decode()
    with serving(model) as (url, _):
        single = _post(url, PHOTOS[0])
        batch = httpx.post(f"{url}/v1/classify", json={"images": [photo, photo]}, timeout=60)
        down = httpx.get(f"{url}/health/ready", timeout=60)
        broken.clear()
        up = httpx.get(f"{url}/health/ready", timeout=60)
        after = _post(url, PHOTOS[0])
        metrics = httpx.get(f"{url}/metrics").text
    cause = f"{type(failure).__name__}: {failure}"
    assert single.status_code == 500 and cause in single.json()["error"], single.text
    assert "the engine failed on a batch of 1" in single.json()["error"]
    assert batch.status_code == 500 and cause in batch.json()["error"]
    assert down.status_code == 503 and down.json()["status"] == "not ready" and cause in down.json()["reason"]
    assert up.status_code == 200 and after.status_code == 200
    assert 'fastervit_errors_total{reason="engine_error"} 2.0' in metrics
    assert 'fastervit_requests_total{code="500",endpoint="classify"} 2.0' in metrics
    assert 'reason="bad_image"' not in metrics


def test_an_unexpected_error_is_a_500_counted_as_one(model, monkeypatch):
    def top(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(model, "top", top)
    with serving(model) as (url, _):
        answer = _post(url, PHOTOS[0])
        metrics = httpx.get(f"{url}/metrics").text
    assert answer.status_code == 500 and "RuntimeError: CUDA error: device-side assert" in answer.json()["error"]
    assert 'fastervit_requests_total{code="500",endpoint="classify"} 1.0' in metrics
    assert 'fastervit_requests_total{code="200",endpoint="classify"}' not in metrics
    assert 'fastervit_errors_total{reason="internal"} 1.0' in metrics


def test_a_stuck_engine_is_a_503_with_retry_after_and_not_ready(model, monkeypatch):
    """The engine call never returns: the request running in it and the one queued behind it
    are each answered 503 with Retry-After at their timeout (the queued one leaves the
    queue), and /health/ready says the engine is stuck until it returns."""
    held = _Held(model, monkeypatch)
    try:
        with serving(model, max_batch=1, max_delay_ms=0, timeout_s=0.5) as (url, _), ThreadPoolExecutor(2) as clients:
            started = time.monotonic()
            running = clients.submit(_post, url, PHOTOS[0], 10)
            assert held.entered.wait(30)
            queued = clients.submit(_post, url, PHOTOS[1], 10)
            answers = [running.result(30), queued.result(30)]
            waited = time.monotonic() - started
            stuck = httpx.get(f"{url}/health/ready", timeout=10)
            metrics = httpx.get(f"{url}/metrics").text
            held.release.set()
            ready = httpx.get(f"{url}/health/ready", timeout=10)
    finally:
        held.release.set()
    for answer in answers:
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert "no answer within 0.5 s" in answer.json()["error"]
    assert waited < 5
    assert stuck.status_code == 503 and "the engine has run one batch for" in stuck.json()["reason"]
    assert ready.status_code == 200
    assert 'fastervit_errors_total{reason="timeout"} 2.0' in metrics
    assert "fastervit_queue_depth 0.0" in metrics


def test_after_shutdown_requests_are_503_and_not_ready(model):
    from starlette.testclient import TestClient

    app = create_app(model, ServeOptions())
    with TestClient(app) as client:
        assert client.get("/health/ready").status_code == 200
    answer = client.post("/v1/classify", content=PHOTOS[0].read_bytes(), headers={"Content-Type": "image/jpeg"})
    ready = client.get("/health/ready")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.json()["error"] == "the service is shutting down; retry on another instance"
    assert ready.status_code == 503 and ready.json() == {"status": "not ready", "reason": "shutting down"}


def test_a_request_the_engine_cannot_answer_in_time_is_refused_at_once(model, monkeypatch):
    """The engine measured slower than the timeout: the next request is answered 503 at once
    (Retry-After from the expected wait), not queued to die; /metrics says what was shed."""
    real = model.outputs

    def slow(batch):
        answer = real(batch)
        time.sleep(0.5)
        return answer

    monkeypatch.setattr(model, "outputs", slow)
    with serving(model, timeout_s=0.3) as (url, _):
        first = _post(url, PHOTOS[0])  # no measurement yet: queued, run, too late
        deadline = time.monotonic() + 30
        while "fastervit_batch_seconds_estimate 0.0" in httpx.get(f"{url}/metrics").text:  # until it ends
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        refused = _post(url, PHOTOS[1])
        took = time.monotonic() - started
        metrics = httpx.get(f"{url}/metrics").text
    assert first.status_code == 503 and "no answer within 0.3 s" in first.json()["error"]
    assert refused.status_code == 503 and took < 0.3 and int(refused.headers["Retry-After"]) >= 1
    assert "would be answered in about 0.5 s" in refused.json()["error"]
    assert 'fastervit_overload{what="shed"} 1.0' in metrics
    assert 'fastervit_overload{what="computed_for_nobody"} 1.0' in metrics
    estimate = next(line for line in metrics.splitlines() if line.startswith("fastervit_batch_seconds_estimate "))
    assert float(estimate.split()[-1]) == pytest.approx(0.5, rel=0.5)


def test_the_service_logs_start_shutdown_and_failed_batches(model, monkeypatch, caplog):
    def broken(batch):
        raise RuntimeError("device lost")

    with caplog.at_level(logging.INFO, logger="fastervit_trt"):
        with serving(model, max_delay_ms=1) as (url, _):
            monkeypatch.setattr(model, "outputs", broken)
            failed = _post(url, PHOTOS[0])
    lines = [r.getMessage() for r in caplog.records]
    assert failed.status_code == 500
    assert any(line.startswith(f"serving {model.summary}; batches up to 8, 1 ms delay") for line in lines), lines
    assert any("the engine failed on a batch of 1 (RuntimeError: device lost)" in line for line in lines)
    assert "shutting down: draining 0 queued requests" in lines
    assert any(line.startswith("shut down: 0 queued requests drained in ") for line in lines)


def test_the_body_limit_is_named_in_mib():
    from fastervit_trt.cli.serve import parser

    assert parser().parse_args(["--model", "m.onnx", "--max-body-mib", "2"]).max_body_mib == 2
    assert parser().parse_args(["--model", "m.onnx", "--max-body-mb", "3"]).max_body_mib == 3  # the former spelling
    assert "in MiB (2^20 bytes" in parser().format_help()


def test_multipart_uploads_are_answered_like_a_json_batch(model):
    """What curl -F, browsers and most HTTP clients send: one result per image part, a bad part
    its own error, the parts counted against the body limit."""
    parts = [
        ("image", (PHOTOS[0].name, PHOTOS[0].read_bytes(), TYPES[PHOTOS[0].suffix])),
        ("image", ("broken.jpg", b"not an image", "image/jpeg")),
        ("note", (None, "a text field is not an image")),
        ("image", (PHOTOS[1].name, PHOTOS[1].read_bytes(), TYPES[PHOTOS[1].suffix])),
    ]
    with serving(model) as (url, _):
        answer = httpx.post(f"{url}/v1/classify?topk=3", files=parts)
        none = httpx.post(f"{url}/v1/classify", files=[("note", (None, "text only"))])
    with serving(model, max_body_bytes=PHOTOS[0].stat().st_size + 100) as (url, _):
        large = httpx.post(f"{url}/v1/classify", files=parts)
    assert answer.status_code == 200
    first, bad, second = answer.json()["results"]
    _same(first["top"], _expected(model, PHOTOS[0])[:3])
    _same(second["top"], _expected(model, PHOTOS[1])[:3])
    assert "cannot decode the image" in bad["error"]
    assert none.status_code == 400 and "without a file part" in none.json()["error"]
    assert large.status_code == 413
