"""Build a TensorRT (10/11) or TensorRT-RTX engine from an exported ONNX file, plus its sidecar.

Precision: graphs exported by this toolkit carry their precision (float16 tensors, Q/DQ
nodes), so networks are strongly typed: TensorRT 11 and TensorRT-RTX know only that mode,
TensorRT 10 accepts it. TensorRT 10 can also build an FP32 graph as FP16 or INT8 the old
way (``precision="fp16"|"int8"``: builder flags, and for INT8 a calibrator fed by
``calib_data`` or reading ``calib_cache``); on TensorRT 11 / RTX that is refused with the
export command that puts the precision into the ONNX instead.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

from ..artifacts import check_writable, write_bytes, write_json
from ..quant_formats import QUANT_FORMATS
from ..sidecar import (
    engine_sidecar,
    export_command,
    read_metadata,
    read_sidecar,
    sidecar_path,
)
from .calibrator import Calibration, make_calibrator
from .config import (
    RTX_TARGETS,
    BuildConfig,
    EngineBuildError,
    load_tensorrt,
)

if TYPE_CHECKING:  # tensorrt-stubs: the objects below are checked against TensorRT's API (mypy)
    import tensorrt as trt_api

log = logging.getLogger(__name__)


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def build_targets(onnx_path: Path, flavour: str, precision: str, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The compute capabilities an engine is built for: TensorRT-RTX's ``wanted`` targets (an
    FP8 graph defaults to every FP8-capable one); TensorRT proper builds for its own GPU. An
    FP8 engine for a GPU below 8.9 is refused before any work."""
    if wanted and flavour != "tensorrt-rtx":
        raise EngineBuildError(
            f"--compute-capability chooses TensorRT-RTX targets; {flavour} builds for "
            "the GPU it runs on (build on that GPU, or use --backend tensorrt-rtx)"
        )
    unknown = [c for c in wanted if c not in RTX_TARGETS]
    if unknown:
        raise EngineBuildError(
            f"compute capability {unknown[0]} is not a TensorRT-RTX target; choose from {', '.join(RTX_TARGETS)}"
        )
    quant = QUANT_FORMATS.get(precision)
    if quant is None or quant.min_compute_capability is None:
        return wanted
    lowest = quant.min_compute_capability
    here = _device(flavour).get("compute_capability")
    targets = wanted or (
        tuple(c for c in RTX_TARGETS if _capability(c) >= lowest)
        if flavour == "tensorrt-rtx"
        else ((here,) if here else ())
    )
    too_old = [c for c in targets if _capability(c) < lowest]
    if too_old:
        raise EngineBuildError(
            f"{onnx_path}: {quant.label} needs compute capability {lowest[0]}.{lowest[1]} or newer "
            f"({quant.capable_gpus}); {', '.join(too_old)} cannot run it: build for those GPUs from "
            "an fp16 or int8 export"
        )
    return targets


def _major(trt: ModuleType) -> int:
    return int(trt.__version__.split(".")[0])


@dataclass
class _Progress:
    """The top-level build phases seen so far; setting ``interrupted`` cancels the build."""

    phases: list[str] = field(default_factory=list)
    interrupted: bool = False


def _progress_monitor(trt: ModuleType, progress: _Progress, stream: TextIO | None) -> trt_api.IProgressMonitor:
    """TensorRT's IProgressMonitor recording (and printing) each top-level build phase into
    ``progress``, and cancelling the build at the next step once it is interrupted."""
    if TYPE_CHECKING:  # TensorRT 10's base class for the type checker; the loaded module's at run time
        from tensorrt import IProgressMonitor as Base
    else:
        Base = trt.IProgressMonitor

    class Monitor(Base):
        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None or parent_phase == "Building engine":
                progress.phases.append(phase_name)
                if stream is not None:
                    stream.write(f"  builder: {phase_name}\n")
                    stream.flush()

        def step_complete(self, phase_name: str, step: int) -> bool:
            return not progress.interrupted  # False cancels the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


@contextmanager
def _cancel_on_interrupt(progress: _Progress) -> Iterator[None]:
    """Ctrl-C during the build cancels it through the progress monitor (TensorRT would
    swallow the KeyboardInterrupt raised in its callback and report a failed build)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        progress.interrupted = True

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def parser_errors(parser: trt_api.OnnxParser) -> list[str]:
    """The ONNX parser's errors with the node they concern."""
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = f"node {err.node()} ({err.node_name()}, {err.node_operator()})" if err.node() >= 0 else "graph"
        errors.append(f"{where}: {err.desc()}")
    return errors


