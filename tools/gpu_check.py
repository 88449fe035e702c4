#!/usr/bin/env python3
"""The GPU checks that fit a short loan: one command, about a minute on a machine with PyTorch and
CUDA (TensorRT optional), a table at the end, exit 1 when a check fails.

Torch-side, what no CPU test can run: the runtime's own CUDA streams made and destroyed per
context; a CUDA-runtime capture (``TorchCuda.capture``) of a torch workload replayed, and a capture
that CUDA invalidates recovered from; nvJPEG decoding (``runtime.gpu_decode``) from two threads equal
to the CPU decode; pinned host buffers copied through on a stream, freed, then the stream destroyed,
with no CUDA error (under ``compute-sanitizer --tool memcheck`` when it is on PATH: ``--sanitize``).
Where TensorRT is installed, the engine suite too (``pytest -m gpu``). Without a GPU every check is
skipped, saying so, and the exit status is 0.

  python tools/gpu_check.py
  python tools/gpu_check.py --only pinned --sanitize    # that check under compute-sanitizer
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHECKS: dict[str, Callable[[], str]] = {}


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(function: Callable[[], str]) -> Callable[[], str]:
        CHECKS[name] = function
        return function

    return register


@check("streams")
def streams() -> str:
    """Streams of the runtime's own, made and destroyed as contexts come and go."""
    import torch

    from fastervit_trt.runtime.cuda import TorchCuda

    cuda = TorchCuda()
    made = [cuda.stream() for _ in range(16)]
    x = torch.arange(256, dtype=torch.float32, device="cuda")
    for stream, _ in made:
        cuda.claim(stream)  # x is written on the caller's stream
        with torch.cuda.stream(stream):
            y = x * 3
        stream.synchronize()
        assert torch.equal(y, x * 3), "work on a stream of the runtime's own went wrong"
        cuda.release(stream, None)
    return f"{len(made)} made, used and destroyed"


