"""A stand-in TensorRT runtime and CUDA, as strict as the real ones where the
toolkit's GPU code can go wrong, to drive that code on a CPU.

What it holds the code to (each from NVIDIA's bindings or the CUDA semantics they expose):
- device memory is host memory at 256-byte-aligned addresses; TensorRT reads and writes the
  addresses bound with ``set_tensor_address`` (which returns a bool: False for an unknown
  name, an address not 256-byte aligned, or one the test tells it to refuse), and only
  memory this stand-in handed out or was shown (``adopt``): anything else is an illegal
  address;
- ``execute_async_v3`` and every copy are queued on their stream and happen at
  ``synchronize``: output buffers hold nothing new until then;
- a CUDA graph records the launches made while its stream is captured, with the context's
  shape and addresses of that moment; replaying it on a context whose shape has changed
  since is an error (TensorRT needs a new capture); ``fail_capture`` makes a launch inside a
  capture return False, as a capture TensorRT cannot do;
- a ``USER_MANAGED`` context runs only with device memory of at least the size
  ``update_device_memory_size_for_shapes`` asked for, which can fail (return 0);
- the caller's current stream is a queue like any other: a CUDA tensor the caller made, or a
  padded or aligned copy made the way torch makes it, is written when that stream runs, and
  a stream that waited on it sees only the work queued before the wait;
- streams and graphs are destroyed once each (``release``), and a capture can be invalidated;
- a device buffer comes from torch's caching allocator on the caller's current stream, which
  hands out a block as soon as its last use there is queued (torch's CUDA semantics notes: a
  block belongs to the stream it was allocated on): another stream may touch it only once it
  has waited for the caller's stream (``claim``), or it would race that last use;
- ``create_execution_context`` returns None when TensorRT cannot make one (``no_context``).

Below TorchCuda (``install_cuda``): cuda-python's runtime bindings (``CudaRuntime``: stream
capture, graphs, (error, value) tuples) and the parts of torch.cuda it uses (a stream pool of
32 handed out round-robin; a CUDAGraph whose failed ``capture_end`` leaves the caching
allocator capturing), so TorchCuda's own stream and capture code runs on a CPU too.

The engine computes, for output k, k times each image's sum (every value of it).
"""

from __future__ import annotations

import contextlib
import enum
import threading
import types
import weakref
from collections.abc import Callable

import numpy as np

ALIGN = 256


class IllegalAddress(AssertionError):
    """TensorRT would read or write memory nobody gave it (a CUDA illegal-address error)."""


class Stream:
    """A CUDA stream: work runs in the order queued, when the stream is synchronized or
    when a stream that waits on it gets to the wait (``cudaStreamWaitEvent``: the waiter
    goes on once the work queued before the event is done, not work queued after it)."""

    def __init__(self, handle: int) -> None:
        self.handle, self.pending, self.queued, self.done = handle, [], 0, 0
        self.lock = threading.RLock()

    def put(self, work: Callable[[], None]) -> None:
        with self.lock:
            self.pending.append(work)
            self.queued += 1

    def run(self, until: int | None = None) -> None:
        """Run the work queued so far, or up to the ``until``-th item ever queued."""
        with self.lock:
            until = self.queued if until is None else until
            while self.done < until:
                work = self.pending.pop(0)
                self.done += 1
                work()