def onnx_facts(onnx_path: Path) -> dict:
    """Input shape, graph precision and toolkit metadata of an ONNX file (weights not loaded)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as exc:
        raise EngineBuildError(
            f"{onnx_path}: not a readable ONNX file ({type(exc).__name__}); export one with fastervit-export"
        ) from None
    if len(model.graph.input) != 1 or not model.graph.input[0].type.tensor_type.shape.dim:
        raise EngineBuildError(
            f"{onnx_path}: the toolkit builds graphs with one image input of a known "
            f"rank (N, C, H, W); this one has {len(model.graph.input)} inputs"
        )
    metadata = read_metadata(model)
    tensor = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.type.tensor_type.shape.dim]
    has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    has_half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    precision = metadata.get("precision") or ("int8" if has_qdq else "fp16" if has_half else "fp32")
    return {"path": Path(onnx_path), "input": tensor.name, "dims": dims, "precision": precision, "metadata": metadata}


def _check_profile(onnx_path: Path, dims: list[int], batch: tuple[int, int, int]) -> None:
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise EngineBuildError(f"batch profile must satisfy 1 <= MIN <= OPT <= MAX, got {low},{opt},{high}")
    if any(d < 0 for d in dims[1:]):
        raise EngineBuildError(
            f"{onnx_path}: input has dynamic non-batch dimensions {dims}; only "
            "the batch axis may be dynamic (re-export with fastervit-export)"
        )
    if dims[0] > 0 and (low, opt, high) != (dims[0],) * 3:
        raise EngineBuildError(
            f"{onnx_path}: the ONNX batch is fixed at {dims[0]}, so --batch must "
            f"be {dims[0]},{dims[0]},{dims[0]} (or re-export with a dynamic batch)"
        )


def check_engine_path(engine_path: Path, onnx_path: Path) -> None:
    """Refuse an output that is not an engine file name (its sidecar would overwrite it, or
    it is a folder)."""
    if engine_path.is_dir() or engine_path.suffix not in (".engine", ".plan"):
        example = (
            engine_path / onnx_path.with_suffix(".engine").name
            if engine_path.is_dir()
            else engine_path.with_suffix(".engine")
        )
        raise EngineBuildError(
            f"{engine_path}: the engine path must be a file ending in .engine or .plan "
            f"(its sidecar goes beside it as <name>.json); e.g. --output {example}"
        )


@dataclass(frozen=True)
class _Plan:
    """What the checks before any TensorRT work decided."""

    onnx_path: Path
    engine_path: Path
    facts: dict
    flavour: str
    trt: ModuleType
    precision: str
    implicit: bool  # precision from builder flags (TensorRT 10 on an FP32 graph), not from the ONNX
    targets: tuple[str, ...]


@dataclass
class _Parsed:
    """The network and the objects that own its weights (the parser must outlive the build)."""

    builder: trt_api.Builder
    network: trt_api.INetworkDefinition
    parser: trt_api.OnnxParser


@dataclass
class _Configured:
    builder_config: trt_api.IBuilderConfig
    monitor: trt_api.IProgressMonitor  # kept alive for the build
    progress: _Progress
    calibration: Calibration | None = None
    timing_cache: bool = False  # a timing cache is attached and saved after the build


def build_engine(
    onnx_path: Path, engine_path: Path, config: BuildConfig = BuildConfig(), stream: TextIO | None = None
) -> dict:
    """Parse ``onnx_path``, build with ``config``, write ``engine_path`` and its sidecar atomically.

    Returns the sidecar's content.
    """
    plan = _plan(Path(onnx_path), Path(engine_path), config)
    parsed = _parse(plan)
    configured = _configure(plan, parsed, config, stream)
    serialized, seconds = _build(plan, parsed, configured)
    return _write(plan, parsed, configured, config, serialized, seconds)


def _plan(onnx_path: Path, engine_path: Path, config: BuildConfig) -> _Plan:
    """Every check that needs no TensorRT work: paths, outputs, profile, flavour, precision, targets."""
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: no such ONNX file; export it first with fastervit-export")
    check_engine_path(engine_path, onnx_path)
    check_writable([engine_path, sidecar_path(engine_path)], config.force)
    facts = onnx_facts(onnx_path)
    _check_profile(onnx_path, facts["dims"], config.batch)
    flavour, trt = load_tensorrt(config.backend)
    weak_typing = flavour == "tensorrt" and _major(trt) <= 10
    precision = config.precision or facts["precision"]
    implicit = precision != facts["precision"]
    if implicit and not (weak_typing and facts["precision"] == "fp32"):
        raise EngineBuildError(
            f"{onnx_path}: the graph is {facts['precision']}; {flavour} {trt.__version__} takes precision "
            f"from the ONNX, so export it as {precision} instead: "
            f"{export_command(facts['metadata'], precision, output_dir=onnx_path.parent)}"
        )
    targets = build_targets(onnx_path, flavour, precision, config.compute_capabilities)
    return _Plan(onnx_path, engine_path, facts, flavour, trt, precision, implicit, targets)


def _parse(plan: _Plan) -> _Parsed:
    """The ONNX file as a (strongly typed, unless ``implicit``) TensorRT network."""
    trt = plan.trt
    logger = trt.Logger(trt.Logger.ERROR)
    builder: trt_api.Builder = trt.Builder(logger)
    flags = 0
    if not plan.implicit and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser: trt_api.OnnxParser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        details = "; ".join(parser_errors(parser)) or "unknown parser error"
        raise EngineBuildError(f"{plan.onnx_path}: {plan.flavour} cannot parse the graph: {details}")
    return _Parsed(builder, network, parser)


def _configure(plan: _Plan, parsed: _Parsed, config: BuildConfig, stream: TextIO | None) -> _Configured:
    """The builder config: memory, level, compatibility, targets, implicit precision, profile,
    timing cache and progress monitor."""
    trt = plan.trt
    builder_config = parsed.builder.create_builder_config()
    if config.workspace_mib:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.opt_level is not None:
        builder_config.builder_optimization_level = config.opt_level
    if config.hardware_compat:
        builder_config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if config.version_compat:
        builder_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if plan.flavour == "tensorrt-rtx" and plan.targets:
        set_targets(trt, builder_config, plan.targets)
    calibration = None
    if plan.implicit:
        builder_config.set_flag(trt.BuilderFlag.FP16)
        quant = QUANT_FORMATS.get(plan.precision)
        if quant is not None and quant.trt_implicit_flag:
            builder_config.set_flag(getattr(trt.BuilderFlag, quant.trt_implicit_flag))
            calibration = make_calibrator(
                trt,
                plan.onnx_path,
                plan.facts["dims"],
                plan.facts["metadata"].get("preprocess"),
                config.batch[1],
                config.calib_cache,
                config.calib_data,
            )
            builder_config.int8_calibrator = calibration.calibrator
    profile = parsed.builder.create_optimization_profile()
    dims = plan.facts["dims"]
    profile.set_shape(plan.facts["input"], *[trt.Dims((b, *dims[1:])) for b in config.batch])
    builder_config.add_optimization_profile(profile)
    if calibration is not None:
        builder_config.set_calibration_profile(profile)
    timing_cache = _load_timing_cache(trt, plan.flavour, builder_config, config.timing_cache, stream)
    progress = _Progress()
    monitor = _progress_monitor(trt, progress, stream)
    builder_config.progress_monitor = monitor
    return _Configured(builder_config, monitor, progress, calibration, timing_cache)


def _offered_targets(trt: ModuleType) -> list[str]:
    """The compute capabilities the installed TensorRT-RTX bindings build for ("SM89" -> "8.9")."""
    names = [name for name in trt.ComputeCapability.__members__ if name.startswith("SM")]
    return [f"{name[2:-1]}.{name[-1]}" for name in names]


def set_targets(trt: ModuleType, builder_config: trt_api.IBuilderConfig, targets: tuple[str, ...]) -> None:
    """Make TensorRT-RTX build for ``targets`` (compute capabilities, "8.9"), checking each answer."""
    version = f"TensorRT-RTX {trt.__version__}"
    members = []
    for target in targets:
        member = getattr(trt.ComputeCapability, RTX_TARGETS[target], None)
        if member is None:
            raise EngineBuildError(
                f"compute capability {target} ({RTX_TARGETS[target]}) is not a target of the installed "
                f"{version} bindings; they offer {', '.join(_offered_targets(trt))} (choose "
                "--compute-capability from those, or upgrade tensorrt-rtx-cu12-bindings)"
            )
        members.append(member)
    # TensorRT-RTX's own API, absent from TensorRT 10's stubs: the two ignores below
    try:  # the bindings raise ValueError where setNbComputeCapabilities returns false
        builder_config.num_compute_capabilities = len(targets)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise EngineBuildError(
            f"{version} refused {len(targets)} build targets ({', '.join(targets)}): {exc}"
        ) from None
    for index, (target, member) in enumerate(zip(targets, members)):
        if not builder_config.set_compute_capability(member, index):  # type: ignore[attr-defined]
            raise EngineBuildError(
                f"{version} refused compute capability {target} ({RTX_TARGETS[target]}) as build target "
                f"{index + 1} of {len(targets)} (set_compute_capability returned False; its reason is printed above)"
            )


def _build(plan: _Plan, parsed: _Parsed, configured: _Configured) -> tuple[bytes, float]:
    """The serialized engine and the seconds it took; Ctrl-C cancels, a calibrator's error is raised."""
    start = time.perf_counter()
    try:
        with _cancel_on_interrupt(configured.progress):
            serialized = parsed.builder.build_serialized_network(parsed.network, configured.builder_config)
    finally:
        if configured.calibration is not None:  # calibrated: its stream and buffer are no longer needed
            try:
                configured.calibration.release()
            except Exception as exc:  # never over the build's own error, or its result
                log.warning("could not release the calibrator's stream: %s", exc)
    seconds = time.perf_counter() - start
    if configured.progress.interrupted:
        raise KeyboardInterrupt
    calibration = configured.calibration
    if calibration is not None and calibration.failures:  # why the build failed, if it did
        raise calibration.failures[0]
    if serialized is None:
        raise EngineBuildError(
            f"{plan.onnx_path}: {plan.flavour} failed to build an engine (the builder's errors are printed above)"
        )
    return bytes(serialized), seconds


