"""The in-process dynamic batcher: coalescing, per-request answers and errors, overload,
timeouts and closing, on ONNX Runtime and on the stand-in TensorRT backend."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastervit_trt.errors import EngineError
from fastervit_trt.preprocess import ImageError, Preprocess
from fastervit_trt.runtime import batcher as batcher_module
from fastervit_trt.runtime import load
from fastervit_trt.runtime.batcher import BatcherClosed, Overloaded, RequestTimeout
from fastervit_trt.runtime.model import InferenceModel

PHOTOS = sorted(p for p in (Path(__file__).parents[2] / "calibration").iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module")
def model(digits_batch8_onnx):
    with load(digits_batch8_onnx) as loaded:
        yield loaded


def _inputs():
    """Every kind a service receives: paths, encoded bytes, decoded arrays."""
    return [
        PHOTOS[0],
        PHOTOS[1].read_bytes(),
        np.asarray(Image.open(PHOTOS[2]).convert("RGB")),
        str(PHOTOS[3]),
        PHOTOS[4].read_bytes(),
        PHOTOS[5],
    ]


def test_concurrent_requests_coalesce_and_each_caller_gets_its_own_answer(model):
    images = _inputs() * 4  # 24 requests from 12 threads
    expected = [model.logits(image)[0] for image in images]
    sizes = []
    with model.batcher(max_delay_ms=100, observe=sizes.append) as batcher, ThreadPoolExecutor(12) as clients:
        answers = list(clients.map(lambda image: batcher.submit(image).result(60), images))
    for got, want in zip(answers, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert sum(sizes) == len(images) and len(sizes) < len(images) and max(sizes) <= model.max_batch


def test_predict_gives_the_models_top_k(model):
    with model.batcher() as batcher:
        top = batcher.predict(PHOTOS[0], topk=3)
    assert top == model.predict(PHOTOS[0], topk=3)[0]


def test_a_bad_image_fails_only_its_own_request(model):
    with model.batcher(max_delay_ms=100) as batcher:
        futures = [batcher.submit(PHOTOS[0]), batcher.submit(b"not an image"), batcher.submit(PHOTOS[1])]
        with pytest.raises(ImageError, match="<image bytes>: cannot decode the image"):
            futures[1].result(60)
        good = [futures[0].result(60), futures[2].result(60)]
    np.testing.assert_allclose(good[0], model.logits(PHOTOS[0])[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(good[1], model.logits(PHOTOS[1])[0], rtol=1e-5, atol=1e-5)


class _Held:
    """Holds the model's engine call until released, to fill the queue behind it."""

    def __init__(self, model, monkeypatch):
        self.entered, self.release, real = threading.Event(), threading.Event(), model.outputs

        def held(batch):
            self.entered.set()
            assert self.release.wait(30)
            return real(batch)

        monkeypatch.setattr(model, "outputs", held)


def test_a_full_queue_refuses_new_requests_at_once(model, monkeypatch):
    held = _Held(model, monkeypatch)
    with model.batcher(max_batch=1, max_delay_ms=0, max_queue=3) as batcher:
        running = batcher.submit(PHOTOS[0])
        assert held.entered.wait(30)
        waiting = [batcher.submit(PHOTOS[1]) for _ in range(3)]
        with pytest.raises(Overloaded, match=r"3 requests already wait \(max_queue=3\); retry shortly"):
            batcher.submit(PHOTOS[2])
        assert batcher.depth == 3
        held.release.set()
        assert all(f.result(60).shape == (10,) for f in [running, *waiting])


def test_a_request_not_started_in_time_fails_with_a_timeout(model, monkeypatch):
    held = _Held(model, monkeypatch)
    with model.batcher(max_batch=1, max_delay_ms=0) as batcher:
        batcher.submit(PHOTOS[0])
        assert held.entered.wait(30)
        late = batcher.submit(PHOTOS[1], timeout_s=0.01)
        with pytest.raises(RequestTimeout, match="no answer within 0.05 s"):
            batcher.predict(PHOTOS[2], timeout_s=0.05)
        held.release.set()
        with pytest.raises(RequestTimeout, match=r"no answer within 0.01 s \(not started\)"):
            late.result(60)


