"""CUDA memory, streams and graphs for TensorRT: from torch when it sees a GPU, else pycuda.

Both helpers are bound to one device (the current one when the model is loaded, or the
index given) and make it current around every call with ``active()``, so a model loaded on
``cuda:1`` runs there from any thread. Copies are asynchronous on the stream given;
``synchronize`` waits for that stream only, never the whole device.

pycuda is used through the device's primary context (the one the CUDA runtime, TensorRT and
torch share): ``pycuda.autoinit`` would make a private context current on the importing
thread only, so a thread pool's other threads, and TensorRT's own runtime calls, would not
see it (inducer/pycuda#242). Only torch takes CUDA tensors in place.

With torch, streams and graphs come from the CUDA runtime itself (cuda-python, as TensorRT's
own samples use it): ``torch.cuda.Stream()`` hands out a pool of 32 streams per device
round-robin (c10/cuda/CUDAStream.h), shared with every other user of torch in the process,
and ``torch.cuda.CUDAGraph`` leaves its caching allocator capturing when a capture fails
(``capture_end`` throws before releasing it). A stream is created for its owner alone (torch
sees it as an ``ExternalStream``) and destroyed on ``release``, or when collected (with the
graphs captured on it). Nothing here is imported until an engine is loaded or calibrated.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import EngineError, OptionsError

ALIGNMENT = 256  # bytes: what TensorRT requires of every address it reads or writes


class TorchCuda:
    """Buffers from torch, streams and graphs from the CUDA runtime (cuda-python), on device
    ``index``; CUDA tensors are read in place."""

    device_type = "cuda"
    can_capture = True

    def __init__(self, index: int | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EngineError("torch sees no CUDA device")
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise EngineError(
                "running a TensorRT engine with torch needs cuda-python (its CUDA streams and "
                "graphs); pip install 'fastervit-trt[tensorrt]' or 'cuda-python'"
            ) from None
        self.torch, self.cudart = torch, cudart
        check_index(index, torch.cuda.device_count())  # torch's own check is a bare AssertionError
        self.index = torch.cuda.current_device() if index is None else index
        self.destroyers: dict[int, weakref.finalize] = {}  # stream handle -> its cudaStreamDestroy
        self.graph_destroyers: dict[int, weakref.finalize] = {}  # graph -> its cudaGraphExecDestroy

    def _check(self, result: tuple, call: str) -> Any:
        """The value of a cuda-python call's (error, value...) result; an error raises."""
        error = result[0]
        if error != self.cudart.cudaError_t.cudaSuccess:
            raise EngineError(f"CUDA {call} failed on cuda:{self.index}: {error.name}")
        return result[1] if len(result) > 1 else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.torch.cuda.device(self.index):
            yield

    def stream(self, held: Any = None) -> tuple[Any, int]:
        """A stream of its own (non-blocking, as torch's are), seen by torch as an ExternalStream;
        ``held`` (an object with ``free()``: the buffers used on it) is freed just before the
        stream is destroyed, whichever way that comes (``release``, collection, exit)."""
        with self.active():
            created = self._check(
                self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
            )
        handle = int(created)  # the cudaStream_t's value (``getPtr()`` is the address it is stored at)
        stream = self.torch.cuda.ExternalStream(handle, device=self.index)
        _prune(self.destroyers, self.graph_destroyers)
        self.destroyers[handle] = weakref.finalize(
            stream, _destroy, self.torch, self.index, self.cudart.cudaStreamDestroy, created, held
        )
        return stream, handle

    def release(self, stream: Any, graph: Any | None) -> None:
        """Destroy ``stream`` and ``graph`` (a ``capture`` of it), both even if one fails (then
        raised); work queued on them finishes first."""
        results: list[tuple[tuple | None, str]] = []  # None: destroyed already, when collected
        with self.active():
            if graph is not None:
                destroy = self.graph_destroyers.pop(int(graph), None)
                result = destroy() if destroy is not None else self.cudart.cudaGraphExecDestroy(graph)
                results.append((result, "cudaGraphExecDestroy"))
            destroy = self.destroyers.pop(stream.cuda_stream, None)
            if destroy is not None:
                results.append((destroy(), "cudaStreamDestroy"))
        for result, call in results:
            if result is not None:
                self._check(result, call)

    def device(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        """A buffer from torch's caching allocator, made on the caller's current stream: ``claim``
        it for the stream that will use it."""
        buffer = self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), device=f"cuda:{self.index}")
        return buffer, buffer.data_ptr()

    def claim(self, stream: Any) -> None:
        """``stream`` waits for the caller's current stream before it uses buffers just made by
        ``device``: the caching allocator hands out a block freed on that stream as soon as its
        last use there is queued, not done (a block belongs to the stream it was allocated on;
        torch's CUDA semantics notes), and ``stream`` is not ordered after it."""
        self.wait_current(stream)

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
        """``launch`` captured on ``stream`` as an instantiated CUDA graph, as trtexec does
        (sampleDevice.h, TrtCudaGraph); None when it returns False or CUDA invalidates the
        capture, the capture ended and its graph destroyed either way. The CUDA runtime's own
        capture, not torch's: no caching allocator to leave capturing, no device-wide
        synchronize, and thread-local mode so other threads keep launching meanwhile. Any other
        CUDA error raises, as does ``launch`` (after the capture is ended)."""
        cudart, handle = self.cudart, stream.cuda_stream
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(cudart.cudaStreamBeginCapture(handle, mode), "cudaStreamBeginCapture")
        try:
            launched = bool(launch())
        except BaseException:
            self._end_capture(handle, keep=False, quiet=True)
            raise
        graph = self._end_capture(handle, keep=launched)
        if graph is None:
            return None
        instantiated = cudart.cudaGraphInstantiate(graph, 0)
        destroyed = cudart.cudaGraphDestroy(graph)  # the instantiation does not need it
        executable = self._check(instantiated, "cudaGraphInstantiate")
        if destroyed[0] != cudart.cudaError_t.cudaSuccess:
            cudart.cudaGraphExecDestroy(executable)
            self._check(destroyed, "cudaGraphDestroy")
        # destroyed on ``release``, or with the stream it replays on when that is collected
        _prune(self.destroyers, self.graph_destroyers)
        self.graph_destroyers[int(executable)] = weakref.finalize(
            stream, _destroy, self.torch, self.index, cudart.cudaGraphExecDestroy, executable
        )
        return executable

    def _end_capture(self, handle: int, keep: bool, quiet: bool = False) -> Any | None:
        """End the capture on ``handle``: its graph when ``keep``, else None (the graph of a
        launch TensorRT refused is destroyed); None when CUDA invalidated the capture (its
        error read, so none is left pending). ``quiet`` (an exception is on its way): a CUDA
        failure here is not raised over it."""
        cudart = self.cudart
        error, graph = cudart.cudaStreamEndCapture(handle)
        if error != cudart.cudaError_t.cudaSuccess:
            cudart.cudaGetLastError()
            if error != cudart.cudaError_t.cudaErrorStreamCaptureInvalidated and not quiet:
                self._check((error,), "cudaStreamEndCapture")
            return None
        if keep:
            return graph
        result = cudart.cudaGraphDestroy(graph)
        if not quiet:
            self._check(result, "cudaGraphDestroy")
        return None

    def replay(self, graph: Any, stream: Any) -> None:
        self._check(self.cudart.cudaGraphLaunch(graph, stream.cuda_stream), "cudaGraphLaunch")