def _write(
    plan: _Plan, parsed: _Parsed, configured: _Configured, config: BuildConfig, serialized: bytes, seconds: float
) -> dict:
    """The engine, the timing cache and the sidecar, each written atomically; the sidecar as read back."""
    trt, network, metadata = plan.trt, parsed.network, plan.facts["metadata"]
    timing = configured.builder_config.get_timing_cache() if configured.timing_cache else None
    write_bytes(plan.engine_path, serialized)
    if timing is not None and config.timing_cache is not None:
        write_bytes(config.timing_cache, bytes(timing.serialize()))
    input_format = (metadata.get("input") or {}).get("format")
    inputs = [
        {**_io(network.get_input(i), trt, config.batch), **({"format": input_format} if input_format else {})}
        for i in range(network.num_inputs)
    ]
    outputs = [
        {**_io(network.get_output(i), trt, None), **_stride(network.get_output(i).name, metadata)}
        for i in range(network.num_outputs)
    ]
    settings = {
        **{
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k not in ("force", "backend")
        },
        "precision": plan.precision,
        "strongly_typed": not plan.implicit,
        "seconds": round(seconds, 2),
        "phases": configured.progress.phases,
        "compute_capabilities": list(plan.targets),
    }
    calib_cache = config.calib_cache or (metadata.get("quantization") or {}).get("cache")
    used_cache = Path(calib_cache) if calib_cache and Path(calib_cache).is_file() and plan.implicit else None
    sidecar = engine_sidecar(
        metadata,
        plan.precision,
        inputs,
        outputs,
        {"flavour": plan.flavour, "version": trt.__version__},
        settings,
        _device(plan.flavour),
        plan.onnx_path,
        plan.engine_path,
        used_cache,
    )
    write_json(sidecar_path(plan.engine_path), sidecar)
    return read_sidecar(plan.engine_path) or sidecar  # as written: what every later reader sees


