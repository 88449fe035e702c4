"""CUDA memory, streams and graphs for TensorRT: from torch when it sees a GPU, else pycuda.

Both helpers are bound to one device (the current one when the model is loaded, or the
index given) and make it current around every call with ``active()``, so a model loaded on
``cuda:1`` runs there from any thread. Copies are asynchronous on the stream given;
``synchronize`` waits for that stream only, never the whole device.

pycuda is used through the device's primary context (the one the CUDA runtime, TensorRT and
torch share): ``pycuda.autoinit`` would make a private context current on the importing
thread only, so a thread pool's other threads, and TensorRT's own runtime calls, would not
see it (inducer/pycuda#242). Only torch captures CUDA graphs and takes CUDA tensors in
place. Nothing here is imported until an engine is loaded or calibrated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import FasterViTTRTError

ALIGNMENT = 256  # bytes: what TensorRT requires of every address it reads or writes


class TorchCuda:
    """Streams, buffers and graphs from torch on device ``index``; CUDA tensors are read in place."""

    device_type = "cuda"
    can_capture = True

    def __init__(self, index: int | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        self.torch = torch
        self.index = torch.cuda.current_device() if index is None else index

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.torch.cuda.device(self.index):
            yield

    def stream(self) -> tuple[Any, int]:
        stream = self.torch.cuda.Stream(self.index)
        return stream, stream.cuda_stream

    def device(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        buffer = self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), device=f"cuda:{self.index}")
        return buffer, buffer.data_ptr()

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), pin_memory=True).numpy()

    def upload(self, device: Any, host: np.ndarray, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            device[: len(host)].copy_(self.torch.from_numpy(host), non_blocking=True)

    def download(self, host: np.ndarray, device: Any, count: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self.torch.from_numpy(host[:count]).copy_(device[:count], non_blocking=True)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    # -- CUDA tensors given by the caller (read in place where TensorRT can)

    def address(self, tensor: Any) -> int:
        return tensor.data_ptr()

    def wait_current(self, stream: Any) -> None:
        """``stream`` waits for the work queued on the caller's current stream (that made the tensor)."""
        stream.wait_stream(self.torch.cuda.current_stream(self.index))

    def padded(self, tensor: Any, rows: int) -> Any:
        """A new (aligned) tensor: ``tensor`` followed by zero rows up to ``rows``."""
        return self.torch.cat([tensor, tensor.new_zeros((rows - len(tensor), *tensor.shape[1:]))])

    def copy(self, tensor: Any) -> Any:
        """A new (aligned) copy of ``tensor``."""
        return tensor.clone()

    def copy_rows(self, device: Any, tensor: Any, rows: int, stream: Any) -> None:
        """``tensor`` into the first rows of ``device``, zeros after it up to ``rows``, on ``stream``."""
        with self.torch.cuda.stream(stream):
            device[: len(tensor)].copy_(tensor, non_blocking=True)
            device[len(tensor) : rows].zero_()

    # -- CUDA graphs

    def capture(self, stream: Any, launch: Callable[[], bool]) -> Any | None:
        """``launch`` captured on ``stream`` as a CUDA graph; None when it returns False or
        CUDA invalidates the capture. Begin and end on the stream itself: no device-wide
        synchronize or cache flush (which ``torch.cuda.graph`` does on every capture), and
        ``thread_local`` so other threads keep launching meanwhile."""
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            launched = False
            try:
                launched = bool(launch())
            finally:
                try:
                    graph.capture_end()
                except RuntimeError:  # the capture was invalidated (a synchronizing call inside it)
                    launched = False
        return graph if launched else None

    def replay(self, graph: Any, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            graph.replay()


class PyCuda:
    """Streams and buffers from pycuda, in the primary context of device ``index``."""

    device_type = None  # takes NumPy arrays only
    can_capture = False

    def __init__(self, index: int | None = None) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.index = index or 0
        self.context = cuda.Device(self.index).retain_primary_context()

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

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return getattr(torch, np.dtype(dtype).name)


def open_cuda(index: int | None = None) -> TorchCuda | PyCuda:
    """CUDA on device ``index`` (None: the current one) from torch when it sees a GPU, else
    from pycuda; one clear error if neither."""
    try:
        import torch

        if torch.cuda.is_available():
            return TorchCuda(index)
    except ImportError:
        pass
    try:
        return PyCuda(index)
    except Exception:  # ImportError, or pycuda finding no device / driver
        raise FasterViTTRTError(
            "no CUDA GPU is visible (torch sees none, pycuda is missing or found none): running a "
            "TensorRT engine needs an NVIDIA GPU; on this machine load the .onnx with ONNX Runtime "
            "instead"
        ) from None
