"""TensorRT engine backend.

Per execution context: one CUDA stream, device buffers for the profile's largest batch and
pinned host buffers, allocated once and reused; ``execute_async_v3``. A bounded pool of
contexts serves concurrent callers. Device memory comes from ``runtime.cuda`` (torch when
it sees a GPU, CUDA torch tensors then read in place; else pycuda); nothing is imported
until an engine is loaded.
"""
from __future__ import annotations

import queue
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FasterViTTRTError
from .cuda import TorchCuda, open_cuda

if TYPE_CHECKING:  # tensorrt-stubs: the objects below are checked against TensorRT's API (mypy)
    import tensorrt as trt_api

# flavour -> the module names its Python bindings install under, in order of preference
TENSORRT_MODULES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}


def import_tensorrt(flavour: str | None = None):
    """The TensorRT module of ``flavour`` (any installed if None), or None; a stubs-only
    ``tensorrt`` package (tensorrt-stubs) does not count."""
    candidates = TENSORRT_MODULES.get(flavour, ()) if flavour else sum(TENSORRT_MODULES.values(), ())
    for module in candidates:
        try:
            loaded = __import__(module)
        except ImportError:
            continue
        if hasattr(loaded, "__version__"):  # not a stubs-only namespace package
            return loaded
    return None


def numpy_dtype(trt: ModuleType, dtype: Any, what: str) -> np.dtype:
    """The NumPy dtype of a TensorRT I/O tensor (``trt.nptype``); BF16/FP8/FP4 have none."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise FasterViTTRTError(f"{what}: TensorRT type {dtype} has no NumPy equivalent; export the "
                                "model with float32 or float16 input and output") from None


def batch_plan(count: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """How ``count`` inputs run on a profile of batch ``low..high``: (start, stop, run_as) per
    engine call, at most ``high`` each; a last part smaller than ``low`` is padded up to it."""
    return [(start, min(start + high, count), max(min(high, count - start), low))
            for start in range(0, count, high)]


def join_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of consecutive slices of one batch (as ``batch_plan`` cuts it), joined per output."""
    return {name: np.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name]
            for name in parts[0]}


