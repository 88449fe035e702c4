"""A batch run: list the files, skip those the output holds, read and predict them on Ray
Data (``Predictor`` actors), and write the answers as Parquet parts as they stream back."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .. import errors
from ..errors import FasterViTTRTError, InputError, ModelFileError, OptionsError, ServiceError
from ..progress import Bar
from ..runtime.backend import BACKENDS, RuntimeOptions, choose_backend
from .files import list_images
from .parts import Parts
from .predictor import Predictor

READ_CPUS = 1  # what a read task of ray.data.read_binary_files asks for
DEFAULT_RESTARTS = 3  # an actor's restarts (and its batch's retries) before the run fails


@dataclass
class Summary:
    """What a run did: files listed, already done before it, written now (of them errors)."""

    files: int
    skipped: int
    rows: int = 0
    errors: int = 0
    parts: list[str] = field(default_factory=list)


def default_gpus(model: str | Path, runtime: RuntimeOptions = RuntimeOptions()) -> float:
    """GPUs per actor unless told: one for a backend that runs on a GPU (TensorRT) or an ONNX Runtime
    provider asked for by name other than the CPU's; none for ONNX Runtime on ``auto`` or the CPU."""
    on_gpu = BACKENDS[choose_backend(Path(model), runtime)].gpu
    return 1.0 if on_gpu or runtime.provider not in ("auto", "cpu", "CPUExecutionProvider") else 0.0


def check_runtime(runtime: RuntimeOptions) -> None:
    """Refuse what a batch run cannot take, before Ray starts: a ``device`` (Ray assigns each
    actor its GPU and sets CUDA_VISIBLE_DEVICES to it, so inside an actor only device 0 exists)."""
    if runtime.device is not None:
        raise OptionsError(
            f"device {runtime.device}: Ray assigns each actor its GPU (CUDA_VISIBLE_DEVICES: device 0 inside it); "
            "drop --device"
        )


def actor_runtime(model: str | Path, runtime: RuntimeOptions, gpus: float) -> RuntimeOptions:
    """The options the actors load the model with: ``runtime``, but ONNX Runtime's ``auto``
    provider is the CPU's in actors given no GPU (Ray hides every GPU from them: ``auto`` would
    try a CUDA build's provider in each, which falls back with an "EP Error" banner)."""
    reads_provider = "provider" in BACKENDS[choose_backend(Path(model), runtime)].reads
    return replace(runtime, provider="cpu") if gpus == 0 and runtime.provider == "auto" and reads_provider else runtime


def job_error(exc: Exception, model: Path | None = None, restarts: int = 0) -> FasterViTTRTError:
    """A failed Ray job as one line: our error raised in an actor (a model that does not load,
    an engine that fails), of its own kind; an actor whose process died every time, naming the
    model; else the last line Ray gives."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ours = [m for m in map(re.compile(r"fastervit_trt\.(?:\w+\.)*(\w*(?:Error|Exception)): (.*)").match, lines) if m]
    if ours:
        kind = getattr(errors, ours[-1].group(1), None)
        if not (isinstance(kind, type) and issubclass(kind, FasterViTTRTError)):
            kind = ServiceError
        return kind(ours[-1].group(2))
    died = [line for line in lines if "worker process has died" in line or "Worker exit type" in line]
    if died:
        last = died[-1].split(" Some common causes")[0]  # Ray's list of guesses follows its own account
        return ServiceError(
            f"{model}: the actor running it died {restarts + 1} times, its restarts exhausted (the last: {last}); "
            "run the model alone (fastervit-infer) to see why, or raise --max-restarts for transient failures"
        )
    return ServiceError(f"the Ray job failed: {lines[-1] if lines else type(exc).__name__}")


def model_files(model: Path) -> dict[str, bytes]:
    """The files an actor needs to load ``model``, by name: the model, an engine's sidecar, an
    ONNX file's external data; sent through Ray's object store, so a node that cannot see the
    driver's path (another machine, another container) loads the same bytes."""
    from ..sidecar import sidecar_path

    beside = [sidecar_path(model), model.with_name(model.name + ".data")]
    return {path.name: path.read_bytes() for path in [model, *beside] if path.is_file()}


