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
  ``update_device_memory_size_for_shapes`` asked for;
The engine computes, for output k, k times each image's sum (every value of it).
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable

import numpy as np

ALIGN = 256


class IllegalAddress(AssertionError):
    """TensorRT would read or write memory nobody gave it (a CUDA illegal-address error)."""


class Stream:
    def __init__(self, handle: int) -> None:
        self.handle, self.pending = handle, []

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for work in pending:
            work()


class Cuda:
    """Stands in for ``runtime.cuda.TorchCuda`` (CPU torch tensors play CUDA tensors)."""

    device_type = "cpu"
    can_capture = True

    def __init__(self, index: int | None = None) -> None:
        import torch

        self.torch, self.index = torch, 0 if index is None else index
        self.memory: dict[int, np.ndarray] = {}  # start address -> its bytes
        self.streams: dict[int, Stream] = {}
        self.capturing: tuple[Stream, list] | None = None
        self.fail_capture = False
        self.current = threading.local()
        self.log: list[tuple] = []  # ("alloc", nbytes), ("sync",), ("capture",), ("replay",)

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

    def view(self, address: int, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        for start, data in self.memory.items():
            if start <= address and address + nbytes <= start + data.nbytes:
                return data[address - start : address - start + nbytes].view(dtype).reshape(shape)
        raise IllegalAddress(f"{address:#x}: {nbytes} bytes nobody allocated")

    # the TorchCuda interface
    @contextlib.contextmanager
    def active(self):
        previous = getattr(self.current, "device", None)
        self.current.device = self.index
        try:
            yield
        finally:
            self.current.device = previous

    def stream(self):
        stream = Stream(len(self.streams) + 1)
        self.streams[stream.handle] = stream
        return stream, stream.handle

    def device(self, shape, dtype):
        array = self.alloc(shape, dtype)
        return array, array.ctypes.data

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def enqueue(self, stream: Stream, work: Callable[[], None]) -> None:
        if self.capturing is not None and self.capturing[0] is stream:
            self.capturing[1].append(work)
        else:
            stream.pending.append(work)

    def upload(self, device, host, stream):
        self.enqueue(stream, lambda: device[: len(host)].__setitem__(slice(None), host))

    def download(self, host, device, count, stream):
        self.enqueue(stream, lambda: host[:count].__setitem__(slice(None), device[:count]))

    def synchronize(self, stream: Stream) -> None:
        if self.capturing is not None and self.capturing[0] is stream:
            raise AssertionError("synchronize inside a capture: CUDA invalidates it")
        self.log.append(("sync",))
        stream.run()

    def address(self, tensor) -> int:
        return tensor.data_ptr()

    def wait_current(self, stream) -> None:
        pass  # CPU tensors are ready when made

    def padded(self, tensor, rows):
        out = self.torch.from_numpy(self.alloc((rows, *tensor.shape[1:]), tensor.numpy().dtype))
        out[: len(tensor)] = tensor
        return out

    def copy(self, tensor):
        return self.padded(tensor, len(tensor))

    def copy_rows(self, device, tensor, rows, stream):
        source = tensor.numpy()
        self.enqueue(
            stream,
            lambda: (
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
        return list(recorded) if launched and recorded else None

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
    rtx_graphs: bool = False,
    capturable: bool | None = None,
    refuse: tuple[str, ...] = (),
):
    """A TensorRT runtime (``world.trt``) and CUDA (``world.open_cuda``) whose engines take (N, 3, 2, 2) float32 inputs on a profile of
    ``low..high``; ``outputs``: name -> shape per image (default one (1,) "logits").
    ``rtx_graphs``: TensorRT-RTX with ``CudaGraphStrategy``; ``capturable``: an RTX context's
    answer to ``is_stream_capturable`` (None: the method is absent, as in TensorRT proper);
    ``refuse``: tensor names whose addresses ``set_tensor_address`` refuses."""
    outputs = outputs or {"logits": (1,)}
    names, image = ["input", *outputs], (3, 2, 2)
    world = types.SimpleNamespace(calls=[], events=[], contexts=[], cuda=None)

    def open_cuda(index=None):  # stands in for runtime.cuda.open_cuda
        world.cuda = Cuda(index)
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
            return 1024 * self.shape[0]

        def set_device_memory(self, address, size):
            world.cuda.view(address, (size,), np.uint8)  # must be memory it was given
            self.memory = (address, size)

        def execute_async_v3(self, handle):
            if self.shape is None or set(self.addresses) != set(names):
                return False
            if self.allocation == "user managed" and (self.memory is None or self.memory[1] < 1024 * self.shape[0]):
                return False
            if world.cuda.capturing is not None and world.cuda.fail_capture:
                return False
            world.events.append(("device", world.cuda.current.__dict__.get("device")))
            shape, addresses = self.shape, dict(self.addresses)

            def run():  # what the GPU does when the stream gets there
                if self.shape != shape:
                    raise AssertionError(
                        f"a launch recorded at batch {shape[0]} ran on a context now at "
                        f"batch {self.shape[0]}: TensorRT needs a new capture"
                    )
                count = shape[0]
                world.calls.append(count)
                x = world.cuda.view(addresses["input"], shape, np.float32)
                sums = x.reshape(count, -1).sum(1)
                for k, (name, per_image) in enumerate(outputs.items(), start=1):
                    out = world.cuda.view(addresses[name], (count, *per_image), np.dtype(output_dtype))
                    out[:] = (k * sums).reshape(-1, *[1] * len(per_image))

            world.cuda.enqueue(world.cuda.streams[handle], run)
            return True

    if capturable is not None:
        Context.is_stream_capturable = lambda self, handle: capturable

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
        Logger=logger,
        Runtime=Runtime,
        __version__="10.13.0",
        TensorIOMode=types.SimpleNamespace(INPUT="in"),
        nptype=nptype,
        ExecutionContextAllocationStrategy=strategies,
    )
    if rtx_graphs:
        module.CudaGraphStrategy, module.IRuntimeConfig = graph_strategies, RuntimeConfig
    world.trt = module
    return world
