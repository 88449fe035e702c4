"""TensorRT's timer for ``graph.timing``: each graph built into an engine (the builder, the
export's profile) and run through the runtime's TensorRT backend, so the speed line of a
quantized export compares engines where TensorRT and a GPU are present.

Timed as a service runs an engine: the input already on the GPU (uploaded once per batch
size, as a CUDA tensor that ``infer`` reads in place), the outputs back on the host, one
execution context, after the warm-up run that ``graph.timing`` makes; ``trtexec
--loadEngine`` gives the GPU compute time alone. Use it as a context manager: ``close``
releases every engine it opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..graph.timing import Runner
from ..quant_formats import QUANT_FORMATS
from ..runtime.backend import RuntimeOptions
from ..runtime.cuda import device_count
from ..runtime.tensorrt_backend import TensorRTBackend, open_backend
from ..tensorrt_import import import_tensorrt
from .builder import build_engine
from .config import BuildConfig

RTX_CAPABILITIES = ((8, 0), (8, 6), (8, 9))  # TensorRT-RTX runs on these and on 12.x (not Hopper's 9.0)


class TensorRTTimer:
    """Builds each timed ONNX graph into ``folder`` (a scratch folder) and runs it on the
    current GPU; one engine per file, built once."""

    kind = "tensorrt"

    def __init__(self, folder: Path, batch: tuple[int, int, int], runtime: str) -> None:
        self.folder, self.batch, self.runtime = Path(folder), batch, runtime
        self._backends: dict[tuple[str, int, int], TensorRTBackend] = {}

    def runner(self, path: Path) -> Runner:
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in self._backends:
            engine = self.folder / f"{Path(path).stem}.timed.engine"
            build_engine(Path(path), engine, BuildConfig(batch=self.batch, force=True))
            self._backends[key] = open_backend(engine, RuntimeOptions(contexts=1))
            engine.unlink()  # deserialized: TensorRT keeps no file
            engine.with_suffix(".json").unlink(missing_ok=True)
        backend = self._backends[key]
        on_gpu: dict[tuple[int, ...], Any] = {}

        def run(batch):
            if batch.shape not in on_gpu:  # uploaded once: the copy is the same for every graph
                import torch

                on_gpu[batch.shape] = torch.from_numpy(batch).cuda()
            return backend.infer(on_gpu[batch.shape])

        return run

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def __enter__(self) -> TensorRTTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_timer(folder: Path, batch: tuple[int, int, int], precision: str) -> TensorRTTimer | None:
    """A ``TensorRTTimer`` where TensorRT (or TensorRT-RTX) can build and run ``precision``
    engines on the CUDA GPU this process sees; None otherwise (no GPU, TensorRT-RTX on a GPU it
    does not run on, FP8 below compute capability 8.9): the export then times on ONNX Runtime's
    CPU provider, or, for a TensorRT graph, says why it did not time on TensorRT."""
    trt = import_tensorrt()
    if trt is None or not device_count():
        return None
    import torch

    capability = torch.cuda.get_device_capability()
    rtx = trt.__name__.startswith("tensorrt_rtx")
    if rtx and capability not in RTX_CAPABILITIES and capability[0] != 12:
        return None
    needed = QUANT_FORMATS[precision].min_compute_capability if precision in QUANT_FORMATS else None
    if needed is not None and capability < needed:
        return None
    flavour = "TensorRT-RTX" if rtx else "TensorRT"
    return TensorRTTimer(folder, batch, f"{flavour} {trt.__version__} on {torch.cuda.get_device_name()}")