def test_close_finishes_what_waits_or_cancels_it(model, monkeypatch):
    held = _Held(model, monkeypatch)
    batcher = model.batcher(max_batch=1, max_delay_ms=0)
    running = batcher.submit(PHOTOS[0])
    assert held.entered.wait(30)
    waiting = [batcher.submit(PHOTOS[1]) for _ in range(2)]
    closer = threading.Thread(target=batcher.close, kwargs={"cancel": True})
    closer.start()
    for future in waiting:
        with pytest.raises(BatcherClosed, match="closed before this request ran"):
            future.result(30)
    held.release.set()
    closer.join(30)
    assert running.result(30).shape == (10,) and not batcher.worker.is_alive()
    with pytest.raises(BatcherClosed, match="the batcher is closed"):
        batcher.submit(PHOTOS[0])
    held.release.clear()
    with model.batcher(max_batch=1, max_delay_ms=0) as finishing:  # close() without cancel: all run
        futures = [finishing.submit(p) for p in PHOTOS[:3]]
        held.release.set()
    assert all(f.done() and f.result().shape == (10,) for f in futures)


def test_many_threads_many_requests_nothing_lost_or_duplicated(model):
    arrays = [np.full((128, 128, 3), i * 20, np.uint8) for i in range(10)]
    expected = model.logits(arrays)
    with model.batcher(max_delay_ms=5) as batcher, ThreadPoolExecutor(8) as clients:
        futures = [clients.submit(lambda i=i: (i % 10, batcher.submit(arrays[i % 10]).result(60))) for i in range(80)]
        answers = [f.result(120) for f in futures]
    assert len(answers) == 80
    for index, logits in answers:
        np.testing.assert_allclose(logits, expected[index], rtol=1e-5, atol=1e-5)


def test_the_tensorrt_backend_is_batched_alike(tmp_path, monkeypatch):
    from tests.runtime.test_tensorrt_adapter import _backend, _sums

    backend, world = _backend(tmp_path, monkeypatch, 1, 8, contexts=2)
    preprocess = Preprocess(input_size=(2, 2), crop_pct=1.0)
    engine = InferenceModel(backend, preprocess, ["sum"], tmp_path / "m.engine")
    x = np.random.default_rng(0).standard_normal((12, 3, 2, 2)).astype(np.float32)
    with engine.batcher(max_delay_ms=100) as batcher, ThreadPoolExecutor(12) as clients:
        answers = list(clients.map(lambda row: batcher.submit(row).result(30), x))
    np.testing.assert_allclose(np.concatenate(answers), _sums(x), rtol=1e-5)
    assert len(world.calls) < 12  # coalesced


def test_bad_settings_are_refused(model):
    with pytest.raises(ValueError, match="max_queue must be at least 1, not 0"):
        model.batcher(max_queue=0)
    with pytest.raises(ValueError, match="max_delay_ms must be at least 0"):
        model.batcher(max_delay_ms=-1)


class _Timed:
    """An engine call of a fixed duration, answering zeros (10 classes)."""

    def __init__(self, model, monkeypatch, seconds: float):
        self.entered = threading.Event()

        def timed(batch):
            self.entered.set()
            time.sleep(seconds)
            return {"logits": np.zeros((len(batch), 10), np.float32)}

        monkeypatch.setattr(model, "outputs", timed)


def test_closed_loop_clients_merge_into_full_batches(model, monkeypatch):
    """8 closed-loop clients, 4 of them arriving while the first batch runs (the split that
    alternating half batches keep): the batches that follow take everyone waiting."""
    timed = _Timed(model, monkeypatch, 0.1)
    image = np.full((128, 128, 3), 100, np.uint8)
    sizes: list[int] = []
    stop = time.monotonic() + 30

    def client() -> None:
        for _ in range(12):
            if time.monotonic() > stop:
                return
            batcher.submit(image).result(30)

    with model.batcher(max_batch=8, max_delay_ms=30, observe=sizes.append) as batcher:
        first = [threading.Thread(target=client) for _ in range(4)]
        for thread in first:
            thread.start()
        assert timed.entered.wait(30)
        second = [threading.Thread(target=client) for _ in range(4)]
        for thread in second:
            thread.start()
        for thread in first + second:
            thread.join(60)
    assert sum(sizes) == 96
    assert np.mean(sizes[2:]) >= 6, sizes