class Cuda:
    """Stands in for ``runtime.cuda.TorchCuda`` (CPU torch tensors play CUDA tensors)."""

    device_type = "cpu"
    can_capture = True

    def __init__(self, index: int | None = None, reuse: bool = False) -> None:
        """``reuse``: device buffers are blocks the caching allocator may still have in use on
        the caller's stream (as the engine's ``open_cuda`` and the calibrator's tests have it)."""
        import torch

        self.torch, self.index, self.reuse = torch, 0 if index is None else index, reuse
        self.memory: dict[int, np.ndarray] = {}  # start address -> its bytes
        self.streams: dict[int, Stream] = {}  # made and not yet released
        self.caller = Stream(0)  # the caller's current stream (torch's default one)
        self.capturing: tuple[Stream, list] | None = None
        self.fail_capture = False  # a launch inside a capture returns False
        self.invalidate_capture = False  # CUDA invalidates every capture (cudaStreamEndCapture fails)
        self.graphs: list[list] = []  # captured and not yet released
        self.current = threading.local()
        self.log: list[tuple] = []  # ("alloc", nbytes), ("sync",), ("capture",), ("replay",)
        self.reused: dict[int, tuple[int, int]] = {}  # device buffer -> (bytes, caller-stream item to wait for)
        # pinned host blocks, as torch's CachingHostAllocator keeps them: start -> (bytes, streams
        # that copied through it); freeing one records an event on each of those streams
        # (CachingHostAllocator.h: free -> record_stream), which must still exist
        self.pinned_blocks: dict[int, tuple[int, set]] = {}
        self.held: dict[int, object] = {}  # stream -> the buffers its destroyer frees first
        self.pinned_errors: list[str] = []

    # memory
    def alloc(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        raw = np.zeros(nbytes + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        array = raw[start : start + nbytes].view(dtype)[: int(np.prod(shape))].reshape(shape)
        self.adopt(array)
        self.log.append(("alloc", nbytes))
        return array

    def adopt(self, array) -> None:
        """Let TensorRT read ``array`` (a NumPy array or CPU tensor the test made)."""
        array = array.numpy() if hasattr(array, "numpy") else array
        self.memory[array.ctypes.data] = array.reshape(-1).view(np.uint8)

    def view(self, address: int, shape, dtype, on_gpu: bool = True) -> np.ndarray:
        """The memory at ``address``; ``on_gpu``: touched by work running on a stream."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if on_gpu:
            self.touch(address, nbytes)
        for start, data in self.memory.items():
            if start <= address and address + nbytes <= start + data.nbytes:
                return data[address - start : address - start + nbytes].view(dtype).reshape(shape)
        raise IllegalAddress(f"{address:#x}: {nbytes} bytes nobody allocated")

    def touch(self, address: int, nbytes: int = 1) -> None:
        """A stream's work uses memory at ``address``: a device buffer's block must be free of
        its last use on the caller's stream by now."""
        for start, (size, item) in self.reused.items():
            if start <= address < start + size and self.caller.done < item:
                raise AssertionError(
                    f"{address:#x}: a device buffer used before the caller's stream finished its "
                    "block's previous use (the caching allocator freed it there): claim it first"
                )

    # the TorchCuda interface
    @contextlib.contextmanager
    def active(self):
        previous = getattr(self.current, "device", None)
        self.current.device = self.index
        try:
            yield
        finally:
            self.current.device = previous

    def stream(self, held=None):
        stream = Stream(max(self.streams, default=0) + 1)
        self.streams[stream.handle] = stream
        self.held[stream.handle] = held
        return stream, stream.handle

    def release(self, stream: Stream, graph: list | None) -> None:
        """Destroy ``stream`` and ``graph`` (each once: CUDA fails on a destroyed handle), the
        buffers ``held`` for the stream freed first, as TorchCuda's destroyer does."""
        held = self.held.pop(stream.handle, None)
        if held is not None:
            held.free()
        assert self.streams.pop(stream.handle) is stream, "a stream destroyed twice"
        if graph is not None:
            self.graphs.remove(graph)

    def device(self, shape, dtype):
        array = self.alloc(shape, dtype)
        if self.reuse:
            self.on_caller(lambda: None)  # the block's previous user: its last kernel, still queued
            self.reused[array.ctypes.data] = (array.nbytes, self.caller.queued)
        return array, array.ctypes.data

    def claim(self, stream) -> None:
        self.wait_current(stream)

    def pinned(self, shape, dtype):
        array = np.zeros(shape, dtype)
        streams: set = set()
        self.pinned_blocks[array.ctypes.data] = (max(1, array.nbytes), streams)
        weakref.finalize(array, self._pinned_freed, array.ctypes.data, streams)
        return array

    def _pinned_freed(self, start: int, streams: set) -> None:
        self.pinned_blocks.pop(start, None)
        for stream in streams:
            if self.streams.get(stream.handle) is not stream:
                self.pinned_errors.append(f"pinned block {start:#x} freed after stream {stream.handle} was destroyed")

    def _copied_through(self, host, stream) -> None:
        """``stream`` copied through the pinned block holding ``host`` (torch records it)."""
        address = host.ctypes.data
        for start, (size, streams) in self.pinned_blocks.items():
            if start <= address < start + size:
                streams.add(stream)

    def enqueue(self, stream: Stream, work: Callable[[], None]) -> None:
        if self.capturing is not None and self.capturing[0] is stream:
            self.capturing[1].append(work)
        else:
            stream.put(work)

    def on_caller(self, work: Callable[[], None]) -> None:
        """``work`` queued on the caller's stream, as a kernel that makes a CUDA tensor is."""
        self.caller.put(work)

    def upload(self, device, host, stream):
        self._copied_through(host, stream)
        self.enqueue(
            stream, lambda: (self.touch(device.ctypes.data), device[: len(host)].__setitem__(slice(None), host))
        )

    def download(self, host, device, count, stream):
        self._copied_through(host, stream)
        self.enqueue(
            stream, lambda: (self.touch(device.ctypes.data), host[:count].__setitem__(slice(None), device[:count]))
        )

    def synchronize(self, stream: Stream) -> None:
        if self.capturing is not None and self.capturing[0] is stream:
            raise AssertionError("synchronize inside a capture: CUDA invalidates it")
        self.log.append(("sync",))
        stream.run()

    def address(self, tensor) -> int:
        return tensor.data_ptr()

    def wait_current(self, stream) -> None:
        mark = self.caller.queued  # what the caller's stream holds now, and nothing queued later
        self.enqueue(stream, lambda: self.caller.run(mark))

    def padded(self, tensor, rows):
        """Made as torch does, by a kernel queued on the caller's stream: NaN until it runs."""
        out = self.alloc((rows, *tensor.shape[1:]), tensor.numpy().dtype)
        out[:] = np.nan
        source = tensor.numpy()
        self.on_caller(lambda: (out[: len(source)].__setitem__(slice(None), source), out[len(source) :].fill(0)))
        return self.torch.from_numpy(out)

    def copy(self, tensor):
        return self.padded(tensor, len(tensor))

    def copy_rows(self, device, tensor, rows, stream):
        source = tensor.numpy()
        self.enqueue(
            stream,
            lambda: (
                self.touch(device.ctypes.data),
                device[: len(source)].__setitem__(slice(None), source),
                device[len(source) : rows].__setitem__(slice(None), 0),
            ),
        )

    def capture(self, stream, launch):
        self.log.append(("capture",))
        self.capturing = (stream, [])
        try:
            launched = launch()
        finally:
            _, recorded = self.capturing
            self.capturing = None
        if not launched or not recorded or self.invalidate_capture:
            return None
        self.graphs.append(recorded)
        return recorded

    def replay(self, graph, stream):
        self.log.append(("replay",))
        for work in graph:
            self.enqueue(stream, work)


class _DataType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name.upper()}"


def tensorrt(
    low: int,
    high: int,
    outputs: dict | None = None,
    output_dtype: str = "float32",
    rtx: str | None = None,
    refuse: tuple[str, ...] = (),
    memory_error: bool = False,
    no_context: bool = False,
):
    """A TensorRT runtime (``world.trt``) and CUDA (``world.open_cuda``) whose engines take
    (N, 3, 2, 2) float32 inputs on a profile of ``low..high``; ``outputs``: name -> shape per
    image (default one (1,) "logits"). ``rtx``: the TensorRT-RTX version to be (None:
    TensorRT 10.13); RTX has ``CudaGraphStrategy`` and ``is_stream_capturable`` from 1.2 on
    (TensorRT-RTX 1.2 release notes). ``refuse``: tensor names whose addresses
    ``set_tensor_address`` refuses; ``memory_error``: ``update_device_memory_size_for_shapes``
    fails, returning 0 (its documented error value, NvInferRuntime.h); ``no_context``:
    ``create_execution_context`` returns None (a null IExecutionContext: its error value)."""
    rtx_graphs = rtx is not None and tuple(map(int, rtx.split(".")[:2])) >= (1, 2)
    outputs = outputs or {"logits": (1,)}
    names, image = ["input", *outputs], (3, 2, 2)
    world = types.SimpleNamespace(calls=[], events=[], contexts=[], cuda=None)

    def open_cuda(index=None):  # stands in for runtime.cuda.open_cuda
        world.cuda = Cuda(index, reuse=True)
        return world.cuda

    world.open_cuda = open_cuda
    strategies = types.SimpleNamespace(
        STATIC="static", ON_PROFILE_CHANGE="on profile change", USER_MANAGED="user managed"
    )
    graph_strategies = types.SimpleNamespace(DISABLED="disabled", WHOLE_GRAPH_CAPTURE="whole graph capture")

    class RuntimeConfig:
        cuda_graph_strategy = "disabled"

    class Context:
        def __init__(self, allocation, config) -> None:
            self.allocation, self.config = allocation, config
            self.addresses: dict[str, int] = {}
            self.shape: tuple | None = None
            self.history: list[tuple] = []  # every shape it was set to
            self.memory: tuple[int, int] | None = None
            world.contexts.append(self)

        def set_input_shape(self, name, shape):
            shape = tuple(shape)
            if name != "input" or shape[1:] != image or not low <= shape[0] <= high:
                return False
            self.shape = shape
            self.history.append(shape)
            return True

        def set_tensor_address(self, name, address):
            if name not in names or address % ALIGN or name in refuse:
                return False
            self.addresses[name] = address
            return True

        def update_device_memory_size_for_shapes(self):
            assert self.shape is not None, "set the input shape first"
            return 0 if memory_error else 1024 * self.shape[0]

        def set_device_memory(self, address, size):
            world.cuda.view(address, (size,), np.uint8, on_gpu=False)  # must be memory it was given
            self.memory = (address, size)

        def execute_async_v3(self, handle):
            if self.shape is None or set(self.addresses) != set(names):
                return False
            if self.allocation == "user managed" and (self.memory is None or self.memory[1] < 1024 * self.shape[0]):
                return False
            if world.cuda.capturing is not None and world.cuda.fail_capture:
                return False
            world.events.append(("device", world.cuda.current.__dict__.get("device")))
            shape, addresses, memory = self.shape, dict(self.addresses), self.memory

            def run():  # what the GPU does when the stream gets there
                if self.shape != shape:
                    raise AssertionError(
                        f"a launch recorded at batch {shape[0]} ran on a context now at "
                        f"batch {self.shape[0]}: TensorRT needs a new capture"
                    )
                count = shape[0]
                if memory is not None:  # the activations, written first
                    world.cuda.view(memory[0], (memory[1],), np.uint8)
                world.calls.append(count)
                x = world.cuda.view(addresses["input"], shape, np.float32)
                sums = x.reshape(count, -1).sum(1)
                for k, (name, per_image) in enumerate(outputs.items(), start=1):
                    out = world.cuda.view(addresses[name], (count, *per_image), np.dtype(output_dtype))
                    out[:] = (k * sums).reshape(-1, *[1] * len(per_image))

            world.cuda.enqueue(world.cuda.streams[handle], run)
            return True

    if rtx_graphs:
        Context.is_stream_capturable = lambda self, handle: True

    class Engine:
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_dtype(self, name):
            return _DataType("float32" if name == "input" else output_dtype)

        def get_tensor_profile_shape(self, name, index):
            return (low, *image), (high, *image), (high, *image)

        def get_tensor_shape(self, name):
            return (-1, *image) if name == "input" else (-1, *outputs[name])

        def create_execution_context(self, strategy_or_config="static"):
            if no_context:
                return None
            if isinstance(strategy_or_config, RuntimeConfig):
                return Context("static", strategy_or_config)
            return Context(strategy_or_config, None)

        if rtx_graphs:

            def create_runtime_config(self):
                return RuntimeConfig()

    class Runtime:
        def __init__(self, logger) -> None:
            self._host_code = False

        @property
        def engine_host_code_allowed(self):
            return self._host_code

        @engine_host_code_allowed.setter
        def engine_host_code_allowed(self, value):
            world.events.append(("host code allowed", value))
            self._host_code = value

        def deserialize_cuda_engine(self, data):
            world.events.append(("deserialize", self._host_code))
            return Engine() if data == b"engine" else None

    logger = type("Logger", (), {"ERROR": 0, "__init__": lambda self, level=0: None})

    def nptype(dtype):
        if dtype.name not in ("float32", "float16", "int64"):
            raise TypeError(f"no NumPy type for {dtype}")
        return np.dtype(dtype.name).type

    module = types.SimpleNamespace(
        __name__="tensorrt" if rtx is None else "tensorrt_rtx",
        Logger=logger,
        Runtime=Runtime,
        __version__=rtx or "10.13.0",
        TensorIOMode=types.SimpleNamespace(INPUT="in"),
        nptype=nptype,
        ExecutionContextAllocationStrategy=strategies,
    )
    if rtx_graphs:
        module.CudaGraphStrategy, module.IRuntimeConfig = graph_strategies, RuntimeConfig
    world.trt = module
    return world


# -- below TorchCuda: cuda-python's runtime bindings and the parts of torch.cuda it uses


class CudaError(enum.IntEnum):
    """``cudaError_t`` values (CUDA runtime API, driver_types.h)."""

    cudaSuccess = 0
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class CaptureMode(enum.IntEnum):
    """``cudaStreamCaptureMode`` (CUDA runtime API)."""

    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class CaptureStatus(enum.IntEnum):
    """``cudaStreamCaptureStatus`` (CUDA runtime API)."""

    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


class CudaRuntime:
    """Stands in for cuda-python's ``cuda.bindings.runtime``: every call returns a tuple
    whose first item is a ``cudaError_t``, as the bindings do; a failed call is also the
    thread's last error until ``cudaGetLastError`` reads it (CUDA runtime API, Error
    Handling). Work on a stream is a queue run at ``cudaStreamSynchronize``.

    Stream capture (CUDA runtime API, Stream Management / Graph Management):
    ``cudaStreamBeginCapture`` records the stream's work into a graph instead of queueing
    it; a call not permitted while capturing (``cudaStreamSynchronize``) fails with
    cudaErrorStreamCaptureUnsupported and invalidates the capture, after which
    ``cudaStreamEndCapture`` ends it with cudaErrorStreamCaptureInvalidated and a null
    graph. A graph and its instantiation live until destroyed (``live`` lists them).
    ``cudaStreamDestroy`` logs the device current when it ran: with none current, a runtime
    call initialises device 0's primary context (cudaStreamCreateWithFlags' documentation)."""

    cudaError_t, cudaStreamCaptureMode, cudaStreamCaptureStatus = CudaError, CaptureMode, CaptureStatus
    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}
        self.made: set[int] = set()  # streams created here and not yet destroyed
        self.captures: dict[int, dict] = {}  # stream handle -> {"mode", "work", "invalidated"}
        self.graphs: dict[int, list] = {}  # cudaGraph_t and cudaGraphExec_t handles -> recorded work
        self.handles = iter(range(0x7F00, 1 << 32, 0x10))
        self.last_error = CudaError.cudaSuccess
        self.log: list[tuple] = []
        self.current = threading.local()  # .device: the device current on each thread

    def _fail(self, error: CudaError, *values) -> tuple:
        self.last_error = error
        return (error, *values)

    def stream_of(self, handle: int) -> Stream:
        """The stream ``handle`` names (made here or by the stand-in torch's pool)."""
        if handle not in self.streams:
            self.streams[handle] = Stream(handle)
        return self.streams[handle]

    def enqueue(self, handle: int, work: Callable[[], None]) -> None:
        """``work`` queued on the stream, or recorded into its capture."""
        if handle in self.captures:
            self.captures[handle]["work"].append(work)
        else:
            self.stream_of(handle).put(work)

    @property
    def live(self) -> dict[str, list[int]]:
        """What was created and not yet destroyed: streams made here, graphs, captures underway."""
        return {
            "streams": sorted(self.made),
            "graphs": sorted(self.graphs),
            "capturing": sorted(self.captures),
        }

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple:
        handle = next(self.handles)
        self.streams[handle] = Stream(handle)
        self.made.add(handle)
        self.log.append(("create", handle, flags))
        return CudaError.cudaSuccess, handle

    def cudaStreamDestroy(self, handle: int) -> tuple:
        if handle not in self.made:
            return self._fail(CudaError.cudaErrorInvalidResourceHandle)
        self.made.remove(handle)
        self.log.append(("destroy", handle, self.device()))
        return (CudaError.cudaSuccess,)

    def device(self) -> int | None:
        """The device current on this thread (torch.cuda.device sets it); None: no context
        current, where a runtime call initialises device 0's primary context."""
        return getattr(self.current, "device", None)

    def cudaStreamSynchronize(self, handle: int) -> tuple:
        if handle in self.captures:  # not permitted while capturing: the capture is invalidated
            self.captures[handle]["invalidated"] = True
            return self._fail(CudaError.cudaErrorStreamCaptureUnsupported)
        self.stream_of(handle).run()
        return (CudaError.cudaSuccess,)

    def cudaStreamBeginCapture(self, handle: int, mode: CaptureMode) -> tuple:
        if handle in self.captures:
            return self._fail(CudaError.cudaErrorIllegalState)
        self.captures[handle] = {"mode": mode, "work": [], "invalidated": False}
        self.log.append(("begin capture", handle, mode))
        return (CudaError.cudaSuccess,)

    def cudaStreamIsCapturing(self, handle: int) -> tuple:
        capture = self.captures.get(handle)
        if capture is None:
            return CudaError.cudaSuccess, CaptureStatus.cudaStreamCaptureStatusNone
        if capture["invalidated"]:
            return CudaError.cudaSuccess, CaptureStatus.cudaStreamCaptureStatusInvalidated
        return CudaError.cudaSuccess, CaptureStatus.cudaStreamCaptureStatusActive

    def cudaStreamEndCapture(self, handle: int) -> tuple:
        capture = self.captures.pop(handle, None)
        if capture is None:
            return self._fail(CudaError.cudaErrorIllegalState, None)
        if capture["invalidated"]:
            return self._fail(CudaError.cudaErrorStreamCaptureInvalidated, None)
        graph = next(self.handles)
        self.graphs[graph] = capture["work"]
        return CudaError.cudaSuccess, graph

    def cudaGraphInstantiate(self, graph: int, flags: int) -> tuple:
        if graph not in self.graphs:
            return self._fail(CudaError.cudaErrorInvalidResourceHandle, None)
        executable = next(self.handles)
        self.graphs[executable] = list(self.graphs[graph])
        return CudaError.cudaSuccess, executable

    def cudaGraphLaunch(self, executable: int, handle: int) -> tuple:
        if executable not in self.graphs:
            return self._fail(CudaError.cudaErrorInvalidResourceHandle)
        self.log.append(("launch", executable, handle))
        for work in self.graphs[executable]:
            self.enqueue(handle, work)
        return (CudaError.cudaSuccess,)

    def cudaGraphDestroy(self, graph: int) -> tuple:
        return (
            (CudaError.cudaSuccess,)
            if self.graphs.pop(graph, None) is not None
            else self._fail(CudaError.cudaErrorInvalidResourceHandle)
        )

    cudaGraphExecDestroy = cudaGraphDestroy

    def cudaGetLastError(self) -> tuple:
        error, self.last_error = self.last_error, CudaError.cudaSuccess
        return (error,)


