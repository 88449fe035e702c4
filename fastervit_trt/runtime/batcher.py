"""Dynamic batching in process: many callers' single images, one engine call.

    with model.batcher(max_delay_ms=2) as batcher:     # then, from any number of threads:
        batcher.predict("cat.jpg", topk=5)             # blocks: [Prediction, ...]
        future = batcher.submit(jpeg_bytes)            # a Future of that image's logits (classes,)

An image is decoded on the runtime's decoding threads as soon as it is submitted, so it
decodes while the engine runs the batch before it. One worker forms batches: the oldest
waiting request and whatever else waits, up to ``max_batch`` (default: the engine's largest
batch, since ``max_delay_ms`` and not the batch size bounds the wait, and a larger batch
only forms when that many requests are already waiting), waiting at most ``max_delay_ms``
after the oldest one arrived for more to come (Triton's ``max_queue_delay``); it runs them
as one engine call and hands each caller its own row. One bad image fails only its own
request, with the decoder's message; a full queue (``max_queue`` waiting) fails a new
request at once (``Overloaded``), so memory stays bounded; a request not started within its
timeout fails (``RequestTimeout``); ``close()`` finishes what was submitted, or with
``cancel=True`` fails it (``BatcherClosed``). Torch-free, like the rest of the runtime.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FasterViTTRTError
from .inputs import decoders, to_input

if TYPE_CHECKING:
    from .model import InferenceModel, Prediction


class Overloaded(FasterViTTRTError):
    """The queue is full: the request was refused without waiting."""


class RequestTimeout(FasterViTTRTError):
    """The request did not start within its timeout."""


class BatcherClosed(FasterViTTRTError):
    """The batcher was closed before the request ran."""


@dataclass
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
                raise ValueError(f"{name} must be at least {low}, not {value}")
        self.model, self.max_batch = model, max_batch or model.max_batch
        self.max_delay, self.max_queue, self.timeout = max_delay_ms / 1e3, max_queue, timeout_s
        self.observe = observe  # called with each batch size run
        self.waiting: deque[_Request] = deque()
        self.lock = threading.Condition()
        self.closed = False
        self.worker = threading.Thread(target=self._work, name="fastervit-batcher", daemon=True)
        self.worker.start()

    @property
    def depth(self) -> int:
        """Requests waiting to be batched."""
        return len(self.waiting)

    def submit(self, image: Any, timeout_s: float | None = None) -> Future:
        """Queue one image (a path, encoded bytes, a PIL image or an array, as ``load`` takes
        them); a Future of its logits (classes,), or a backbone's ``{stage: (C, H, W)}``."""
        timeout = self.timeout if timeout_s is None else timeout_s
        with self.lock:
            if self.closed:
                raise BatcherClosed(f"{self.model.source}: the batcher is closed; make a new one")
            if len(self.waiting) >= self.max_queue:
                raise Overloaded(
                    f"{self.model.source}: {len(self.waiting)} requests already wait (max_queue="
                    f"{self.max_queue}); retry shortly, or raise max_queue"
                )
            now = time.monotonic()
            model = self.model
            request = _Request(
                decoders().submit(to_input, image, model.preprocess, model.exif_rotate),
                Future(),
                now,
                None if timeout is None else now + timeout,
            )
            self.waiting.append(request)
            self.lock.notify()
        return request.result

    def predict(self, image: Any, topk: int = 5, timeout_s: float | None = None) -> list[Prediction]:
        """The ``topk`` classes of one image, most probable first; blocks until it has run."""
        timeout = self.timeout if timeout_s is None else timeout_s
        future = self.submit(image, timeout)
        try:
            logits = future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise RequestTimeout(
                f"{self.model.source}: no answer within {timeout:g} s; retry, or allow more time"
            ) from None
        return self.model.top(logits[None], topk)[0]

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The next requests to run together; None once closed and drained. A batch closes at
        ``max_batch`` requests or ``max_delay`` after its oldest arrived; requests arriving
        while its images still decode join it (else they would wait for a whole engine call)."""
        with self.lock:
            while not self.waiting:
                if self.closed:
                    return None
                self.lock.wait()
            until = self.waiting[0].arrived + self.max_delay
            while len(self.waiting) < self.max_batch and not self.closed and (left := until - time.monotonic()) > 0:
                self.lock.wait(left)
            batch = self._take([])
        while pending := [r.decoded for r in batch if not r.decoded.done()]:
            wait(pending, return_when=FIRST_COMPLETED)
            with self.lock:
                self._take(batch)
        return batch

    def _take(self, batch: list[_Request]) -> list[_Request]:
        """``batch`` topped up from the waiting requests, oldest first (the lock held)."""
        while self.waiting and len(batch) < self.max_batch:
            batch.append(self.waiting.popleft())
        return batch

    def _run(self, batch: list[_Request]) -> None:
        now, ready = time.monotonic(), []
        for request in batch:
            if not request.result.set_running_or_notify_cancel():
                continue  # its caller gave up
            if request.deadline is not None and now > request.deadline:
                request.result.set_exception(
                    RequestTimeout(
                        f"{self.model.source}: waited {now - request.arrived:.3f} s, past its timeout; retry, or "
                        "allow more time"
                    )
                )
                continue
            try:
                ready.append((request, request.decoded.result()))
            except Exception as exc:  # an image that cannot be decoded: its request alone fails
                request.result.set_exception(exc)
        if not ready:
            return
        if self.observe is not None:
            self.observe(len(ready))
        try:
            outputs = self.model.outputs(np.stack([x for _, x in ready]))
        except Exception as exc:  # the engine failed: every caller of this batch hears why
            for request, _ in ready:
                request.result.set_exception(exc)
            return
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
            self.lock.notify_all()
        for request in dropped:
            if request.result.set_running_or_notify_cancel():
                request.result.set_exception(
                    BatcherClosed(f"{self.model.source}: the batcher was closed before this request ran")
                )
        self.worker.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
