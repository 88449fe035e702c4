"""TensorRT <= 10 implicit INT8: an IInt8EntropyCalibrator2 (or MinMax) subclass.

It feeds the same batches as the toolkit's own calibration (``CalibrationData``) and
reads/writes the same TensorRT calibration cache, so a cache made by
``fastervit-export --precision int8`` builds an implicit-INT8 engine without images, and
a cache TensorRT writes here is reused by the Q/DQ export. Only created when such a
TensorRT is importable; device memory comes from ``runtime.cuda`` (torch, else pycuda in
the primary context TensorRT uses).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..artifacts import write_bytes
from ..calibration.cache import CalibrationCache
from ..calibration.dataset import CalibrationData
from ..preprocess import Preprocess
from ..runtime.cuda import open_cuda
from .config import EngineBuildError

if TYPE_CHECKING:  # tensorrt-stubs: the calibrator is checked against TensorRT's API (mypy)
    import tensorrt as trt_api


class Calibration(NamedTuple):
    """A TensorRT calibrator, the errors its ``get_batch`` met (TensorRT prints and swallows
    them), and ``release``: its device buffer freed, then its stream destroyed (after the build)."""

    calibrator: trt_api.IInt8Calibrator
    failures: list[Exception]
    release: Callable[[], None]


def make_calibrator(
    trt: ModuleType,
    onnx_path: Path,
    dims: list[int],
    preprocess: dict | None,
    batch: int,
    calib_cache: Path | None,
    calib_data: Path | None,
) -> Calibration:
    """A TensorRT calibrator for the graph ``onnx_path`` (input ``dims``, the toolkit's
    ``preprocess`` record) matching the cache's (or entropy's) method, feeding ``calib_data``
    or reading ``calib_cache``.

    TensorRT calibrates at the OPT shape of the calibration profile (``get_batch_size`` is
    ignored since TensorRT 10), so ``batch`` is the profile's OPT batch: batches, device
    buffer and reported size all come from it. An error inside ``get_batch`` would be printed and swallowed by
    TensorRT: it is kept in ``failures`` and raised by the builder once the build returns.
    """
    cache_path = Path(calib_cache) if calib_cache else None
    method = CalibrationCache.read(cache_path).method if cache_path and cache_path.is_file() else "entropy"
    bases = {"entropy": trt.IInt8EntropyCalibrator2, "minmax": trt.IInt8MinMaxCalibrator}
    if method not in bases:
        raise EngineBuildError(
            f"{cache_path}: {method} scales have no TensorRT calibrator class; use "
            "the Q/DQ ONNX from fastervit-export --precision int8 instead"
        )
    data = None
    if calib_data is not None:
        if not preprocess:
            raise EngineBuildError(
                f"{onnx_path}: has no fastervit-trt metadata, so its preprocessing "
                "is unknown; calibrate with --calib-cache, or export with fastervit-export"
            )
        data = CalibrationData(calib_data, Preprocess.from_config(preprocess), max(256, batch))
    elif cache_path is None or not cache_path.is_file():
        raise EngineBuildError("implicit INT8 needs --calib-cache (an existing cache) or --calib-data")
    cuda = open_cuda()
    failures: list[Exception] = []
    if TYPE_CHECKING:  # TensorRT 10's base class for the type checker; the loaded module's at run time
        from tensorrt import IInt8Calibrator as Base
    else:
        Base = bases[method]

    class Calibrator(Base):
        def __init__(self) -> None:
            Base.__init__(self)
            self.batches = iter(data.batches(batch)) if data is not None else iter(())
            self.dtype = data.preprocess.input_dtype if data is not None else np.dtype(np.float32)
            with cuda.active():
                self.buffer, self.pointer = cuda.device((batch, *dims[1:]), self.dtype)
                self.stream, _ = cuda.stream()
                cuda.claim(self.stream)  # the buffer's block may still be in use on the caller's stream

        def get_batch_size(self) -> int:
            return batch

        # the stubs leave out the None that ends calibration
        def get_batch(self, names: list[str]) -> list[int] | None:  # type: ignore[override]
            try:
                inputs = next(self.batches, None)
                if inputs is None:
                    return None
                with cuda.active():
                    cuda.upload(self.buffer, np.ascontiguousarray(inputs, dtype=self.dtype), self.stream)
                    cuda.synchronize(self.stream)  # TensorRT reads the buffer once get_batch returns
                return [self.pointer]
            except Exception as exc:  # TensorRT would print it and report "calibration failed"
                failures.append(exc)
                return None

        def release(self) -> None:
            """The buffer (its free is ordered on the stream), then the stream itself."""
            with cuda.active():
                self.buffer = None
                cuda.release(self.stream, None)

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache: memoryview) -> None:
            if cache_path is not None:  # ``cache``: a memoryview of TensorRT's buffer, valid during the call
                write_bytes(cache_path, bytes(cache))

    calibrator = Calibrator()
    return Calibration(calibrator, failures, calibrator.release)