def predict_files(
    inputs: Sequence[str],
    model: str | Path,
    output: str,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    batch_size: int = 32,
    topk: int = 5,
    rows_per_part: int = 1000,
    exif_rotate: bool = True,
    exact_preprocess: bool = False,
    predictor: type = Predictor,
    progress: TextIO | None = sys.stderr,
    runtime: RuntimeOptions = RuntimeOptions(),
    max_restarts: int = DEFAULT_RESTARTS,
) -> Summary:
    """Predict every image file of ``inputs`` not yet in ``output`` on the Ray this process
    is connected to (``ray.init``; else a local one); see ``fastervit_trt.batch``. An actor
    whose process dies is restarted, and its batch retried, at most ``max_restarts`` times
    (Ray Data's default: without end), so a model that crashes on every batch ends the run."""
    check_runtime(runtime)  # before Ray starts
    import pyarrow as pa
    import ray

    model = Path(model).absolute()
    if not model.is_file():
        raise ModelFileError(f"{model}: no such model file (actors load it from the same path)")
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus - actors * cpus_per_actor < READ_CPUS:
        raise ServiceError(
            f"{actors} actors of {cpus_per_actor:g} CPUs leave less than the {READ_CPUS} CPU that reading files "
            f"takes on this {cpus:g}-CPU Ray cluster; use fewer actors or a smaller --cpus-per-actor"
        )
    filesystem, files = list_images(inputs)
    if not files:
        raise InputError(f"no image files found in {', '.join(inputs)}")
    parts = Parts(output)
    done = parts.done()
    todo = [f for f in files if f.path not in done]
    summary = Summary(len(files), len(files) - len(todo))
    if not todo:
        return summary
    gpus = default_gpus(model, runtime) if gpus_per_actor is None else gpus_per_actor
    shown = {f.location: f.path for f in todo}
    answers = ray.data.read_binary_files(
        [f.location for f in todo], include_paths=True, filesystem=filesystem
    ).map_batches(
        predictor,
        fn_constructor_kwargs={
            "model_path": str(model),
            "model_files": ray.put(model_files(model)),  # actors on other nodes need not see the driver's path
            "topk": topk,
            "exif_rotate": exif_rotate,
            "exact_preprocess": exact_preprocess,
            "runtime": actor_runtime(model, runtime, gpus),
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format="pyarrow",
        # bounded: Ray Data's -1 retries a crash on every batch forever. Ray 2.60 deprecates remote
        # args given this way (and as ray_remote_args_fn) for 2.64 with no named replacement yet:
        # the [ray] extra stays below 2.64
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
    )
    answers.context.enable_progress_bars = False  # ours counts files
    pending: list[Any] = []  # answers not yet in a part

    def write(table: Any) -> None:
        parts.check_schema(table.schema)
        summary.parts.append(parts.write(table))
        summary.rows += table.num_rows
        summary.errors += table.num_rows - table.column("error").null_count

    with Bar(len(todo), "files", "file", progress) as bar:
        answered: Any  # a pyarrow.Table of the predictor's rows
        try:
            for answered in answers.iter_batches(batch_size=None, batch_format="pyarrow"):
                paths = pa.array([shown[p] for p in answered.column("path").to_pylist()], pa.string())
                pending.append(answered.set_column(0, "path", paths))
                bar.update(answered.num_rows)
                while sum(t.num_rows for t in pending) >= rows_per_part:
                    buffered = pa.concat_tables(pending)
                    write(buffered.slice(0, rows_per_part))
                    pending = [buffered.slice(rows_per_part)]
        except ray.exceptions.RayError as exc:  # the parts written so far stay: a re-run goes on from them
            raise job_error(exc, model, max_restarts) from None
        if sum(t.num_rows for t in pending):
            write(pa.concat_tables(pending))
    return summary
