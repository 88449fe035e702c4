"""TensorRT's timer for ``graph.timing``: each graph built into an engine (the builder, the
export's profile) and run through the runtime's TensorRT backend, so the speed line of a
quantized export compares engines where TensorRT and a GPU are present.

Timed as ``fastervit-bench`` runs an engine: a host batch in, the outputs back on the host
(copies included, the same for every graph), one execution context, after the warm-up run
that ``graph.timing`` makes; ``trtexec --loadEngine`` gives the GPU compute time alone.
"""

from __future__ import annotations

from pathlib import Path

from ..graph.timing import Runner, Timer
from ..runtime.backend import RuntimeOptions
from ..runtime.cuda import device_count
from ..runtime.tensorrt_backend import open_backend
from .builder import build_engine
from .config import BuildConfig


class TensorRTTimer:
    """Builds each timed ONNX graph into ``folder`` (a scratch folder) and runs it on GPU
    ``device`` (None: the default)."""

    kind = "tensorrt"

    def __init__(self, folder: Path, batch: tuple[int, int, int], device: int | None = None) -> None:
        self.folder, self.batch, self.device = Path(folder), batch, device
        self._runtime = "TensorRT"

    @property
    def runtime(self) -> str:
        return self._runtime

    def runner(self, path: Path) -> Runner:
        engine = self.folder / f"{Path(path).stem}.timed.engine"
        sidecar = build_engine(Path(path), engine, BuildConfig(batch=self.batch, force=True))
        trt = sidecar["tensorrt"]
        gpu = (sidecar.get("device") or {}).get("gpu") or "GPU"
        self._runtime = f"{trt['flavour']} {trt['version']} on {gpu}"
        backend = open_backend(engine, RuntimeOptions(contexts=1, device=self.device))
        return backend.infer


def engine_timer(folder: Path, batch: tuple[int, int, int], device: int | None = None) -> Timer | None:
    """A ``TensorRTTimer`` where TensorRT (or TensorRT-RTX) and a CUDA GPU are present, else None
    (the export then times on ONNX Runtime's CPU provider)."""
    from ..tensorrt_import import import_tensorrt

    if import_tensorrt() is None or not device_count():
        return None
    return TensorRTTimer(folder, batch, device)