class TorchStream:
    """A ``torch.cuda.Stream`` (or ``ExternalStream``): a handle and its queue."""

    def __init__(self, cudart: CudaRuntime, handle: int) -> None:
        self.cudart, self.cuda_stream = cudart, handle

    def synchronize(self) -> None:
        self.cudart.cudaStreamSynchronize(self.cuda_stream)


def torch_module(cudart: CudaRuntime, devices: int = 2) -> types.SimpleNamespace:
    """The parts of ``torch`` (``torch.cuda``) that ``runtime.cuda.TorchCuda`` reaches for,
    over ``cudart``, strict where torch is:

    - ``torch.cuda.Stream()`` does not create a stream: it hands out the next of a pool of
      32 per device, round-robin (c10/cuda/CUDAStream.cpp: kStreamsPerPool = 32,
      ``get_idx`` cycles through them), so the 33rd is the 1st again;
    - ``CUDAGraph`` marks the caching allocator as capturing at ``capture_begin``
      (``beginAllocateToPool``); ``capture_end`` calls cudaStreamEndCapture through
      AT_CUDA_CHECK, which throws on an invalidated capture before ``endAllocateToPool``
      runs, so the allocator stays capturing (ATen/cuda/CUDAGraph.cpp, torch 2.1 and later).
    ``cuda.allocator_capturing`` tells whether the allocator believes a capture is underway."""
    pool = [0x100 + i for i in range(32)]  # kStreamsPerPool
    state = types.SimpleNamespace(next=0)
    local = threading.local()
    cuda = types.SimpleNamespace(allocator_capturing=False)

    def pooled_stream(device=None, priority=0):
        handle = pool[state.next % len(pool)]
        state.next += 1
        cudart.stream_of(handle)
        return TorchStream(cudart, handle)

    def current_stream(device=None):
        return getattr(local, "stream", None) or TorchStream(cudart, 0)

    @contextlib.contextmanager
    def on_stream(stream):
        previous, local.stream = getattr(local, "stream", None), stream
        try:
            yield
        finally:
            local.stream = previous

    class CUDAGraph:
        def capture_begin(self, capture_error_mode="global"):
            cuda.allocator_capturing = True
            self.stream = current_stream().cuda_stream
            modes = {"global": 0, "thread_local": 1, "relaxed": 2}
            cudart.cudaStreamBeginCapture(self.stream, CaptureMode(modes[capture_error_mode]))

        def capture_end(self):
            error, graph = cudart.cudaStreamEndCapture(self.stream)
            if error:  # C10_CUDA_CHECK reads (clears) the error, then throws
                cudart.cudaGetLastError()
                raise RuntimeError(f"CUDA error: {error.name}")
            cuda.allocator_capturing = False
            self.graph = cudart.cudaGraphInstantiate(graph, 0)[1]
            cudart.cudaGraphDestroy(graph)  # keep_graph=False: only the instantiation is kept

        def replay(self):
            cudart.cudaGraphLaunch(self.graph, current_stream().cuda_stream)

        def __del__(self):  # the destructor's reset(): what capture_end made is destroyed
            cudart.graphs.pop(getattr(self, "graph", None), None)

    cuda.is_available = lambda: True
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: devices

    @contextlib.contextmanager
    def device(index):  # torch.cuda.device: ``index`` current on this thread inside
        previous, cudart.current.device = cudart.device(), index
        try:
            yield
        finally:
            cudart.current.device = previous

    cuda.device = device
    cuda.Stream = pooled_stream
    cuda.ExternalStream = lambda stream_ptr, device=None: TorchStream(cudart, stream_ptr)
    cuda.current_stream = current_stream
    cuda.stream = on_stream
    cuda.CUDAGraph = CUDAGraph
    return types.SimpleNamespace(cuda=cuda)


def install_cuda(monkeypatch, devices: int = 2) -> tuple[types.SimpleNamespace, CudaRuntime]:
    """The stand-in torch and cuda-python runtime, imported in their place (``import torch``,
    ``from cuda.bindings import runtime``) for the rest of a test; torch sees ``devices`` GPUs."""
    import sys

    cudart = CudaRuntime()
    torch = torch_module(cudart, devices)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    try:
        import cuda.bindings

        monkeypatch.setattr(cuda.bindings, "runtime", cudart, raising=False)
    except ImportError:  # no cuda-python here: the packages are made up too
        bindings = types.SimpleNamespace(runtime=cudart)
        monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(bindings=bindings))
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    return torch, cudart
