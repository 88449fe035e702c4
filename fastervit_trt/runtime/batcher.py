"""Dynamic batching in process: many callers' single images, one engine call.

    with model.batcher(max_delay_ms=2) as batcher:     # then, from any number of threads:
        batcher.predict("cat.jpg", topk=5)             # blocks: [Prediction, ...]
        future = batcher.submit(jpeg_bytes)            # a Future of that image's logits (classes,)

An image is decoded on the runtime's decoding threads as soon as it is submitted, so it
decodes while the engine runs the batch before it. One worker forms batches: the oldest
waiting request and whatever else waits, up to ``max_batch`` (default: the engine's largest
batch, since ``max_delay_ms`` and not the batch size bounds the wait, and a larger batch
only forms when that many requests are already waiting). A batch closes at ``max_batch``
requests or ``max_delay_ms`` after its oldest request arrived or the engine became free,
whichever is later (Triton's ``max_queue_delay``): requests that waited while the engine ran
merge with the callers it just answered, instead of two halves taking turns. Requests
arriving while the batch's images decode join it; once ``DECODE_GRACE_S`` pass without another
of them decoded, the ready ones run and those still decoding stay queued. Each caller gets its
own row.
One bad image fails only its own request, with the decoder's message; an engine or device
failure fails its batch with ``EngineError`` (the cause named) and is ``failure`` until a
batch runs again; a full queue (``max_queue`` waiting) fails a new request at once
(``Overloaded``), so memory stays bounded; a request not answered within its timeout fails
(``RequestTimeout``) and leaves the queue, even while the engine runs, as does one its caller
cancels; ``close()``
finishes what was submitted, or with ``cancel=True`` fails it (``BatcherClosed``).

Overload is shed, not suffered: the batcher measures how long a batch of each size takes
(``BatchCost``, updated by every run) and refuses at once (``Overloaded``, with the expected
wait as ``retry_after_s``) a request that the batches ahead of it would finish after its
timeout, instead of queueing it to die; a batch never starts for requests past their deadline,
and is cut to the size that finishes before its oldest request's deadline when that binds (a
request that no batch can answer in time fails at once). ``stats`` counts the requests shed,
those that expired waiting, and the images computed for callers who had already given up
(Triton's queue policy, with admission from measured batch times: goodput stays at capacity).
Torch-free, like the rest of the runtime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EngineError, OptionsError, ServiceError
from .inputs import decoders, to_input

if TYPE_CHECKING:
    from .model import InferenceModel, Prediction

log = logging.getLogger(__name__)

DECODE_GRACE_S = 0.05  # how long a closed batch waits for its next image to finish decoding
# a request is admitted when its answer is expected within this share of its timeout: the rest
# absorbs batching delay and the estimate's noise (at 1.0 those admitted last mostly ran late)
ADMISSION_SHARE = 0.9


class Overloaded(ServiceError):
    """The queue is full, or the batches ahead would answer after the request's timeout: refused
    without waiting; ``retry_after_s`` is the wait expected before the queue has room."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(ServiceError):
    """The request was not answered within its timeout."""


class BatcherClosed(ServiceError):
    """The batcher was closed before the request ran."""


class BatchCost:
    """How long a batch of ``size`` images takes, from the engine calls of the last
    ``horizon_s`` seconds (at most ``window``): a line ``a + b * size`` through each size's
    median time (flat while one size was seen). Medians keep one slow call (a warm-up, a busy
    machine) from moving it; calls age out, so an estimate too pessimistic to admit anything is
    forgotten and measured again."""

    def __init__(self, window: int = 32, horizon_s: float = 30.0) -> None:
        self.samples: deque[tuple[float, int, float]] = deque(maxlen=window)  # (when, size, seconds)
        self.horizon = horizon_s
        self.line: tuple[float, float] | None = None  # (seconds per call, seconds per image)

    def record(self, size: int, seconds: float, now: float | None = None) -> None:
        """One engine call's size and time; the line is fitted again (once per batch)."""
        self.samples.append((time.monotonic() if now is None else now, size, seconds))
        self._fit()

    def _fit(self) -> None:
        by_size: dict[int, list[float]] = {}
        for _, size, seconds in self.samples:
            by_size.setdefault(size, []).append(seconds)
        if not by_size:
            self.line = None
            return
        sizes = np.array(sorted(by_size), np.float64)
        times = np.array([np.median(by_size[int(n)]) for n in sizes])
        if len(sizes) > 1:
            slope, intercept = np.polyfit(sizes, times, 1)
            if slope >= 0:
                self.line = (max(float(intercept), 0.0), float(slope))
                return
        # one size seen (or times falling with size): the same time at every size. Optimistic on
        # purpose: a larger batch then forms, runs and is measured, where a pessimistic guess
        # would refuse the requests that make it and never learn otherwise
        self.line = (float(times[-1]), 0.0)

    def estimate(self, size: int, now: float | None = None) -> float | None:
        """Seconds for a batch of ``size``; None before any batch ran, or once every call
        measured is older than the horizon."""
        if self.samples and (time.monotonic() if now is None else now) - self.samples[-1][0] > self.horizon:
            self.samples.clear()
            self._fit()
        return None if self.line is None else self.line[0] + self.line[1] * size


