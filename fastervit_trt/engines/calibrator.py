"""TensorRT <= 10 implicit INT8: an IInt8EntropyCalibrator2 (or MinMax) subclass.

It feeds the same batches as the toolkit's own calibration (``CalibrationData``) and
reads/writes the same TensorRT calibration cache, so a cache made by
``fastervit-export --precision int8`` builds an implicit-INT8 engine without images, and
a cache TensorRT writes here is reused by the Q/DQ export. Only created when such a
TensorRT is importable; device memory comes from torch when installed, else pycuda.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from ..artifacts import write_bytes
from ..calibration.cache import CalibrationCache
from ..calibration.dataset import CalibrationData
from ..preprocess import Preprocess
from .builder import BuildConfig, EngineBuildError


def _device_buffer(nbytes: int):
    """(pointer, upload function) for a device buffer of ``nbytes``."""
    try:
        import torch
        buffer = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        return buffer.data_ptr(), lambda array: buffer.copy_(torch.from_numpy(array.view(np.uint8).reshape(-1))), buffer
    except (ImportError, RuntimeError, AssertionError):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as cuda
        buffer = cuda.mem_alloc(nbytes)
        return int(buffer), lambda array: cuda.memcpy_htod(buffer, np.ascontiguousarray(array)), buffer


def make_calibrator(trt: ModuleType, facts: dict, config: BuildConfig):
    """A TensorRT calibrator matching the cache's (or entropy's) method."""
    cache_path = Path(config.calib_cache) if config.calib_cache else None
    method = CalibrationCache.read(cache_path).method if cache_path and cache_path.is_file() else "entropy"
    bases = {"entropy": trt.IInt8EntropyCalibrator2, "minmax": trt.IInt8MinMaxCalibrator}
    if method not in bases:
        raise EngineBuildError(f"{cache_path}: {method} scales have no TensorRT calibrator class; use "
                               "the Q/DQ ONNX from fastervit-export --precision int8 instead")
    data = None
    if config.calib_data is not None:
        preprocess = Preprocess.from_config(facts["metadata"]["preprocess"])
        data = CalibrationData(config.calib_data, preprocess, 256)
    elif cache_path is None or not cache_path.is_file():
        raise EngineBuildError("implicit INT8 needs --calib-cache (an existing cache) or --calib-data")

    class Calibrator(bases[method]):
        def __init__(self) -> None:
            bases[method].__init__(self)
            self.batches = iter(data.batches(config.calib_batch)) if data is not None else iter(())
            shape = (config.calib_batch, *facts["dims"][1:])
            self.pointer, self.upload, self._keep = _device_buffer(int(np.prod(shape)) * 4)

        def get_batch_size(self) -> int:
            return config.calib_batch

        def get_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.upload(np.ascontiguousarray(batch, dtype=np.float32))
            return [self.pointer]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            if cache_path is not None:
                write_bytes(cache_path, bytes(cache))

    return Calibrator()
