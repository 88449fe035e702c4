"""TensorRT engine backend: the only module that touches CUDA.

Per execution context: one CUDA stream, device buffers for the profile's largest batch and
pinned host buffers, allocated once and reused; ``execute_async_v3``. A bounded pool of
contexts serves concurrent callers. Device memory comes from torch when installed (CUDA
torch tensors are then read in place, no copy), else from pycuda; this module imports
neither until an engine is loaded.
"""
from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from ..errors import FasterViTTRTError

_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32}


def import_tensorrt(flavour: str | None = None):
    """The TensorRT module that runs engines of ``flavour`` (any installed if None)."""
    names = {"tensorrt": ["tensorrt"], "tensorrt-rtx": ["tensorrt_rtx", "tensorrt_rtx_bindings"]}
    candidates = names.get(flavour) if flavour else names["tensorrt"] + names["tensorrt-rtx"]
    for module in candidates:
        try:
            return __import__(module)
        except ImportError:
            continue
    return None


class _TorchCuda:
    def __init__(self) -> None:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        self.torch = torch

    def stream(self):
        stream = self.torch.cuda.Stream()
        return stream, stream.cuda_stream

    def device(self, shape, dtype):
        buffer = self.torch.empty(shape, dtype=getattr(self.torch, np.dtype(dtype).name), device="cuda")
        return buffer, buffer.data_ptr()

    def pinned(self, shape, dtype):
        return self.torch.empty(shape, dtype=getattr(self.torch, np.dtype(dtype).name), pin_memory=True).numpy()

    def upload(self, device, host, stream):
        with self.torch.cuda.stream(stream):
            device[: len(host)].copy_(self.torch.from_numpy(host), non_blocking=True)

    def download(self, host, device, count, stream):
        with self.torch.cuda.stream(stream):
            self.torch.from_numpy(host[:count]).copy_(device[:count], non_blocking=True)
        stream.synchronize()


class _PyCuda:
    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda
        self.cuda = cuda

    def stream(self):
        stream = self.cuda.Stream()
        return stream, stream.handle

    def device(self, shape, dtype):
        buffer = self.cuda.mem_alloc(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return buffer, int(buffer)

    def pinned(self, shape, dtype):
        return self.cuda.pagelocked_empty(shape, dtype)

    def upload(self, device, host, stream):
        self.cuda.memcpy_htod_async(device, host, stream)

    def download(self, host, device, count, stream):
        self.cuda.memcpy_dtoh_async(host, device, stream)
        stream.synchronize()


def _cuda():
    """CUDA memory from torch when it sees a GPU, else from pycuda."""
    try:
        import torch
        if torch.cuda.is_available():
            return _TorchCuda()
    except ImportError:
        pass
    try:
        return _PyCuda()
    except Exception:  # ImportError, or pycuda finding no device / driver
        raise FasterViTTRTError(
            "no CUDA GPU is visible (torch sees none, pycuda is missing or found none): running a "
            "TensorRT engine needs an NVIDIA GPU; on this machine load the .onnx with ONNX Runtime "
            "instead") from None


class TensorRTBackend:
    """A deserialized engine with a pool of ``contexts`` execution contexts."""

    def __init__(self, path: Path, flavour: str | None = None, contexts: int = 2) -> None:
        trt = import_tensorrt(flavour)
        if trt is None:
            raise FasterViTTRTError(f"{path}: no {flavour or 'TensorRT'} Python package to run the "
                                    "engine; pip install 'fastervit-trt[tensorrt]', or load the .onnx "
                                    "with ONNX Runtime instead")
        self.cuda = _cuda()
        logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise FasterViTTRTError(f"{path}: TensorRT {trt.__version__} cannot deserialize the engine "
                                    "(corrupt, truncated, or built by another TensorRT version or for "
                                    "another GPU); rebuild it with fastervit-build")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _NP[self.engine.get_tensor_dtype(self.input_name).name]
        self.output_dtype = _NP[self.engine.get_tensor_dtype(self.output_name).name]
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch, self.input_shape = max_shape[0], tuple(max_shape[1:])
        self.num_classes = self.engine.get_tensor_shape(self.output_name)[-1]
        self.pool: queue.Queue = queue.Queue()
        for _ in range(contexts):
            self.pool.put(self._context())

    def _context(self) -> dict:
        context = self.engine.create_execution_context()
        stream, handle = self.cuda.stream()
        in_shape, out_shape = (self.max_batch, *self.input_shape), (self.max_batch, self.num_classes)
        device_in, in_ptr = self.cuda.device(in_shape, self.input_dtype)
        device_out, out_ptr = self.cuda.device(out_shape, self.output_dtype)
        return {"context": context, "stream": stream, "handle": handle, "device_in": device_in,
                "in_ptr": in_ptr, "device_out": device_out, "out_ptr": out_ptr,
                "host_in": self.cuda.pinned(in_shape, self.input_dtype),
                "host_out": self.cuda.pinned(out_shape, self.output_dtype)}

    def infer(self, batch) -> np.ndarray:
        count = len(batch)
        slot = self.pool.get()
        try:
            context = slot["context"]
            context.set_input_shape(self.input_name, (count, *self.input_shape))
            if isinstance(batch, np.ndarray):
                host = slot["host_in"][:count]
                host[...] = batch
                self.cuda.upload(slot["device_in"], host, slot["stream"])
                context.set_tensor_address(self.input_name, slot["in_ptr"])
            else:  # a CUDA torch tensor: read in place
                batch = batch.to(dtype=getattr(self.cuda.torch, np.dtype(self.input_dtype).name)).contiguous()
                slot["stream"].wait_stream(self.cuda.torch.cuda.current_stream())
                context.set_tensor_address(self.input_name, batch.data_ptr())
            context.set_tensor_address(self.output_name, slot["out_ptr"])
            if not context.execute_async_v3(slot["handle"]):
                raise FasterViTTRTError("TensorRT failed to run the engine (see its log)")
            self.cuda.download(slot["host_out"], slot["device_out"], count, slot["stream"])
            return slot["host_out"][:count].astype(np.float32)
        finally:
            self.pool.put(slot)

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get()
        self.engine = None
