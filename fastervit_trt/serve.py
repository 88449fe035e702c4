"""``fastervit-serve``: one model behind HTTP, concurrent requests batched in process.

An ASGI app (Starlette, served by uvicorn; the ``[serve]`` extra) over a loaded runtime
model and its ``Batcher``:

    POST /v1/classify?topk=5     body: image bytes (image/jpeg, image/png, image/webp,
                                 image/bmp, application/octet-stream)
                                 -> {"top": [{"index", "name", "probability"}, ...]}
    POST /v1/classify            body: {"images": [base64, ...], "topk": 5} (application/json)
                                 -> {"results": [{"top": [...]} or {"error": "..."}, ...]}
    POST /v1/embed               a headless model (exported from a num_classes=0 checkpoint):
                                 the same bodies -> {"embedding": [...]} / {"results": [...]}
    GET  /v1/model               model, kind, class names, backend, provider, device,
                                 preprocessing, batching settings
    GET  /health/live, /health/ready
    GET  /metrics                Prometheus: requests, errors, latency, batch sizes, queue depth

A bad image is 400 with the decoder's one-line message (in the JSON form, that entry's
``error``, as for an entry that is not base64); an unsupported content type 415; a body over
the limit 413 (read to its end first, within ``DRAIN_BYTES``, so that clients still sending
read it); an engine or device failure 500 with its cause (``/health/ready`` is then 503
with it until a probe runs the engine again); any other failure 500 naming it; a full
queue, a request not answered within its timeout (its queued work cancelled) or a service
shutting down 503 with ``Retry-After`` (``/health/ready`` is 503 too while the engine has
run one batch past the timeout); a client that hangs up mid-upload is one log line and a
metric. Every answer is counted under its own code and error reason. Images are
decoded with the model's own preprocessing and named with its own class names, exactly as
``fastervit-triton --image-bytes`` does, so either service gives the same answer. Shutdown
(SIGTERM, Ctrl-C) stops accepting, lets in-flight requests finish, then runs what the
batcher still holds before the model is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import EngineError, FasterViTTRTError, InputError, ServiceError
from .runtime.batcher import Batcher, BatcherClosed, Overloaded, RequestTimeout
from .runtime.model import InferenceModel

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "application/octet-stream")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A body over the limit is still read, and thrown away, up to this many bytes past the limit
# before the 413 goes out: answering while the client is still sending, then closing, makes
# its kernel report "connection reset" instead of the answer (urllib always sees that). The
# bound because reading in vain without one lets any client keep the server reading forever;
# past it the 413 goes out at once and such a client may see the reset.
DRAIN_BYTES = 64 << 20
CLIENT_CLOSED = 499  # nginx's code for a request whose client hung up (metrics only: no one reads it)


@dataclass(frozen=True)
class ServeOptions:
    """The service's batching and limits."""

    max_batch: int | None = None  # None: the engine's largest batch
    max_delay_ms: float = 2.0
    max_queue: int = 256
    timeout_s: float = 10.0  # a request not answered by then is answered 503
    max_body_bytes: int = 20 << 20
    topk: int = 5
    retry_after_s: int = 1


class _Refusal(Exception):
    """An answer other than 200: status, one-line message, extra headers, the metric's reason
    (by default the status's)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.reason = reason or _REASONS.get(status, "bad_request")


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fastervit_requests", "HTTP requests answered", ["endpoint", "code"], registry=self.registry
        )
        self.errors = Counter(
            "fastervit_errors", "Requests or images refused, by reason", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "fastervit_request_seconds", "Time from request to answer", ["endpoint"], registry=self.registry
        )
        self.batch = Histogram(
            "fastervit_batch_size", "Images per engine call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue = Gauge("fastervit_queue_depth", "Requests waiting to be batched", registry=self.registry)
        self.overload = Gauge(
            "fastervit_overload",
            "Requests shed at admission or expired waiting, and images computed for callers past their deadline",
            ["what"],
            registry=self.registry,
        )
        self.batch_estimate = Gauge(
            "fastervit_batch_seconds_estimate",
            "Measured seconds of an engine call at max_batch (what admission and batch cutting use)",
            registry=self.registry,
        )

    def watch(self, batcher: Batcher) -> None:
        """Read the batcher's queue and overload figures at each scrape."""
        self.queue.set_function(lambda: batcher.depth)
        for what in ("shed", "expired", "computed_for_nobody"):
            self.overload.labels(what).set_function(functools.partial(_stat, batcher, what))
        self.batch_estimate.set_function(lambda: batcher.stats["batch_seconds_estimate"] or 0.0)


