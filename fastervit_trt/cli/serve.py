"""``fastervit-serve``: the HTTP classification service over an engine or ONNX file."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

from .common import (
    add_model_file,
    add_runtime_options,
    command_parser,
    number,
    positive,
    renamed,
    run,
    runtime_options,
)


def parser() -> argparse.ArgumentParser:
    from ..serve import ServeOptions

    d = ServeOptions()
    parser = command_parser(
        "fastervit-serve",
        "examples:\n  fastervit-serve --model engines/faster_vit_0_224_fp16.engine --port 8000\n"
        "  curl -s --data-binary @cat.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/classify?topk=3\n"
        "  fastervit-serve --model export/faster_vit_0_224_fp32.onnx --max-delay-ms 5 --max-queue 64\n"
        "  curl -s localhost:8000/metrics | grep fastervit_batch_size",
        "Serve a classifier over HTTP (Starlette + uvicorn; pip install 'fastervit-trt[serve]'): "
        'POST image bytes (or JSON {"images": [base64, ...]}) to /v1/classify for the top-k '
        "classes; concurrent requests are batched into one engine call. Also /v1/model, "
        "/health/live, /health/ready and Prometheus /metrics. Overload is answered 503 with "
        "Retry-After; SIGTERM finishes in-flight requests before exiting.",
    )
    add_model_file(parser, ".engine or .onnx classifier")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=number(int, 0, 65535), default=8000, help="0: any free port")
    parser.add_argument(
        "--max-batch",
        type=positive,
        metavar="N",
        help="largest batch the batcher forms (default: the engine's largest)",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=number(float, 0),
        default=d.max_delay_ms,
        metavar="MS",
        help="how long the oldest waiting request may wait for others to batch with",
    )
    parser.add_argument(
        "--max-queue",
        type=positive,
        default=d.max_queue,
        metavar="N",
        help="requests waiting beyond this are refused at once (503)",
    )
    parser.add_argument(
        "--timeout-s",
        type=number(float, 0, low_open=True),
        default=d.timeout_s,
        metavar="S",
        help="a request not answered by then is answered 503 (Retry-After) and its queued work cancelled",
    )
    parser.add_argument(
        "--max-body-mib",
        type=number(float, 0, low_open=True),
        default=d.max_body_bytes / 2**20,
        metavar="MIB",
        help="largest request body, in MiB (2^20 bytes; a JSON batch or a multipart upload counts whole): "
        "larger ones are refused (413)",
    )
    renamed(parser, "--max-body-mb", "--max-body-mib", type=number(float, 0, low_open=True), metavar="MIB")
    parser.add_argument("--topk", type=positive, default=d.topk, help="classes per image unless ?topk= says")
    parser.add_argument(
        "--graceful-s",
        type=number(float, 0),
        default=30.0,
        metavar="S",
        help="on shutdown, how long in-flight requests may take to finish",
    )
    add_runtime_options(parser)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from ..runtime import load
    from ..serve import ServeOptions, create_app

    options = ServeOptions(
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        max_body_bytes=int(args.max_body_mib * 2**20),
        topk=args.topk,
    )
    logging.getLogger("fastervit_trt.serve").setLevel(logging.INFO)  # start, shutdown, failed batches
    logging.getLogger("fastervit_trt.runtime.batcher").setLevel(logging.INFO)
    with load(args.model, **asdict(runtime_options(args))) as model:
        app = create_app(model, options)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=args.graceful_s
        )
        server = uvicorn.Server(config)
        print(
            f"{model.summary}\nserving {args.model} on http://{args.host}:{args.port}: POST /v1/classify "
            f"(batches up to {options.max_batch or model.max_batch}, {options.max_delay_ms:g} ms delay)",
            file=sys.stderr,
            flush=True,
        )
        # uvicorn shuts down gracefully on SIGTERM, then raises it again for the previous handler:
        # this one, so a service stopped on purpose exits 0 once its requests are answered
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_serve, parser, argv, "fastervit-serve")


if __name__ == "__main__":
    sys.exit(main())
