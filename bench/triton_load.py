#!/usr/bin/env python3
"""Load test of a Triton-served model vs direct in-process calls, same model, same run.

Serves the model with PyTriton (a real tritonserver on loopback, dynamic batching) and
sends single-image requests from 1, 4 and 16 concurrent gRPC clients; the same client
threads then call the runtime directly. Prints throughput and p50/p99 latency, writes JSON.

  python bench/triton_load.py --model export/faster_vit_0_224_fp32.onnx
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fastervit_trt.runtime import load
from fastervit_trt.triton import serve_pytriton


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clients(call, clients: int, requests: int) -> dict:
    """``clients`` threads each making ``requests`` calls; throughput and latency percentiles."""

    def client(_):
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for ts in pool.map(client, range(clients)) for t in ts]
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {
        "img_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests": len(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help=".onnx (served through the runtime)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=12, help="requests per client")
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/triton_load.json"))
    parser.add_argument("--smoke", action="store_true", help="one client, two requests: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.requests = [1], 2
    import tritonclient.grpc as grpc_client

    model = load(args.model)
    x = np.random.default_rng(0).standard_normal((1, 3, *model.preprocess.input_size), dtype=np.float32)
    ports = {"http_port": _port(), "grpc_port": _port(), "metrics_port": _port()}
    triton = serve_pytriton(model, "model", max_queue_delay_us=args.queue_delay_us, **ports)
    rows = []
    try:
        client = grpc_client.InferenceServerClient(f"127.0.0.1:{ports['grpc_port']}")
        tensor = grpc_client.InferInput("input", x.shape, "FP32")
        tensor.set_data_from_numpy(x)
        served = lambda: client.infer("model", [tensor]).as_numpy("logits")
        direct = lambda: model.logits(x)
        served(), direct()  # warm-up
        for clients in args.clients:
            for name, call in (("triton (gRPC, dynamic batching)", served), ("direct in-process", direct)):
                rows.append({"path": name, "clients": clients, **run_clients(call, clients, args.requests)})
        client.close()
    finally:
        triton.stop()
    print(f"\n{args.model.name}: single-image requests, {args.requests} per client")
    print(f"{'path':34s} {'clients':>7s} {'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for row in rows:
        print(
            f"{row['path']:34s} {row['clients']:7d} {row['img_per_s']:8.1f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f}"
        )
    for clients in args.clients:
        by = {r["path"]: r for r in rows if r["clients"] == clients}
        ratio = by["triton (gRPC, dynamic batching)"]["img_per_s"] / by["direct in-process"]["img_per_s"]
        print(f"  {clients:2d} clients: served/direct throughput {ratio:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": str(args.model), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
