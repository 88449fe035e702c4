"""Build a TensorRT (10/11) or TensorRT-RTX engine from an exported ONNX file.

Graphs exported by this toolkit carry their precision (float16 tensors, Q/DQ nodes), so
networks are created strongly typed: TensorRT 11 and TensorRT-RTX only know that mode, and
TensorRT 10 accepts it. TensorRT-RTX builds ahead-of-time on a machine without a GPU.
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..artifacts import write_bytes
from ..errors import FasterViTTRTError

log = logging.getLogger(__name__)

BACKENDS = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}


class EngineBuildError(FasterViTTRTError):
    """The ONNX file could not be parsed or built into an engine."""


@dataclass(frozen=True)
class BuildConfig:
    """Builder settings; the batch profile is (min, opt, max)."""

    batch: tuple[int, int, int] = (1, 8, 32)
    backend: str = "auto"  # "tensorrt", "tensorrt-rtx" or "auto" (TensorRT first)
    workspace_mib: int | None = None
    opt_level: int | None = None  # builder optimization level 0..5 (TensorRT default: 3)


def load_tensorrt(backend: str = "auto") -> tuple[str, ModuleType]:
    """Import the requested TensorRT flavour; (flavour name, module)."""
    names = list(BACKENDS) if backend == "auto" else [backend]
    if backend not in BACKENDS and backend != "auto":
        raise EngineBuildError(f"unknown backend {backend!r}; choose tensorrt or tensorrt-rtx")
    for name in names:
        for module in BACKENDS[name]:
            try:
                return name, importlib.import_module(module)
            except ImportError:
                continue
    raise EngineBuildError(
        "no TensorRT is installed; pip install 'fastervit-trt[tensorrt]' (TensorRT) or "
        "'fastervit-trt[tensorrt-rtx]' (TensorRT-RTX, builds without a GPU)")


class _Progress:
    """Adapter from TensorRT's IProgressMonitor to a log line per top-level phase."""

    @staticmethod
    def create(trt: ModuleType):
        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.phases: list[str] = []

            def phase_start(self, phase_name, parent_phase, num_steps):
                if parent_phase is None or parent_phase == "Building engine":
                    self.phases.append(phase_name)
                    log.info("builder: %s", phase_name)

            def step_complete(self, phase_name, step):
                return True

            def phase_finish(self, phase_name):
                pass

        return Monitor()


def parser_errors(parser) -> list[str]:
    """The ONNX parser's errors with the node they concern."""
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = f"node {err.node()} ({err.node_name()}, {err.node_operator()})" if err.node() >= 0 else "graph"
        errors.append(f"{where}: {err.desc()}")
    return errors


def build_engine(onnx_path: Path, engine_path: Path, config: BuildConfig = BuildConfig()) -> dict:
    """Parse ``onnx_path``, build with ``config`` and write ``engine_path`` atomically.

    Returns facts about the build (flavour, version, seconds, phases, size).
    """
    flavour, trt = load_tensorrt(config.backend)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not Path(onnx_path).is_file():
        raise EngineBuildError(f"{onnx_path}: no such ONNX file; export it first with fastervit-export")
    if not parser.parse_from_file(str(onnx_path)):
        details = "; ".join(parser_errors(parser)) or "unknown parser error"
        raise EngineBuildError(f"{onnx_path}: {flavour} cannot parse the graph: {details}")
    builder_config = builder.create_builder_config()
    if config.workspace_mib:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.opt_level is not None:
        builder_config.builder_optimization_level = config.opt_level
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(f"{onnx_path}: input {tensor.name} has dynamic non-batch "
                                   f"dimensions {dims}; only the batch axis may be dynamic")
        profile.set_shape(tensor.name, *[(b, *dims[1:]) for b in config.batch])
    builder_config.add_optimization_profile(profile)
    monitor = _Progress.create(trt)
    builder_config.progress_monitor = monitor
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: {flavour} failed to build an engine (see the "
                               "builder messages above)")
    write_bytes(Path(engine_path), bytes(serialized))
    return {"backend": flavour, "version": trt.__version__, "seconds": seconds,
            "phases": monitor.phases, "bytes": Path(engine_path).stat().st_size}