class PyCuda:
    """Streams and buffers from pycuda, in the primary context of device ``index``."""

    device_type = None  # takes NumPy arrays only
    can_capture = False

    def __init__(self, index: int | None = None) -> None:
        import pycuda.driver as cuda

        cuda.init()
        check_index(index, cuda.Device.count())
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

    def stream(self, held: Any = None) -> tuple[Any, int]:
        """A pycuda stream; ``held`` needs no order here (pycuda's page-locked memory records no
        stream on free)."""
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

    def claim(self, stream: Any) -> None:
        """Nothing to wait for: pycuda's memory comes from cuMemAlloc, not a cache of blocks
        freed on other streams."""

    def release(self, stream: Any, graph: None) -> None:
        """Nothing to do: pycuda destroys a stream when it is collected, and makes no graphs."""


def check_index(index: int | None, count: int, where: str = "") -> None:
    """Refuse a device ``index`` that is not among the ``count`` devices this process sees."""
    if index is not None and not 0 <= index < count:
        devices = f"{count} CUDA device{'s' if count != 1 else ''}" + (f" (0 to {count - 1})" if count > 1 else "")
        choice = "0" if count == 1 else f"0 to {count - 1}"
        raise OptionsError(
            f"{where}device {index}: this process sees {devices}; "
            + (f"pass --device {choice}, or check CUDA_VISIBLE_DEVICES" if count else "check CUDA_VISIBLE_DEVICES")
        )


def device_count() -> int | None:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES applied): torch's count when it
    sees a GPU, else pycuda's; None when neither does (``open_cuda`` says so)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count()
    except Exception:  # ImportError, or pycuda finding no driver
        return None


def _prune(*tables: dict[int, weakref.finalize]) -> None:
    """Drop the finalizers that ran (their objects collected): a long-lived service making
    contexts again and again would otherwise keep one dead entry per stream or graph ever made."""
    for finalizers in tables:
        for key in [key for key, finalizer in finalizers.items() if not finalizer.alive]:
            del finalizers[key]


def _destroy(torch: Any, index: int, destroy: Callable[[Any], tuple], handle: Any, held: Any = None) -> tuple:
    """``destroy(handle)`` (cudaStreamDestroy, cudaGraphExecDestroy) with device ``index``
    current: also called when a stream is collected, on whatever thread, where a runtime call
    with no context current would initialise device 0's primary context
    (cudaStreamCreateWithFlags' documentation). ``held`` buffers go first: freeing a pinned block
    records an event on each stream that copied through it (torch's CachingHostAllocator)."""
    with torch.cuda.device(index):
        try:
            if held is not None:
                held.free()
        finally:  # the stream goes whatever the free did
            result = destroy(handle)
        return result


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
    except OptionsError:
        raise
    except Exception:  # ImportError, or pycuda finding no device / driver
        raise EngineError(
            "no CUDA GPU is visible (torch sees none, pycuda is missing or found none): running a "
            "TensorRT engine needs an NVIDIA GPU; on this machine load the .onnx with ONNX Runtime "
            "instead"
        ) from None