def _load_timing_cache(
    trt: ModuleType, flavour: str, builder_config: trt_api.IBuilderConfig, path: Path | None, stream: TextIO | None
) -> bool:
    """Attach the timing cache at ``path`` (empty if absent); False where it does not apply."""
    if path is None:
        return False
    if flavour == "tensorrt-rtx":
        print(
            f"note: --timing-cache does not apply to TensorRT-RTX (its timing-cache calls are "
            f"no-ops; it JIT-compiles kernels on the GPU and keeps a runtime cache instead); "
            f"{path} is left untouched",
            file=stream or sys.stderr,
        )
        return False
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = builder_config.create_timing_cache(data)  # None where TensorRT cannot read the bytes
    if cache is None or not builder_config.set_timing_cache(cache, ignore_mismatch=False):
        print(
            f"note: {path} was made by another GPU or TensorRT version (or is damaged); building "
            "without it (a new timing cache replaces it)",
            file=stream or sys.stderr,
        )
        builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False)
    return True


def _io(tensor: trt_api.ITensor, trt: ModuleType, batch: tuple[int, int, int] | None) -> dict:
    shape = [tensor.shape[i] for i in range(len(tensor.shape))]
    entry: dict[str, object] = {"name": tensor.name, "dtype": str(tensor.dtype).split(".")[-1].lower(), "shape": shape}
    if batch is not None:
        entry["profile"] = {k: [b, *shape[1:]] for k, b in zip(("min", "opt", "max"), batch)}
    return entry


def _stride(output: str, metadata: dict) -> dict:
    """``{"stride": 8}`` for a backbone's feature map (input pixels per output pixel)."""
    strides = (metadata.get("features") or {}).get("strides") or {}
    return {"stride": strides[output]} if output in strides else {}


def _device(flavour: str) -> dict:
    """The GPU the engine was built on, when one is visible (TensorRT-RTX builds ahead of time)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    note = "ahead-of-time build for RTX GPUs (compute capability 8.0+)" if flavour == "tensorrt-rtx" else None
    return {"gpu": None, "compute_capability": None, "note": note}
