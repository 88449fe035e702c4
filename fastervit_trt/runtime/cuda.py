"""CUDA memory for TensorRT: from torch when it sees a GPU, else from pycuda.

pycuda is used through the device's primary context (the one the CUDA runtime, TensorRT and
torch share), made current around every call with ``active()``: ``pycuda.autoinit`` would
make a private context current on the importing thread only, so a thread pool's other
threads, and TensorRT's own runtime calls, would not see it (inducer/pycuda#242).
Nothing here is imported until an engine is loaded or calibrated.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ..errors import FasterViTTRTError


class TorchCuda:
    """Streams and buffers from torch (CUDA torch tensors can then be read in place)."""

    def __init__(self) -> None:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        self.torch = torch

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield  # torch keeps the primary context current on every thread that uses it

    def stream(self) -> tuple[Any, int]:
        stream = self.torch.cuda.Stream()
        return stream, stream.cuda_stream

    def device(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        buffer = self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), device="cuda")
        return buffer, buffer.data_ptr()

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), pin_memory=True).numpy()

    def upload(self, device: Any, host: np.ndarray, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            device[: len(host)].copy_(self.torch.from_numpy(host), non_blocking=True)

    def download(self, host: np.ndarray, device: Any, count: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self.torch.from_numpy(host[:count]).copy_(device[:count], non_blocking=True)
        stream.synchronize()


class PyCuda:
    """Streams and buffers from pycuda, in the device's primary context."""

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda
        cuda.init()
        self.cuda = cuda
        self.context = cuda.Device(device).retain_primary_context()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The primary context current on this thread (CUDA keeps one stack per thread)."""
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def stream(self) -> tuple[Any, int]:
        with self.active():
            stream = self.cuda.Stream()
        return stream, stream.handle

    def device(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        with self.active():
            buffer = self.cuda.mem_alloc(max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
        return buffer, int(buffer)

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        with self.active():
            return self.cuda.pagelocked_empty(shape, dtype)

    def upload(self, device: Any, host: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(device, host, stream)  # ``host`` is the filled rows only

    def download(self, host: np.ndarray, device: Any, count: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(host[:count], device, stream)  # the rows computed, not the max batch
        stream.synchronize()


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return getattr(torch, np.dtype(dtype).name)


def open_cuda() -> TorchCuda | PyCuda:
    """CUDA memory from torch when it sees a GPU, else from pycuda; one clear error if neither."""
    try:
        import torch
        if torch.cuda.is_available():
            return TorchCuda()
    except ImportError:
        pass
    try:
        return PyCuda()
    except Exception:  # ImportError, or pycuda finding no device / driver
        raise FasterViTTRTError(
            "no CUDA GPU is visible (torch sees none, pycuda is missing or found none): running a "
            "TensorRT engine needs an NVIDIA GPU; on this machine load the .onnx with ONNX Runtime "
            "instead") from None