class TensorRTBackend:
    """A deserialized engine with a pool of ``contexts`` execution contexts."""

    def __init__(self, path: Path, flavour: str | None = None, contexts: int = 2,
                 version_compat: bool = False, cuda_graphs: bool = False) -> None:
        trt = import_tensorrt(flavour)
        if trt is None:
            raise FasterViTTRTError(f"{path}: no {flavour or 'TensorRT'} Python package to run the "
                                    "engine; pip install 'fastervit-trt[tensorrt]', or load the .onnx "
                                    "with ONNX Runtime instead")
        self.cuda = open_cuda()
        if cuda_graphs and not isinstance(self.cuda, TorchCuda):
            raise FasterViTTRTError(f"{path}: CUDA graphs need PyTorch with CUDA (pycuda cannot capture "
                                    "TensorRT's launches); install torch or drop --cuda-graph")
        self.cuda_graphs = cuda_graphs
        logger = trt.Logger(trt.Logger.ERROR)
        self.runtime: trt_api.Runtime = trt.Runtime(logger)
        if version_compat:  # such engines carry their own lean runtime: let it load (as Polygraphy does)
            self.runtime.engine_host_code_allowed = True
        with self.cuda.active():
            engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise FasterViTTRTError(f"{path}: TensorRT {trt.__version__} cannot deserialize the engine "
                                    "(corrupt, truncated, or built by another TensorRT version or for "
                                    "another GPU); rebuild it with fastervit-build")
        self.engine: trt_api.ICudaEngine | None = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name, self.output_names = inputs[0], [n for n in names if n not in inputs]
        self.input_dtype = numpy_dtype(trt, engine.get_tensor_dtype(self.input_name), str(path))
        self.output_dtypes = {n: numpy_dtype(trt, engine.get_tensor_dtype(n), str(path)) for n in self.output_names}
        for name, dtype in self.output_dtypes.items():
            if dtype.kind != "f":  # e.g. an ArgMax label: not scores or features
                raise FasterViTTRTError(f"{path}: output {name!r} is {dtype}, not float; the runtime "
                                        "serves classifiers (logits) and backbones (feature maps)")
        min_shape, _, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self.input_shape = tuple(max_shape[1:])
        self.output_shapes = {n: tuple(engine.get_tensor_shape(n))[1:] for n in self.output_names}
        self.path, self.closed = Path(path), False
        self.pool: queue.Queue = queue.Queue()
        with self.cuda.active():
            for _ in range(contexts):
                self.pool.put(self._context(engine))

    def _context(self, engine: trt_api.ICudaEngine) -> dict:
        context = engine.create_execution_context()
        stream, handle = self.cuda.stream()
        in_shape = (self.max_batch, *self.input_shape)
        device_in, in_ptr = self.cuda.device(in_shape, self.input_dtype)
        outputs = {}  # name -> (device buffer, its address, pinned host buffer)
        for name in self.output_names:
            shape, dtype = (self.max_batch, *self.output_shapes[name]), self.output_dtypes[name]
            outputs[name] = (*self.cuda.device(shape, dtype), self.cuda.pinned(shape, dtype))
        return {"context": context, "stream": stream, "handle": handle, "device_in": device_in,
                "in_ptr": in_ptr, "outputs": outputs, "host_in": self.cuda.pinned(in_shape, self.input_dtype),
                "graphs": {}}

    def infer(self, batch) -> np.ndarray:
        """The first output (a classifier's logits, (N, classes)) of ``infer_all``."""
        return self.infer_all(batch)[self.output_names[0]]

    def infer_all(self, batch) -> dict[str, np.ndarray]:
        """Every output, float32, for a NumPy batch or a CUDA torch tensor of any N: split at
        the profile's MAX, a remainder below its MIN padded up (and the padding dropped)."""
        if not isinstance(batch, np.ndarray):
            batch = self._check_tensor(batch)
        return join_parts([self._run(batch[start:stop], run_as)
                           for start, stop, run_as in batch_plan(len(batch), self.min_batch, self.max_batch)])

    def _check_tensor(self, tensor):
        """A CUDA torch tensor on this engine's device, as the engine's input dtype (floats for
        a float engine: an integer tensor is raw pixels, not preprocessed input; uint8 images
        for a ``--input uint8`` engine)."""
        torch = self.cuda.torch if isinstance(self.cuda, TorchCuda) else None
        if torch is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != "cuda":
            raise FasterViTTRTError(f"{self.path}: inputs must be a NumPy array or a CUDA torch tensor")
        if self.input_dtype == np.uint8 and tensor.dtype != torch.uint8:
            raise FasterViTTRTError(f"{self.path}: the engine takes uint8 (N, H, W, 3) images, not a "
                                    f"{tensor.dtype} tensor (it normalises them itself)")
        if self.input_dtype != np.uint8 and not tensor.is_floating_point():
            raise FasterViTTRTError(f"{self.path}: a {tensor.dtype} CUDA tensor is raw data; pass "
                                    "preprocessed float inputs (runtime.Preprocess)")
        if tensor.device.index not in (None, torch.cuda.current_device()):
            raise FasterViTTRTError(f"{self.path}: the tensor is on {tensor.device}, the engine on "
                                    f"cuda:{torch.cuda.current_device()}")
        return tensor.to(dtype=getattr(torch, self.input_dtype.name)).contiguous()

    def _acquire(self) -> dict:
        while True:
            if self.closed:
                raise FasterViTTRTError(f"{self.path}: the model is closed; load it again")
            try:
                return self.pool.get(timeout=0.1)
            except queue.Empty:
                continue

    def _run(self, batch, run_as: int) -> dict[str, np.ndarray]:
        slot = self._acquire()
        try:
            with self.cuda.active():
                return self._execute(slot, batch, run_as)
        finally:
            if not self.closed:
                self.pool.put(slot)

    def _execute(self, slot: dict, batch, run_as: int) -> dict[str, np.ndarray]:
        count = len(batch)
        context: trt_api.IExecutionContext = slot["context"]
        if not context.set_input_shape(self.input_name, (run_as, *self.input_shape)):
            raise FasterViTTRTError(f"{self.path}: TensorRT refused batch {run_as} (the engine's profile "
                                    f"takes {self.min_batch} to {self.max_batch})")
        if isinstance(batch, np.ndarray):
            host = slot["host_in"][:run_as]
            host[:count] = batch
            host[count:] = 0
            self.cuda.upload(slot["device_in"], host, slot["stream"])
            context.set_tensor_address(self.input_name, slot["in_ptr"])
        else:  # a CUDA torch tensor: read in place (padded on the GPU when below the profile's MIN)
            assert isinstance(self.cuda, TorchCuda)  # _check_tensor admitted it
            torch = self.cuda.torch
            if run_as > count:
                batch = torch.cat([batch, batch.new_zeros((run_as - count, *batch.shape[1:]))])
            slot["stream"].wait_stream(torch.cuda.current_stream())
            if self.cuda_graphs:  # a captured graph reads its own buffer: copy in, on the GPU
                with torch.cuda.stream(slot["stream"]):
                    slot["device_in"][:run_as].copy_(batch, non_blocking=True)
                context.set_tensor_address(self.input_name, slot["in_ptr"])
            else:
                context.set_tensor_address(self.input_name, batch.data_ptr())
        for name, (_, pointer, _) in slot["outputs"].items():
            context.set_tensor_address(name, pointer)
        if self.cuda_graphs:
            self._replay(context, slot, run_as)
        else:
            self._enqueue(context, slot)
        results = {}
        for name, (device, _, host) in slot["outputs"].items():
            self.cuda.download(host, device, count, slot["stream"])
            results[name] = host[:count].astype(np.float32)  # a copy: the slot's buffer is reused
        return results

    def _enqueue(self, context: trt_api.IExecutionContext, slot: dict) -> None:
        if not context.execute_async_v3(slot["handle"]):
            raise FasterViTTRTError(f"{self.path}: TensorRT failed to run the engine (see its log)")

    def _replay(self, context: trt_api.IExecutionContext, slot: dict, run_as: int) -> None:
        """Launch the CUDA graph of this context at batch ``run_as``, captured on first use
        after one ordinary run (TensorRT defers some work to its first enqueue), as
        ``trtexec --useCudaGraph`` does."""
        assert isinstance(self.cuda, TorchCuda)
        torch, stream = self.cuda.torch, slot["stream"]
        graph = slot["graphs"].get(run_as)
        if graph is None:
            self._enqueue(context, slot)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):  # other slots keep running
                context.execute_async_v3(slot["handle"])
            slot["graphs"][run_as] = graph
        with torch.cuda.stream(stream):
            graph.replay()

    def close(self) -> None:
        """Release the contexts; calls in flight finish, later ones get a clear error."""
        self.closed = True
        while not self.pool.empty():
            self.pool.get()
        self.engine = None