def _stat(batcher: Batcher, what: str) -> float:
    return float(batcher.stats[what])


def create_app(model: InferenceModel, options: ServeOptions = ServeOptions()) -> Starlette:
    """The ASGI app serving ``model`` (a classifier on /v1/classify, a headless model's
    embeddings on /v1/embed); the batcher lives as long as the app runs."""
    if model.is_backbone:
        raise ServiceError(
            f"{model.source}: fastervit-serve answers class names or embeddings; a backbone's feature "
            "maps are served by Triton (fastervit-triton)"
        )
    endpoint = "embed" if model.is_embedding else "classify"
    metrics = _Metrics()
    state: dict = {"batcher": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(
            model,
            options.max_batch,
            options.max_delay_ms,
            options.max_queue,
            options.timeout_s,
            observe=metrics.batch.observe,
        )
        metrics.watch(batcher)
        state["batcher"] = batcher
        log.info(
            "serving %s; batches up to %d, %g ms delay, queue %d, timeout %g s",
            model.summary,
            batcher.max_batch,
            options.max_delay_ms,
            options.max_queue,
            options.timeout_s,
        )
        try:
            yield
        finally:  # in-flight HTTP requests are done: run what still waits, then stop
            state["batcher"] = None
            started, waiting = time.monotonic(), batcher.depth
            log.info("shutting down: draining %d queued requests", waiting)
            await asyncio.to_thread(batcher.close)
            log.info("shut down: %d queued requests drained in %.1f s", waiting, time.monotonic() - started)

    async def classify(request: Request) -> Response:
        started, code = time.perf_counter(), 200
        asked = request.url.path.rsplit("/", 1)[-1]
        try:
            if asked != endpoint:
                what = "a headless model (embeddings out)" if model.is_embedding else "a classifier"
                raise _Refusal(404, f"{model.source.name} is {what}: POST /v1/{endpoint}")
            batcher = state["batcher"]
            if batcher is None:
                raise _busy("the service is shutting down; retry on another instance", options, "shutting_down")
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            topk = _topk(request.query_params.get("topk"), options.topk)
            if kind not in BATCH_TYPES and kind not in IMAGE_TYPES:
                raise _Refusal(
                    415,
                    f"content type {kind or 'none'!r}: send the image's bytes "
                    f'({", ".join(IMAGE_TYPES[:4])}), JSON {{"images": [base64, ...]}} or multipart/form-data '
                    "image parts",
                )
            body = await _body(request, options.max_body_bytes)
            images: list[bytes | FasterViTTRTError]
            if kind == "application/json":
                images, topk = _json_images(body, topk)
            elif kind == "multipart/form-data":
                images = await _form_images(request, body)
            elif not body:
                raise _Refusal(400, "empty body: send the image's bytes")
            else:
                images = [body]
            answers = await _answers(batcher, images, options)
            results: list[dict[str, Any]] = []
            for answer in answers:
                if isinstance(answer, FasterViTTRTError):
                    metrics.errors.labels("bad_image").inc()
                    results.append({"error": str(answer)})
                elif model.is_embedding:
                    results.append({"embedding": answer.tolist()})
                else:
                    results.append({"top": top_k(model, answer, topk)})
            if kind in BATCH_TYPES:
                return JSONResponse({"results": results})
            code = 400 if "error" in results[0] else 200
            return JSONResponse(results[0], code)
        except _Refusal as refusal:
            code = refusal.status
            metrics.errors.labels(refusal.reason).inc()
            return JSONResponse({"error": refusal.message}, refusal.status, headers=refusal.headers)
        except ClientDisconnect:  # nothing can be answered; not the server's fault, so no traceback
            code = CLIENT_CLOSED
            metrics.errors.labels("client_disconnected").inc()
            log.warning("%s hung up before sending the whole body; request dropped", _client(request))
            return Response(status_code=code)
        except Exception as exc:  # a fault of the service or its device: answered and counted as one
            code = 500
            metrics.errors.labels("internal").inc()
            log.exception("POST /v1/%s failed", asked)
            return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc})"}, code)
        finally:
            metrics.requests.labels(asked, str(code)).inc()
            metrics.latency.labels(asked).observe(time.perf_counter() - started)

    async def model_info(request: Request) -> Response:
        preprocess = model.preprocess
        return JSONResponse(
            {
                "model": model.source.name,
                "kind": model.kind,
                "endpoint": f"/v1/{endpoint}",
                "classes": len(model.names),
                "class_names": model.names,
                **({"embedding_size": model.output_shapes["embedding"][0]} if model.is_embedding else {}),
                "max_batch": model.max_batch,
                **asdict(model.runs_on),  # backend, provider, device
                "input_size": list(preprocess.input_size),
                "input_format": preprocess.input_format,
                "preprocess": preprocess.record(),
                "batching": {
                    "max_batch": options.max_batch or model.max_batch,
                    "max_delay_ms": options.max_delay_ms,
                    "max_queue": options.max_queue,
                },
            }
        )

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> Response:
        reason = await _not_ready(state["batcher"], options.timeout_s)
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, 503)

    async def scrape(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/embed", classify, methods=["POST"]),
            Route("/v1/model", model_info),
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", scrape),
        ],
        lifespan=lifespan,
    )