@dataclass(eq=False)
class _Request:
    decoded: Future  # the model input, decoding on the runtime's threads
    result: Future
    arrived: float
    deadline: float | None


class Batcher:
    """Coalesces concurrent requests into batched engine calls of ``model`` (see the module)."""

    def __init__(
        self,
        model: InferenceModel,
        max_batch: int | None = None,
        max_delay_ms: float = 2.0,
        max_queue: int = 256,
        timeout_s: float | None = None,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        for name, value, low in (
            ("max_batch", max_batch, 1),
            ("max_delay_ms", max_delay_ms, 0),
            ("max_queue", max_queue, 1),
            ("timeout_s", timeout_s, 0),
        ):
            if value is not None and value < low:
                raise OptionsError(f"{name} must be at least {low}, not {value}")
        self.model, self.max_batch = model, max_batch or model.max_batch
        self.max_delay, self.max_queue, self.timeout = max_delay_ms / 1e3, max_queue, timeout_s
        self.observe = observe  # called with each batch size run
        self.waiting: deque[_Request] = deque()
        lock = threading.RLock()
        self.lock = threading.Condition(lock)  # the worker waits on it: a request queued or decoded, or closing
        self.timing = threading.Condition(lock)  # the timer waits on it: a new deadline, or closing
        self.closed = False
        self.free_since = 0.0  # when the engine last finished a batch
        self.running_since: float | None = None  # when the engine call now running began
        self.failure: EngineError | None = None  # the last engine call's failure, until one succeeds
        self.cost = BatchCost()
        self.running_size = 0  # images in the engine call now running
        self.shed = 0  # requests refused at admission: they would have been answered too late
        self.expired = 0  # requests that timed out waiting, or could not finish in time
        self.wasted = 0  # images computed for callers past their deadline
        self.worker = threading.Thread(target=self._work, name="fastervit-batcher", daemon=True)
        self.timer = threading.Thread(target=self._time_out, name="fastervit-batcher-timeouts", daemon=True)
        self.worker.start()
        self.timer.start()

    @property
    def depth(self) -> int:
        """Requests waiting to be batched."""
        return len(self.waiting)

    @property
    def stats(self) -> dict:
        """What overload did: requests shed and expired, images computed for nobody, and the
        batch-time estimate at ``max_batch`` (seconds; None before a batch ran)."""
        return {
            "shed": self.shed,
            "expired": self.expired,
            "computed_for_nobody": self.wasted,
            "batch_seconds_estimate": self.cost.estimate(self.max_batch),
        }

    def expected_answer(self, ahead: int) -> float | None:
        """Seconds until a request queued behind ``ahead`` waiting ones is answered: the engine
        call running, the full batches ahead, then its own (None before a batch ran)."""
        full = self.cost.estimate(self.max_batch)
        if full is None:
            return None
        running = self.cost.estimate(self.running_size) if self.running_since is not None else None
        remaining = max(0.0, running - self.running_for) if running is not None else 0.0
        own = self.cost.estimate(ahead % self.max_batch + 1) or 0.0
        return remaining + (ahead // self.max_batch) * full + own

    @property
    def running_for(self) -> float:
        """Seconds the engine call now running has taken (0 when idle)."""
        since = self.running_since
        return 0.0 if since is None else time.monotonic() - since

    def submit(self, image: Any, timeout_s: float | None = None) -> Future:
        """Queue one image (a path, encoded bytes, a PIL image or an array, as ``load`` takes
        them); a Future of its logits (classes,), or a backbone's ``{stage: (C, H, W)}``.
        Cancelling the Future before it runs takes the request out of the queue."""
        model = self.model
        return self._queue(decoders().submit(to_input, image, model.preprocess, model.exif_rotate), timeout_s)

    def probe(self, timeout_s: float) -> None:
        """Run the engine on one blank input through the queue; raises what a request would
        (``EngineError`` where the engine cannot run, ``RequestTimeout`` where it is stuck)."""
        preprocess = self.model.preprocess
        blank: Future = Future()
        blank.set_result(
            np.zeros(preprocess.input_shape, np.uint8 if preprocess.input_format == "uint8" else np.float32)
        )
        self._wait(self._queue(blank, timeout_s), timeout_s)

    def _queue(self, decoded: Future, timeout_s: float | None) -> Future:
        timeout = self.timeout if timeout_s is None else timeout_s
        with self.lock:
            if self.closed:
                decoded.cancel()
                raise BatcherClosed(f"{self.model.source}: the batcher is closed; make a new one")
            if len(self.waiting) >= self.max_queue:
                decoded.cancel()
                self.shed += 1
                raise Overloaded(
                    f"{self.model.source}: {len(self.waiting)} requests already wait (max_queue="
                    f"{self.max_queue}); retry shortly, or raise max_queue",
                    self.expected_answer(len(self.waiting)),
                )
            expected = self.expected_answer(len(self.waiting))
            if timeout is not None and expected is not None and expected > ADMISSION_SHARE * timeout:
                decoded.cancel()
                self.shed += 1
                raise Overloaded(
                    f"{self.model.source}: overloaded: the {len(self.waiting)} requests ahead would be answered in "
                    f"about {expected:.1f} s, too close to this request's {timeout:g} s timeout; retry shortly",
                    expected - ADMISSION_SHARE * timeout,
                )
            now = time.monotonic()
            request = _Request(decoded, Future(), now, None if timeout is None else now + timeout)
            self.waiting.append(request)
            self.lock.notify()
            if timeout is not None:
                self.timing.notify()
        decoded.add_done_callback(lambda _: self._wake())
        request.result.add_done_callback(lambda _: self._drop_if_cancelled(request))
        return request.result

    def _wake(self) -> None:
        with self.lock:
            self.lock.notify()

    def _drop_if_cancelled(self, request: _Request) -> None:
        """Take a request its caller cancelled out of the queue, and stop its decoding."""
        if request.result.cancelled():
            request.decoded.cancel()
            with self.lock:
                if request in self.waiting:
                    self.waiting.remove(request)

    def predict(self, image: Any, topk: int = 5, timeout_s: float | None = None) -> list[Prediction]:
        """The ``topk`` classes of one image, most probable first; blocks until it has run."""
        timeout = self.timeout if timeout_s is None else timeout_s
        logits = self._wait(self.submit(image, timeout), timeout)
        return self.model.top(logits[None], topk)[0]

    def _wait(self, future: Future, timeout: float | None) -> Any:
        """``future``'s result; past ``timeout`` it is cancelled (leaving the queue if it has
        not started) and ``RequestTimeout`` raised."""
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise RequestTimeout(
                f"{self.model.source}: no answer within {timeout:g} s; retry, or allow more time"
            ) from None

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The next requests to run together; None once closed and drained. A batch closes at
        ``max_batch`` requests or ``max_delay`` after its oldest arrived or the engine became
        free, whichever is later; it then waits for its images still decoding (requests arriving
        meanwhile join it) until ``DECODE_GRACE_S`` pass with no image done, and runs those
        that are ready."""
        progress_at, progress = None, (-1, -1)  # when the batch closed or last gained a ready image
        with self.lock:
            while True:
                now = time.monotonic()
                self._expire(now)
                if not self.waiting:
                    if self.closed:
                        return None
                    self.lock.wait()
                    continue
                members = list(islice(self.waiting, self.max_batch))
                ready = [r for r in members if r.decoded.done()]
                due = max(self.waiting[0].arrived, self.free_since) + self.max_delay
                if progress_at is None and (len(members) == self.max_batch or now >= due or self.closed):
                    progress_at = now
                if progress_at is not None and (len(ready), len(members)) != progress:
                    progress_at, progress = now, (len(ready), len(members))
                if progress_at is None:
                    wake: float | None = due
                elif ready and (len(ready) == len(members) or now >= progress_at + DECODE_GRACE_S):
                    ready = self._in_time(ready, now)
                    if not ready:
                        continue  # its oldest could not be answered in time and failed: look again
                    for request in ready:
                        self.waiting.remove(request)
                    return ready
                else:
                    wake = progress_at + DECODE_GRACE_S if ready else None
                self.lock.wait(None if wake is None else max(0.0, wake - now))

    def _in_time(self, ready: list[_Request], now: float) -> list[_Request]:
        """``ready`` cut to the size whose estimated run ends before its oldest request's
        deadline; when not even that request alone would, it fails now (empty list)."""
        deadline = ready[0].deadline
        if deadline is None or self.cost.estimate(len(ready)) is None:
            return ready
        size = len(ready)
        while size and now + (self.cost.estimate(size) or 0.0) > deadline:
            size -= 1
        if size:
            return ready[:size]
        self._fail_late(ready[0], "a batch would end after it")
        return []

    def _time_out(self) -> None:
        """Fail waiting requests at their deadlines, while the worker runs the engine too."""
        with self.lock:
            while not self.closed:
                now = time.monotonic()
                self._expire(now)
                deadline = min((r.deadline for r in self.waiting if r.deadline is not None), default=None)
                self.timing.wait(None if deadline is None else max(0.0, deadline - now))

    def _expire(self, now: float) -> None:
        """Fail the waiting requests past their deadline (the lock held)."""
        for request in list(self.waiting):
            if request.deadline is not None and now > request.deadline:
                self._fail_late(request, "not started")

    def _fail_late(self, request: _Request, why: str) -> None:
        """Take ``request`` out of the queue and fail it with ``RequestTimeout`` (the lock held)."""
        assert request.deadline is not None  # only requests with a deadline are late
        self.waiting.remove(request)
        self.expired += 1
        request.decoded.cancel()
        if request.result.set_running_or_notify_cancel():
            request.result.set_exception(
                RequestTimeout(
                    f"{self.model.source}: no answer within {request.deadline - request.arrived:g} s ({why}); "
                    "retry, or allow more time"
                )
            )

    def _run(self, batch: list[_Request]) -> None:
        ready = []
        for request in batch:
            if not request.result.set_running_or_notify_cancel():
                continue  # its caller gave up
            try:
                ready.append((request, request.decoded.result()))
            except Exception as exc:  # an image that cannot be decoded: its request alone fails
                request.result.set_exception(exc)
        if not ready:
            return
        if self.observe is not None:
            self.observe(len(ready))
        self.running_since, self.running_size = time.monotonic(), len(ready)
        try:
            outputs = self.model.outputs(np.stack([x for _, x in ready]))
            self.cost.record(len(ready), time.monotonic() - self.running_since)
        except Exception as exc:  # the engine or device failed: every caller of this batch hears why
            self.failure = EngineError(
                f"{self.model.source}: the engine failed on a batch of {len(ready)} "
                f"({type(exc).__name__}: {exc}); the images were not at fault"
            )
            self.failure.__cause__ = exc
            log.error("%s", self.failure)
            for request, _ in ready:
                request.result.set_exception(self.failure)
            return
        finally:
            self.running_since, self.free_since = None, time.monotonic()
        self.failure = None
        done = time.monotonic()
        late = sum(r.deadline is not None and done > r.deadline for r, _ in ready)
        if late:
            with self.lock:
                self.wasted += late
        single = None if self.model.is_backbone else next(iter(outputs))
        for i, (request, _) in enumerate(ready):
            request.result.set_result(outputs[single][i] if single else {k: v[i] for k, v in outputs.items()})

    def close(self, cancel: bool = False) -> None:
        """Refuse new requests; run what waits (``cancel``: fail it instead), then stop."""
        with self.lock:
            self.closed = True
            dropped = list(self.waiting) if cancel else []
            if cancel:
                self.waiting.clear()
            self.lock.notify()
            self.timing.notify()
        for request in dropped:
            request.decoded.cancel()
            if request.result.set_running_or_notify_cancel():
                request.result.set_exception(
                    BatcherClosed(f"{self.model.source}: the batcher was closed before this request ran")
                )
        self.worker.join()
        self.timer.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
