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
Torch-free, like the rest of the runtime.
"""

from __future__ import annotations

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

DECODE_GRACE_S = 0.05  # how long a closed batch waits for its next image to finish decoding


class Overloaded(ServiceError):
    """The queue is full: the request was refused without waiting."""


class RequestTimeout(ServiceError):
    """The request was not answered within its timeout."""


class BatcherClosed(ServiceError):
    """The batcher was closed before the request ran."""


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
        self.worker = threading.Thread(target=self._work, name="fastervit-batcher", daemon=True)
        self.timer = threading.Thread(target=self._time_out, name="fastervit-batcher-timeouts", daemon=True)
        self.worker.start()
        self.timer.start()

    @property
    def depth(self) -> int:
        """Requests waiting to be batched."""
        return len(self.waiting)

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
                raise Overloaded(
                    f"{self.model.source}: {len(self.waiting)} requests already wait (max_queue="
                    f"{self.max_queue}); retry shortly, or raise max_queue"
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
                    for request in ready:
                        self.waiting.remove(request)
                    return ready
                else:
                    wake = progress_at + DECODE_GRACE_S if ready else None
                self.lock.wait(None if wake is None else max(0.0, wake - now))

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
            if request.deadline is None or now <= request.deadline:
                continue
            self.waiting.remove(request)
            request.decoded.cancel()
            if request.result.set_running_or_notify_cancel():
                request.result.set_exception(
                    RequestTimeout(
                        f"{self.model.source}: no answer within {request.deadline - request.arrived:g} s (not "
                        "started); retry, or allow more time"
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
        self.running_since = time.monotonic()
        try:
            outputs = self.model.outputs(np.stack([x for _, x in ready]))
        except Exception as exc:  # the engine or device failed: every caller of this batch hears why
            self.failure = EngineError(
                f"{self.model.source}: the engine failed on a batch of {len(ready)} "
                f"({type(exc).__name__}: {exc}); the images were not at fault"
            )
            self.failure.__cause__ = exc
            for request, _ in ready:
                request.result.set_exception(self.failure)
            return
        finally:
            self.running_since, self.free_since = None, time.monotonic()
        self.failure = None
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