def test_an_engine_failure_is_an_engine_error_naming_its_cause(model, monkeypatch):
    """A CUDA error in the engine call is no bad image: every caller of the batch gets an
    EngineError with the cause, the batcher reports it until a batch runs again."""
    real, broken = model.outputs, threading.Event()
    broken.set()

    def outputs(batch):
        if broken.is_set():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(batch)

    monkeypatch.setattr(model, "outputs", outputs)
    with model.batcher(max_delay_ms=50) as batcher:
        futures = [batcher.submit(PHOTOS[0]), batcher.submit(PHOTOS[1])]
        for future in futures:
            with pytest.raises(EngineError, match="RuntimeError: CUDA error: an illegal memory access") as failed:
                future.result(30)
            assert not isinstance(failed.value, ImageError)
        assert "illegal memory access" in str(batcher.failure)
        broken.clear()
        assert batcher.submit(PHOTOS[0]).result(30).shape == (10,)
        assert batcher.failure is None


def test_a_stuck_decode_does_not_hold_the_others(model, monkeypatch):
    """One image whose decode never ends: the images decoded beside it run, and it times
    out after its own timeout, not theirs."""
    released, real = threading.Event(), batcher_module.to_input

    def to_input(item, *args):
        if isinstance(item, bytes) and item == b"stuck":
            released.wait(30)
        return real(item, *args)

    monkeypatch.setattr(batcher_module, "to_input", to_input)
    try:
        with model.batcher(max_delay_ms=20) as batcher:
            stuck = batcher.submit(b"stuck", timeout_s=0.5)
            good = [batcher.submit(PHOTOS[0]), batcher.submit(PHOTOS[1])]
            assert all(f.result(5).shape == (10,) for f in good)
            with pytest.raises(RequestTimeout, match=r"no answer within 0.5 s \(not started\)"):
                stuck.result(5)
            assert batcher.depth == 0
    finally:
        released.set()


def test_a_request_that_times_out_leaves_the_queue(model, monkeypatch):
    """Behind a held engine call: a timed-out predict() and a submit() past its deadline
    fail while the engine is still held, and neither is left waiting in the queue."""
    held = _Held(model, monkeypatch)
    with model.batcher(max_batch=1, max_delay_ms=0) as batcher:
        batcher.submit(PHOTOS[0])
        assert held.entered.wait(30)
        with pytest.raises(RequestTimeout, match="no answer within 0.05 s"):
            batcher.predict(PHOTOS[1], timeout_s=0.05)
        late = batcher.submit(PHOTOS[2], timeout_s=0.05)
        with pytest.raises(RequestTimeout, match=r"no answer within 0.05 s \(not started\)"):
            late.result(5)
        assert batcher.depth == 0
        held.release.set()


def test_the_delay_a_batcher_adds_is_max_delay_ms(model, monkeypatch):
    """A lone request runs max_delay_ms after it arrived (not ten times later); a full batch
    runs at once, whatever the delay."""
    _Timed(model, monkeypatch, 0.0)
    image = np.full((128, 128, 3), 100, np.uint8)
    with model.batcher(max_batch=8, max_delay_ms=200) as batcher:
        started = time.monotonic()
        batcher.submit(image).result(30)
        lone = time.monotonic() - started
    with model.batcher(max_batch=8, max_delay_ms=60_000) as batcher:
        started = time.monotonic()
        futures = [batcher.submit(image) for _ in range(8)]
        assert all(f.result(30).shape == (10,) for f in futures)
        full = time.monotonic() - started
    assert 0.2 <= lone < 1.0 and full < 5
