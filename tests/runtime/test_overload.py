"""Overload is shed, not suffered: a model slower than the offered load keeps answering at its
capacity. The engine is stood in for by a sleep per batch (the real model's outputs, then
``BATCH_S``), so the figures depend on the clock, not on this machine's speed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pytest

from fastervit_trt.runtime import load
from fastervit_trt.runtime.batcher import BatchCost, Overloaded, RequestTimeout

BATCH_S = 0.3  # one engine call, whatever its size
MAX_BATCH = 4
TIMEOUT_S = 0.6  # twice a full batch's time
CLIENTS = 16  # closed loop: four times what one batch holds
RUN_S = 4.0


def test_batch_cost_fits_a_line_through_medians_and_forgets():
    cost = BatchCost(horizon_s=30)
    assert cost.estimate(4) is None
    cost.record(1, 0.3, now=0)
    assert cost.estimate(4, now=0) == pytest.approx(0.3)  # one size seen: flat, so larger batches form
    cost.record(4, 0.5, now=1)
    cost.record(4, 9.0, now=2)  # one slow call (a warm-up, a busy machine)
    cost.record(4, 0.5, now=3)
    assert cost.estimate(1, now=3) == pytest.approx(0.3) and cost.estimate(16, now=3) == pytest.approx(1.3)
    assert cost.estimate(4, now=40) is None  # every call older than the horizon: measured again


@pytest.fixture
def slow_model(digits_batch8_onnx, monkeypatch):
    with load(digits_batch8_onnx) as model:
        real = model.outputs

        def slow(batch):
            answer = real(batch)
            time.sleep(BATCH_S)
            return answer

        monkeypatch.setattr(model, "outputs", slow)
        yield model


def test_an_overloaded_batcher_answers_at_capacity(slow_model):
    """Closed-loop clients offering four times what the engine can run, with a timeout of two
    batches: requests that would be answered too late are refused at once and retried, so the
    engine runs full batches for callers still waiting."""
    image = np.zeros(slow_model.preprocess.input_shape, np.float32)
    answered, latencies, lock = [0], [], threading.Lock()
    refused, late = [0], [0]
    stop = time.monotonic() + RUN_S

    def client() -> None:
        for _ in range(1000):  # bounded in count as in time
            if time.monotonic() > stop:
                return
            sent = time.monotonic()
            try:
                future = batcher.submit(image)
                future.result(TIMEOUT_S)  # as the service waits: past it, the caller has its 503
            except FutureTimeout:
                future.cancel()
                with lock:
                    late[0] += 1
                continue
            except Overloaded as exc:
                with lock:
                    refused[0] += 1
                time.sleep(min(exc.retry_after_s or 0.05, 0.05))
                continue
            except RequestTimeout:
                with lock:
                    late[0] += 1
                continue
            with lock:
                answered[0] += 1
                latencies.append(time.monotonic() - sent)

    with slow_model.batcher(max_batch=MAX_BATCH, max_delay_ms=2, timeout_s=TIMEOUT_S) as batcher:
        batcher.probe(5)  # as the service's readiness check does: the engine measured before load arrives
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RUN_S + 10)
        stats = batcher.stats
    capacity = RUN_S / BATCH_S * MAX_BATCH
    assert answered[0] >= 0.8 * capacity, (answered, refused, late, stats)
    assert np.percentile(latencies, 99) <= TIMEOUT_S
    assert refused[0] > 0 and stats["shed"] == refused[0]
    computed = answered[0] + stats["computed_for_nobody"]
    assert stats["computed_for_nobody"] < 0.05 * computed, stats
    assert stats["batch_seconds_estimate"] == pytest.approx(BATCH_S, rel=0.5)


def test_a_request_that_cannot_be_answered_in_time_is_refused_at_once(slow_model):
    """The engine measured at 0.3 s a call: a request with a 0.2 s timeout is refused when it
    arrives (503 in the service), not queued, computed and thrown away."""
    image = np.zeros(slow_model.preprocess.input_shape, np.float32)
    with slow_model.batcher(max_batch=MAX_BATCH, max_delay_ms=1) as batcher:
        batcher.submit(image, timeout_s=5).result(5)  # measures the engine
        started = time.monotonic()
        with pytest.raises(Overloaded, match="would be answered in about 0.3 s") as refused:
            batcher.submit(image, timeout_s=0.2)
        assert time.monotonic() - started < 0.1 and refused.value.retry_after_s > 0
        batcher.submit(image, timeout_s=1.0).result(5)
        assert batcher.stats["shed"] == 1 and batcher.stats["computed_for_nobody"] == 0


def test_a_batch_is_cut_to_what_finishes_before_its_oldest_deadline(slow_model):
    """Four requests ready, the engine measured at 0.1 s a call plus 0.1 s an image: with 0.32 s
    left to the oldest, two run now and two wait; with 0.15 s left, the oldest fails at once."""
    from concurrent.futures import Future

    from fastervit_trt.runtime.batcher import _Request

    with slow_model.batcher(max_batch=MAX_BATCH) as batcher:
        batcher.cost.record(1, 0.2)
        batcher.cost.record(4, 0.5)

        def ready(left: float) -> list:
            now = time.monotonic()
            done: Future = Future()
            done.set_result(None)
            return [_Request(done, Future(), now, now + left + i) for i in range(4)]

        with batcher.lock:
            requests = ready(0.32)
            batcher.waiting.extend(requests)
            assert batcher._in_time(requests, time.monotonic()) == requests[:2]
            batcher.waiting.clear()
            requests = ready(0.15)
            batcher.waiting.extend(requests)
            assert batcher._in_time(requests, time.monotonic()) == []
            assert requests[0] not in batcher.waiting and batcher.stats["expired"] == 1
            batcher.waiting.clear()
        with pytest.raises(RequestTimeout, match="a batch would end after it"):
            requests[0].result.result(0)