_REASONS = {413: "too_large", 415: "unsupported_type", 503: "overloaded"}


def _client(request: Request) -> str:
    """``host:port`` of the request's client, for logs."""
    return f"client {request.client.host}:{request.client.port}" if request.client else "a client"


def _busy(message: str, options: ServeOptions, reason: str = "overloaded", after_s: float | None = None) -> _Refusal:
    """503 with ``Retry-After`` (``after_s`` rounded up, else the configured seconds): the
    request may succeed if sent again then."""
    retry = max(1, math.ceil(after_s)) if after_s is not None else options.retry_after_s
    return _Refusal(503, message, {"Retry-After": str(retry)}, reason)


async def _not_ready(batcher: Batcher | None, timeout_s: float) -> str | None:
    """Why the service cannot answer now, or None: shutting down, an engine call running past
    the timeout, or an engine that failed its last batch and fails a probe too."""
    if batcher is None:
        return "shutting down"
    if batcher.running_for > timeout_s:
        return f"the engine has run one batch for {batcher.running_for:.1f} s (timeout {timeout_s:g} s)"
    if batcher.failure is not None:
        try:
            await asyncio.to_thread(batcher.probe, timeout_s)
        except FasterViTTRTError as exc:
            return str(exc)
    return None


def top_k(model: InferenceModel, logits, topk: int) -> list[dict]:
    """The JSON form of ``model.top`` for one row of logits."""
    return [asdict(p) for p in model.top(logits[None], topk)[0]]


