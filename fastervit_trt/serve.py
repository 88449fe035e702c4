"""``fastervit-serve``: one model behind HTTP, concurrent requests batched in process.

An ASGI app (Starlette, served by uvicorn; the ``[serve]`` extra) over a loaded runtime
model and its ``Batcher``:

    POST /v1/classify?topk=5     body: image bytes (image/jpeg, image/png, image/webp,
                                 image/bmp, application/octet-stream)
                                 -> {"top": [{"index", "name", "probability"}, ...]}
    POST /v1/classify            body: {"images": [base64, ...], "topk": 5} (application/json)
                                 -> {"results": [{"top": [...]} or {"error": "..."}, ...]}
    GET  /v1/model               model, classes, input size, batching settings
    GET  /health/live, /health/ready
    GET  /metrics                Prometheus: requests, errors, latency, batch sizes, queue depth

A bad image is 400 with the decoder's one-line message (in the JSON form, that entry's
``error``); an unsupported content type 415; a body over the limit 413; a full queue, or a
request not started within its timeout, 503 with ``Retry-After``. Images are decoded with
the model's own preprocessing and named with its own class names, exactly as
``fastervit-triton --image-bytes`` does, so either service gives the same answer. Shutdown
(SIGTERM, Ctrl-C) stops accepting, lets in-flight requests finish, then runs what the
batcher still holds before the model is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import FasterViTTRTError
from .runtime.batcher import Batcher, Overloaded, RequestTimeout
from .runtime.model import InferenceModel

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "application/octet-stream")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ServeOptions:
    """The service's batching and limits."""

    max_batch: int | None = None  # None: the engine's largest batch
    max_delay_ms: float = 2.0
    max_queue: int = 256
    timeout_s: float = 10.0  # a request not started by then is answered 503
    max_body_bytes: int = 20 << 20
    topk: int = 5
    retry_after_s: int = 1


class _Refusal(Exception):
    """An answer other than 200: status, one-line message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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


def create_app(model: InferenceModel, options: ServeOptions = ServeOptions()) -> Starlette:
    """The ASGI app serving ``model`` (a classifier); the batcher lives as long as the app runs."""
    if model.is_backbone:
        raise FasterViTTRTError(
            f"{model.source}: fastervit-serve answers class names; a backbone's feature "
            "maps are served by Triton (fastervit-triton)"
        )
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
        metrics.queue.set_function(lambda: batcher.depth)
        state["batcher"] = batcher
        try:
            yield
        finally:  # in-flight HTTP requests are done: run what still waits, then stop
            state["batcher"] = None
            await asyncio.to_thread(batcher.close)

    async def classify(request: Request) -> Response:
        started, code = time.perf_counter(), 200
        try:
            batcher = state["batcher"]
            if batcher is None:
                raise _busy("the service is shutting down; retry on another instance", options)
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            topk = _topk(request.query_params.get("topk"), options.topk)
            if kind != "application/json" and kind not in IMAGE_TYPES:
                raise _Refusal(
                    415,
                    f"content type {kind or 'none'!r}: send the image's bytes "
                    f'({", ".join(IMAGE_TYPES[:4])}) or JSON {{"images": [base64, ...]}}',
                )
            body = await _body(request, options.max_body_bytes)
            if kind == "application/json":
                images, topk = _json_images(body, topk)
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
                else:
                    results.append({"top": top_k(model, answer, topk)})
            if kind == "application/json":
                return JSONResponse({"results": results})
            code = 400 if "error" in results[0] else 200
            return JSONResponse(results[0], code)
        except _Refusal as refusal:
            code = refusal.status
            metrics.errors.labels(_REASONS.get(refusal.status, "bad_request")).inc()
            return JSONResponse({"error": refusal.message}, refusal.status, headers=refusal.headers)
        finally:
            metrics.requests.labels("classify", str(code)).inc()
            metrics.latency.labels("classify").observe(time.perf_counter() - started)

    async def model_info(request: Request) -> Response:
        preprocess = model.preprocess
        return JSONResponse(
            {
                "model": model.source.name,
                "classes": len(model.names),
                "max_batch": model.max_batch,
                "input_size": list(preprocess.input_size),
                "input_format": preprocess.input_format,
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
        up = state["batcher"] is not None
        return JSONResponse({"status": "ready" if up else "not ready"}, 200 if up else 503)

    async def scrape(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/model", model_info),
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", scrape),
        ],
        lifespan=lifespan,
    )


_REASONS = {413: "too_large", 415: "unsupported_type", 503: "overloaded"}


def _busy(message: str, options: ServeOptions) -> _Refusal:
    """503 with ``Retry-After``: the request may succeed if sent again shortly."""
    return _Refusal(503, message, {"Retry-After": str(options.retry_after_s)})


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
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = _Refusal(413, f"the body is over the limit of {limit} bytes; send a smaller image")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _json_images(body: bytes, topk: int) -> tuple[list[bytes], int]:
    try:
        document = json.loads(body)
        images = [base64.b64decode(item, validate=True) for item in document["images"]]
        topk = int(document.get("topk", topk))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _Refusal(400, 'expected JSON {"images": [base64 image, ...], "topk": N}') from None
    if not images or topk < 1:
        raise _Refusal(400, "no images given" if not images else f"topk={topk}: expected a positive integer")
    return images, topk


async def _answers(batcher: Batcher, images: list[bytes], options: ServeOptions) -> list:
    """Each image's logits, or the error of an image that could not be decoded; a full
    queue or a timeout refuses the whole request (503)."""
    futures = []
    try:
        for image in images:
            futures.append(batcher.submit(image))
    except Overloaded as exc:
        for future in futures:
            future.cancel()
        raise _busy(str(exc), options) from None
    answers: list = []
    for future in futures:
        try:
            answers.append(await asyncio.wrap_future(future))
        except RequestTimeout as exc:
            raise _busy(str(exc), options) from None
        except FasterViTTRTError as exc:  # an image the model's preprocessing cannot decode
            answers.append(exc)
    return answers
