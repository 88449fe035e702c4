"""fastervit-serve for real: uvicorn on 127.0.0.1 (a free port), a real HTTP client, bounded
load (every answer checked against model.predict), refusals, metrics, graceful shutdown."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from fastervit_trt.runtime import load
from fastervit_trt.runtime.inputs import to_input
from fastervit_trt.serve import ServeOptions, create_app
from tests.runtime.test_batcher import _Held

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