def _topk(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise _Refusal(400, f"topk={text!r}: expected a positive integer")
    return int(text)


async def _body(request: Request, limit: int) -> bytes:
    """The request body; one over ``limit`` bytes is 413 (``Connection: close``) once the rest
    has arrived, read and dropped, within ``DRAIN_BYTES`` past the limit."""
    too_large = _Refusal(
        413, f"the body is over the limit of {limit} bytes; send a smaller image", {"Connection": "close"}
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        # A client waiting for "100 Continue" has sent nothing yet; one declaring more than the
        # bound would be read in vain for too long: both are answered at once.
        if request.headers.get("expect", "").lower() == "100-continue" or int(declared) > limit + DRAIN_BYTES:
            raise too_large
    chunks, size = [], 0
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit + DRAIN_BYTES:
                break
            if size <= limit:
                chunks.append(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


BATCH_TYPES = ("application/json", "multipart/form-data")  # answered {"results": [one per image]}
MAX_PARTS = 1000


async def _form_images(request: Request, body: bytes) -> list[bytes | FasterViTTRTError]:
    """The file parts of a ``multipart/form-data`` body (what ``curl -F``, browsers and most
    HTTP clients send), in order, parsed by Starlette's own form parser from the body already
    read within the limit; an empty part is its own error, a body without one refuses the request."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=MAX_PARTS, max_fields=MAX_PARTS).parse()
    except (MultiPartException, AssertionError) as exc:
        raise _Refusal(400, f"not a readable multipart/form-data body ({exc}); send image files as parts") from None
    images: list[bytes | FasterViTTRTError] = []
    for name, value in form.multi_items():
        if isinstance(value, str):
            continue  # a text field: not an image
        data = await value.read()
        images.append(data if data else InputError(f"part {name!r} ({value.filename}): empty file (0 bytes)"))
    await form.close()
    if not images:
        raise _Refusal(400, "multipart/form-data body without a file part: send each image as a file part")
    return images


def _json_images(body: bytes, topk: int) -> tuple[list[bytes | FasterViTTRTError], int]:
    """Each entry's bytes, or the error of one that is not base64; a body that is not
    ``{"images": [...]}`` refuses the request."""
    usage = 'expected JSON {"images": [base64 image, ...], "topk": N}'
    try:
        document = json.loads(body)
        entries = document["images"]
        topk = int(document.get("topk", topk))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _Refusal(400, usage) from None
    if not isinstance(entries, list):
        raise _Refusal(400, usage)
    if not entries or topk < 1:
        raise _Refusal(400, "no images given" if not entries else f"topk={topk}: expected a positive integer")
    return [_base64(index, entry) for index, entry in enumerate(entries)], topk


def _base64(index: int, entry: object) -> bytes | FasterViTTRTError:
    """The bytes of entry ``index`` of ``images``, or why it has none."""
    if not isinstance(entry, str):
        return InputError(f"image {index}: not valid base64 (a JSON {_json_type(entry)}, not a string)")
    try:
        return base64.b64decode(entry, validate=True)
    except (binascii.Error, ValueError) as exc:
        return InputError(f"image {index}: not valid base64 ({exc})")


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _failed(error: Exception) -> concurrent.futures.Future:
    """A future that already holds ``error``: an entry answered without the batcher."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(error)
    return future


async def _answers(batcher: Batcher, images: list[bytes | FasterViTTRTError], options: ServeOptions) -> list:
    """Each image's logits, or the error of an image that could not be decoded (or was
    already an error). A full queue or no answer within ``timeout_s`` refuses the whole
    request (503), an engine failure fails it (500); either cancels its images still queued."""
    futures: list[concurrent.futures.Future] = []
    try:
        for image in images:
            futures.append(batcher.submit(image) if isinstance(image, bytes) else _failed(image))
        deadline = time.monotonic() + options.timeout_s
        answers: list = []
        for future in futures:
            try:
                answers.append(await asyncio.wait_for(asyncio.wrap_future(future), deadline - time.monotonic()))
            except (EngineError, RequestTimeout, BatcherClosed):
                raise
            except FasterViTTRTError as exc:  # an image the model's preprocessing cannot decode
                answers.append(exc)
        return answers
    except Overloaded as exc:  # the queue is full, or would answer it too late: refused at once
        raise _busy(str(exc), options, after_s=exc.retry_after_s) from None
    except BatcherClosed as exc:  # shutting down between the check and the submit
        raise _busy(str(exc), options, "shutting_down") from None
    except RequestTimeout as exc:
        raise _busy(str(exc), options, "timeout") from None
    except asyncio.TimeoutError:  # the engine call holding it has not returned
        message = f"{batcher.model.source}: no answer within {options.timeout_s:g} s; retry, or allow more time"
        raise _busy(message, options, "timeout") from None
    except EngineError as exc:
        raise _Refusal(500, str(exc), reason="engine_error") from None
    finally:
        for future in futures:
            future.cancel()