@check("capture")
def capture() -> str:
    """A torch workload captured with the CUDA runtime and replayed; an invalidated capture
    (a synchronize inside it) recovered from, the stream usable after."""
    import torch

    from fastervit_trt.runtime.cuda import TorchCuda

    cuda = TorchCuda()
    stream, _ = cuda.stream()
    x = torch.arange(1024, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    cuda.claim(stream)  # x and y are made on the caller's stream
    # warm up outside the capture: kernels loaded, the temporaries' blocks cached on this stream, so
    # the capture allocates nothing (thread-local mode forbids cudaMalloc); their addresses are then
    # baked into the graph, safe because nothing allocates on this stream until the replay
    with torch.cuda.stream(stream):
        y.copy_(x * 2 + 1)
    stream.synchronize()

    def launch() -> bool:
        with torch.cuda.stream(stream):
            y.copy_(x * 2 + 1)
        return True

    graph = cuda.capture(stream, launch)
    assert graph is not None, "the capture failed"
    x.add_(1)
    torch.cuda.synchronize()
    cuda.replay(graph, stream)
    stream.synchronize()
    assert torch.equal(y, x * 2 + 1), "the replay did not compute the captured workload"

    def invalid() -> bool:
        with torch.cuda.stream(stream):
            y.copy_(x)
        # not allowed inside a capture: CUDA invalidates it (through the CUDA runtime, as torch's
        # own synchronize raises instead)
        cuda.cudart.cudaStreamSynchronize(stream.cuda_stream)
        return True

    assert cuda.capture(stream, invalid) is None, "an invalidated capture gave a graph"
    with torch.cuda.stream(stream):
        y.copy_(x)
    stream.synchronize()
    assert torch.equal(y, x), "the stream did not run after the failed capture"
    cuda.release(stream, graph)
    return "replayed; invalidated capture recovered"


@check("nvjpeg")
def nvjpeg() -> str:
    """The shipped JPEG photos decoded by nvJPEG from two threads, each equal to the CPU decode
    (libjpeg and nvJPEG round differently: mean difference under 2 of 255)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from fastervit_trt.runtime.gpu_decode import decode_jpegs

    photos = sorted((ROOT / "calibration").glob("*.jpg"))
    tensors = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in photos]
    cpu = [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]

    def run(_: int) -> list:
        decoded = [d.cpu() for d in decode_jpegs(tensors, "cuda")]
        assert len(decoded) == len(cpu), "nvJPEG returned fewer images than it was given"
        return decoded

    with ThreadPoolExecutor(2) as pool:
        calls = list(pool.map(run, range(8)))
    first = calls[0]
    assert all(torch.equal(a, b) for call in calls for a, b in zip(call, first)), "two GPU decodes differ"
    worst = max(float((d.float() - c.float()).abs().mean()) for d, c in zip(first, cpu))
    assert worst < 2.0, f"nvJPEG differs from the CPU decode by {worst:.2f} on average"
    return f"{len(photos)} photos x 8 calls, 2 threads; mean |diff| <= {worst:.2f}"


@check("pinned")
def pinned() -> str:
    """Pinned host buffers copied through on a stream of the runtime's own, freed, then the
    stream destroyed (the order close() keeps), with no CUDA error after."""
    import torch

    from fastervit_trt.runtime.cuda import TorchCuda

    cuda = TorchCuda()
    for _ in range(8):
        stream, _ = cuda.stream()
        device, _ = cuda.device((64, 1024), np.dtype(np.float32))
        cuda.claim(stream)
        host_in, host_out = cuda.pinned((64, 1024), np.float32), cuda.pinned((64, 1024), np.float32)
        host_in[:] = np.random.default_rng(0).standard_normal(host_in.shape, dtype=np.float32)
        cuda.upload(device, host_in, stream)
        cuda.download(host_out, device, 64, stream)
        cuda.synchronize(stream)
        assert np.array_equal(host_in, host_out), "the copies through pinned buffers differ"
        del host_in, host_out, device  # buffers first
        cuda.release(stream, None)  # then the stream they were used on
    torch.cuda.synchronize()
    return "8 rounds; buffers freed before their streams, no CUDA error"


def tensorrt_suite() -> tuple[str, str]:
    """``pytest -m gpu`` where TensorRT is installed (engines run on this GPU)."""
    from fastervit_trt.tensorrt_import import import_tensorrt

    if import_tensorrt() is None:
        return "skipped", "no TensorRT installed: the engine suite needs it"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")], capture_output=True, text=True
    )
    last = (result.stdout.strip().splitlines() or ["no output"])[-1]
    return ("passed" if result.returncode == 0 else "FAILED"), last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(CHECKS), nargs="+", help="run these checks alone")
    parser.add_argument("--sanitize", action="store_true", help="rerun the chosen checks under compute-sanitizer")
    args = parser.parse_args()
    chosen = args.only or list(CHECKS)
    if args.sanitize and "capture" in chosen:  # its deliberate invalidation is an API error memcheck reports
        print(
            "capture left out under compute-sanitizer: its invalidated capture is a reported API error", file=sys.stderr
        )
        chosen = [name for name in chosen if name != "capture"]
        if not chosen:
            parser.error("--sanitize has no check to run: capture alone is left out under it")
    if args.sanitize:
        sanitizer = shutil.which("compute-sanitizer")
        if sanitizer is None:
            print("compute-sanitizer is not on PATH; nothing sanitized", file=sys.stderr)
            return 1
        command = [
            sanitizer,
            "--tool",
            "memcheck",
            "--error-exitcode",
            "1",
            sys.executable,
            __file__,
            "--only",
            *chosen,
        ]
        return subprocess.run(command).returncode
    import torch

    gpu = torch.cuda.is_available()
    rows = []
    for name in chosen:
        started = time.perf_counter()
        if not gpu:
            rows.append((name, "skipped", 0.0, "no CUDA GPU visible to torch"))
            continue
        try:
            detail, result = CHECKS[name](), "passed"
        except Exception as exc:  # a check's failure is its row, and the others still run
            detail, result = f"{type(exc).__name__}: {exc}", "FAILED"
        rows.append((name, result, time.perf_counter() - started, detail))
    if not args.only:
        started = time.perf_counter()
        result, detail = tensorrt_suite() if gpu else ("skipped", "no CUDA GPU visible to torch")
        rows.append(("tensorrt engine suite", result, time.perf_counter() - started, detail))
    device = torch.cuda.get_device_name() if gpu else "no GPU"
    print(f"\nGPU checks on {device} (torch {torch.__version__})\n")
    print("| check | result | s | detail |\n|---|---|---:|---|")
    for name, result, seconds, detail in rows:
        print(f"| {name} | {result} | {seconds:.1f} | {detail} |")
    return 1 if any(result == "FAILED" for _, result, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
