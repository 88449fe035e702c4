"""TensorRT engine backend.

Execution contexts live in a bounded pool; each has its own CUDA stream and its own device
and pinned host buffers, made on first use (a context only ever fed CUDA tensors, read in
place, gets no input buffer). One engine call: set the batch shape, bind every address
(TensorRT answers each with a bool; a refusal is an error), ``execute_async_v3``, queue
the output copies, then one synchronize of the context's stream. Device memory comes from
``runtime.cuda`` (torch when it sees a GPU, else pycuda) on the device the model was loaded
on; nothing is imported until an engine is loaded.

CUDA graphs (``cuda_graphs=True``): a graph replays the kernels of the shape it was
captured at, and TensorRT needs a new capture after any change of input shape (developer
guide; NVIDIA/TensorRT#3798), so no context that has a graph ever changes shape. Each
captured batch size has contexts of its own, made on first use: the powers of two from the
profile's MIN to its MAX, and MAX itself (1, 2, 4, 8, 16, 32 on a 1..32 profile); a call
runs at the smallest of them that holds it, zero-padded. Such a context is given only the
activation memory its size needs (``USER_MANAGED``, sized by
``update_device_memory_size_for_shapes``) and I/O buffers of its size, so at most
``contexts`` contexts per size hold sum(sizes) rows in all: under 2x a plain pool's memory
when MAX is a power of two, under 3x otherwise. A context's first call is an ordinary
launch (TensorRT finishes deferred set-up there) and its launch is then captured on its
own stream, as ``trtexec --useCudaGraph`` does; a capture that fails (``execute_async_v3``
returns False inside it, or CUDA invalidates it) is ended and dropped, warned about once,
and that context runs uncaptured from then on. TensorRT-RTX captures and replays per shape
by itself (``CudaGraphStrategy`` on the runtime config, from TensorRT-RTX 1.2 on; an older
RTX cannot have CUDA graphs). ``close`` destroys every context's stream and graph.

A CUDA tensor input is made on the caller's stream; every copy of it the call makes (padded,
aligned) is queued there too, before the context's stream waits on that stream. Buffers come
from torch's caching allocator on the caller's stream too, so a context's stream waits on it
once they are made (``cuda.claim``); a call that fails waits for what it queued before its
error is raised, so nothing still in flight reads or writes memory freed after it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..artifacts import sha256
from ..errors import EngineError, EngineMismatchError, InputError, ModelFileError, OptionsError
from ..sidecar import read_sidecar, rebuild_command, sidecar_path
from ..tensorrt_import import import_tensorrt
from .backend import RunsOn, RuntimeOptions, join_parts
from .cuda import ALIGNMENT, PyCuda, check_index, device_count, open_cuda

if TYPE_CHECKING:  # tensorrt-stubs: the objects below are checked against TensorRT's API (mypy)
    import tensorrt as trt_api

RTX_GRAPHS = "1.2"  # the first TensorRT-RTX with CudaGraphStrategy and is_stream_capturable (release notes)

log = logging.getLogger(__name__)


def numpy_dtype(trt: ModuleType, dtype: Any, what: str) -> np.dtype:
    """The NumPy dtype of a TensorRT I/O tensor (``trt.nptype``); BF16/FP8/FP4 have none."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise ModelFileError(
            f"{what}: TensorRT type {dtype} has no NumPy equivalent; export the "
            "model with float32 or float16 input and output"
        ) from None


def graph_sizes(low: int, high: int) -> tuple[int, ...]:
    """The batch sizes CUDA graphs are captured at on a profile of ``low..high``: the powers
    of two between them, and both ends."""
    powers = {1 << k for k in range(high.bit_length()) if low <= 1 << k <= high}
    return tuple(sorted(powers | {low, high}))


def batch_plan(count: int, low: int, high: int, sizes: tuple[int, ...] | None = None) -> list[tuple[int, int, int]]:
    """How ``count`` inputs run on a profile of batch ``low..high``: (start, stop, run_as) per
    engine call, at most ``high`` each; a part smaller than ``low`` is padded up to it, or
    with ``sizes`` (captured graphs) every part to the smallest of them that holds it."""
    plan = []
    for start in range(0, count, high):
        rows = min(high, count - start)
        run_as = max(rows, low) if sizes is None else min(s for s in sizes if s >= rows)
        plan.append((start, start + rows, run_as))
    return plan


def open_backend(path: Path, options: RuntimeOptions) -> TensorRTBackend:
    """The registry's opener (``backend.BACKENDS``): the engine checked against its sidecar
    (``verify_engine``), which it then records as its metadata."""
    count = device_count()
    if count is not None:  # before the sidecar's check asks torch about the device
        check_index(options.device, count, f"{path}: ")
    sidecar = verify_engine(path, device=options.device)
    backend = TensorRTBackend(
        path,
        (sidecar.get("tensorrt") or {}).get("flavour"),
        options.contexts,
        version_compat=bool((sidecar.get("build") or {}).get("version_compat")),
        cuda_graphs=options.cuda_graphs,
        device=options.device,
    )
    backend.metadata = sidecar
    return backend


def verify_engine(path: Path, check_device: bool = True, device: int | None = None) -> dict:
    """Check ``path`` against its sidecar before any GPU work; returns the sidecar (or {}).

    ``check_device=False`` skips what only matters where the engine runs (the installed
    TensorRT and GPU ``device``, None: the current one), for commands that only copy or
    describe it."""
    sidecar = read_sidecar(path)
    if sidecar is None:
        log.warning(
            "%s: no sidecar %s; loading with shapes from the engine and ImageNet preprocessing",
            path,
            sidecar_path(path).name,
        )
        return {}
    recorded = sidecar.get("engine", {}).get("sha256")
    if recorded and sha256(path) != recorded:
        raise EngineMismatchError(
            f"{path}: the engine's sha256 does not match its sidecar (truncated, "
            f"corrupt or replaced); rebuild it: {rebuild_command(sidecar, path)}"
        )
    if not check_device:
        return sidecar
    built = sidecar.get("tensorrt", {})
    trt = import_tensorrt(built.get("flavour"))
    if (
        trt is not None
        and trt.__version__ != built.get("version")
        and not sidecar.get("build", {}).get("version_compat")
    ):
        raise EngineMismatchError(
            f"{path}: built by {built.get('flavour')} {built.get('version')}, but {trt.__version__} is "
            f"installed; engines only load in the TensorRT version that built them. Rebuild: "
            f"{rebuild_command(sidecar, path)}"
        )
    wanted = sidecar.get("device", {}).get("compute_capability")
    present = _compute_capability(device)
    targets = sidecar.get("build", {}).get("compute_capabilities") or []
    if built.get("flavour") == "tensorrt-rtx" and targets and present and present not in targets:
        raise EngineMismatchError(
            f"{path}: built by TensorRT-RTX for compute capabilities {', '.join(targets)}; this GPU is "
            f"{present}; rebuild for it: {rebuild_command(sidecar, path)} (with --compute-capability {present})"
        )
    portable = sidecar.get("build", {}).get("hardware_compat") or built.get("flavour") == "tensorrt-rtx"
    if wanted and present and wanted != present and not portable:  # RTX engines JIT for their targets
        raise EngineMismatchError(
            f"{path}: built for a GPU of compute capability {wanted} ({sidecar['device'].get('gpu')}), "
            f"this GPU is {present}; rebuild here: {rebuild_command(sidecar, path)}"
        )
    return sidecar


def _compute_capability(device: int | None = None) -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return "{}.{}".format(*torch.cuda.get_device_capability(device))
    except ImportError:
        pass
    return None


@dataclass
class _Buffers:
    """A context's buffers, owned apart from it: the stream's destroyer frees them just before
    it destroys the stream (``cuda.stream(held)``), on every path: close, a model dropped
    without close (in a reference cycle too, where the stream's finalizer comes first) and exit.
    Freeing a pinned block records an event on each stream that copied through it (torch's
    CachingHostAllocator), which must not be one already destroyed."""

    memory: Any = None  # user-managed activation memory, alive as long as the context
    device_in: tuple[Any, int] | None = None  # (buffer, address), made on the first host input
    host_in: np.ndarray | None = None
    outputs: dict[str, tuple[Any, int, np.ndarray]] = field(default_factory=dict)  # device, address, pinned host

    def free(self) -> None:
        self.memory, self.device_in, self.host_in = None, None, None
        self.outputs.clear()


@dataclass
class _Slot:
    """One execution context with its stream and buffers of ``rows`` rows."""

    context: trt_api.IExecutionContext
    stream: Any
    handle: int
    rows: int
    graphed: bool  # a CUDA-graph context: fixed at batch ``rows``, reads only its own input buffer
    held: _Buffers  # its buffers, freed by the stream's destroyer just before the stream goes
    shape: int | None = None  # the batch the context is set to
    graph: Any = None
    tried_capture: bool = False

    @property
    def memory(self) -> Any:
        return self.held.memory

    @property
    def device_in(self) -> tuple[Any, int] | None:
        return self.held.device_in

    @property
    def host_in(self) -> np.ndarray | None:
        return self.held.host_in

    @property
    def outputs(self) -> dict[str, tuple[Any, int, np.ndarray]]:
        return self.held.outputs


_LIVE: weakref.WeakSet = weakref.WeakSet()  # backends not closed, for the exit hook
_EXIT_HOOK: list[bool] = []  # registered once, after the first stream (see ``_close_at_exit``)


def _close_at_exit() -> None:
    """Close every backend still open at exit, before ``weakref.finalize``'s exit hook destroys
    the streams (registered with the first finalizer, at the first stream; this one after it, so
    it runs first, LIFO): a daemon thread still calling a backend then gets the closed-model
    error, not a destroyed stream (the buffers go before their streams either way)."""
    for backend in list(_LIVE):
        backend.close()


class TensorRTBackend:
    """A deserialized engine with up to ``contexts`` execution contexts (per captured batch
    size with ``cuda_graphs``) on CUDA device ``device`` (None: the current one)."""

    def __init__(
        self,
        path: Path,
        flavour: str | None = None,
        contexts: int = 2,
        version_compat: bool = False,
        cuda_graphs: bool = False,
        device: int | None = None,
    ) -> None:
        trt = import_tensorrt(flavour)
        if trt is None:
            raise ModelFileError(
                f"{path}: no {flavour or 'TensorRT'} Python package to run the "
                "engine; pip install 'fastervit-trt[tensorrt]', or load the .onnx "
                "with ONNX Runtime instead"
            )
        self.trt, self.path, self.contexts = trt, Path(path), contexts
        self.metadata: dict = {}  # the sidecar, as ``open_backend`` read it
        self.cuda = open_cuda(device)
        native_graphs = cuda_graphs and hasattr(trt, "CudaGraphStrategy")  # TensorRT-RTX captures for itself
        if cuda_graphs and not native_graphs and trt.__name__.startswith("tensorrt_rtx"):
            raise OptionsError(
                f"{path}: CUDA graphs with TensorRT-RTX need TensorRT-RTX {RTX_GRAPHS} or later "
                f"(CudaGraphStrategy); this is {trt.__version__}: upgrade it or drop --cuda-graph"
            )
        if cuda_graphs and not native_graphs and not self.cuda.can_capture:
            raise OptionsError(
                f"{path}: CUDA graphs need PyTorch with CUDA (pycuda cannot capture "
                "TensorRT's launches); install torch or drop --cuda-graph"
            )
        logger = trt.Logger(trt.Logger.ERROR)
        # typed here, where TensorRT's objects enter: all made from it are checked against its API
        self.runtime = cast("trt_api.Runtime", trt.Runtime(logger))
        if version_compat:  # such engines carry their own lean runtime: let it load (as Polygraphy does)
            self.runtime.engine_host_code_allowed = True
        with self.cuda.active():
            engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise ModelFileError(
                f"{path}: TensorRT {trt.__version__} cannot deserialize the engine "
                "(corrupt, truncated, or built by another TensorRT version or for "
                "another GPU); rebuild it with fastervit-build"
            )
        self.engine: trt_api.ICudaEngine | None = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name, self.output_names = inputs[0], [n for n in names if n not in inputs]
        self.input_dtype = numpy_dtype(trt, engine.get_tensor_dtype(self.input_name), str(path))
        self.output_dtypes = {n: numpy_dtype(trt, engine.get_tensor_dtype(n), str(path)) for n in self.output_names}
        for name, dtype in self.output_dtypes.items():
            if dtype.kind != "f":  # e.g. an ArgMax label: not scores or features
                raise ModelFileError(
                    f"{path}: output {name!r} is {dtype}, not float; the runtime "
                    "serves classifiers (logits) and backbones (feature maps)"
                )
        min_shape, _, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self.input_shape = tuple(max_shape[1:])
        self.output_shapes: dict[str, tuple[int, ...]] = {
            n: tuple(engine.get_tensor_shape(n)[1:]) for n in self.output_names
        }
        self.runtime_config: trt_api.IRuntimeConfig | None = None
        if native_graphs:
            config = engine.create_runtime_config()
            # TensorRT-RTX's own attribute: TensorRT 10's IRuntimeConfig has none
            cast(Any, config).cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.runtime_config = config
        # None: every call on a context of MAX rows; else the CUDA-graph sizes, contexts of their own
        self.sizes = graph_sizes(self.min_batch, self.max_batch) if cuda_graphs and not native_graphs else None
        self.closed, self.warned = False, False
        self.lock = threading.Condition()
        self.idle: dict[int, list[_Slot]] = {rows: [] for rows in self.sizes or (self.max_batch,)}
        _LIVE.add(self)
        self.made = dict.fromkeys(self.idle, 0)
        if self.sizes is None:  # the plain pool is made at load
            self.idle[self.max_batch] = [self._slot(self.max_batch) for _ in range(contexts)]
            self.made[self.max_batch] = contexts

    @property
    def device(self) -> int:
        """The CUDA device index the engine runs on."""
        return self.cuda.index

    @property
    def runs_on(self) -> RunsOn:
        flavour = "tensorrt-rtx" if self.trt.__name__.startswith("tensorrt_rtx") else "tensorrt"
        return RunsOn("tensorrt", f"{flavour} {self.trt.__version__}", f"cuda:{self.device}")

    def _slot(self, rows: int) -> _Slot:
        with self.cuda.active():
            held = _Buffers()
            stream, handle = self.cuda.stream(held)
            if not _EXIT_HOOK:  # after the stream's finalizer: runs before the streams are destroyed
                atexit.register(_close_at_exit)
                _EXIT_HOOK.append(True)
            try:
                return self._context(stream, handle, rows, held)
            except BaseException:
                self.cuda.release(stream, None)
                raise

    def _context(self, stream: Any, handle: int, rows: int, held: _Buffers) -> _Slot:
        """A new execution context on ``stream``, with its buffers of ``rows`` rows; ``stream``
        waits for the caller's stream, where the buffers were allocated (``cuda.claim``)."""
        engine = self.engine
        if engine is None:  # close() came while this call waited for a context
            raise EngineError(f"{self.path}: the model is closed; load it again")
        if self.sizes is None:
            made = (
                engine.create_execution_context(self.runtime_config)
                if self.runtime_config
                else engine.create_execution_context()
            )
        else:  # fixed at ``rows`` for life, with the activation memory that batch needs
            made = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if made is None:  # TensorRT's error value (NvInferRuntime.h: createExecutionContext)
            raise EngineError(
                f"{self.path}: TensorRT could not create an execution context (out of GPU memory? see its log)"
            )
        context = cast("trt_api.IExecutionContext", made)
        slot = _Slot(context, stream, handle, rows, graphed=self.sizes is not None, held=held)
        if slot.graphed:
            self._set_batch(slot, rows)
            size = context.update_device_memory_size_for_shapes()
            if not size:  # its error value (NvInferRuntime.h)
                raise EngineError(
                    f"{self.path}: TensorRT could not size the activation memory of batch {rows} "
                    "(update_device_memory_size_for_shapes returned 0; see its log)"
                )
            slot.held.memory, address = self.cuda.device((size,), np.dtype(np.uint8))
            context.set_device_memory(address, size)
        for name in self.output_names:
            shape, dtype = (rows, *self.output_shapes[name]), self.output_dtypes[name]
            slot.outputs[name] = (*self.cuda.device(shape, dtype), self.cuda.pinned(shape, dtype))
        self.cuda.claim(stream)
        return slot

    def infer(self, batch) -> np.ndarray:
        """The first output (a classifier's logits, (N, classes)) of ``infer_all``."""
        return self.infer_all(batch)[self.output_names[0]]

    def infer_all(self, batch) -> dict[str, np.ndarray]:
        """Every output, float32, for a NumPy batch or a CUDA torch tensor of any N: split at
        the profile's MAX, a part below its MIN (or a captured size) padded up, the padding dropped."""
        if not isinstance(batch, np.ndarray):
            batch = self._check_tensor(batch)
        self._check_shape(tuple(batch.shape))
        plan = batch_plan(len(batch), self.min_batch, self.max_batch, self.sizes)
        return join_parts([self._run(batch[start:stop], run_as) for start, stop, run_as in plan])

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse a batch that is not (N, *input shape): TensorRT would read the bytes as the
        shape it was set to (a (1, 3, 4, 4) tensor for a (N, 3, 2, 2) input: 12 of its values; an
        NCHW uint8 tensor for an NHWC engine: its channels scrambled), a silent wrong answer."""
        if len(shape) != 1 + len(self.input_shape) or tuple(shape[1:]) != self.input_shape:
            expected = ", ".join(["N", *map(str, self.input_shape)])
            raise InputError(f"{self.path}: the batch is {tuple(shape)}; the engine takes ({expected})")

    def _check_tensor(self, tensor):
        """A CUDA torch tensor on this engine's device, as the engine's input dtype (floats for
        a float engine: an integer tensor is raw pixels, not preprocessed input; uint8 images
        for a ``--input uint8`` engine)."""
        torch = getattr(self.cuda, "torch", None)
        if torch is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != self.cuda.device_type:
            raise InputError(f"{self.path}: inputs must be a NumPy array or a CUDA torch tensor")
        if tensor.device.index not in (None, self.device):
            raise InputError(
                f"{self.path}: the tensor is on {tensor.device}, the engine on "
                f"cuda:{self.device}; move it with .to('cuda:{self.device}')"
            )
        if self.input_dtype == np.uint8 and tensor.dtype != torch.uint8:
            raise InputError(
                f"{self.path}: the engine takes uint8 (N, H, W, 3) images, not a "
                f"{tensor.dtype} tensor (it normalises them itself)"
            )
        if self.input_dtype != np.uint8 and not tensor.is_floating_point():
            raise InputError(
                f"{self.path}: a {tensor.dtype} CUDA tensor is raw data; pass "
                "preprocessed float inputs (runtime.Preprocess)"
            )
        return tensor.to(dtype=getattr(torch, self.input_dtype.name)).contiguous()

    def _run(self, batch, run_as: int) -> dict[str, np.ndarray]:
        rows = run_as if self.sizes else self.max_batch
        slot = self._acquire(rows)
        try:
            with self.cuda.active():
                try:
                    return self._execute(slot, batch, run_as)
                except BaseException:  # nothing it queued may outlive it: the copies it made, the buffers
                    self._drain(slot)
                    raise
        finally:
            with self.lock:  # closed checked and the slot returned at once: close() cannot miss it
                closed = self.closed
                if not closed:
                    self.idle[rows].append(slot)
                    self.lock.notify()
            if closed:  # close() has come and gone while this call ran
                self._release([slot])

    def _acquire(self, rows: int) -> _Slot:
        """An idle context of ``rows`` rows, a new one while fewer than ``contexts`` exist, or
        the next one returned."""
        with self.lock:
            while True:
                if self.closed:
                    raise EngineError(f"{self.path}: the model is closed; load it again")
                if self.idle[rows]:
                    return self.idle[rows].pop()
                if self.made[rows] < self.contexts:
                    self.made[rows] += 1
                    break
                self.lock.wait()
        try:
            return self._slot(rows)
        except BaseException:
            with self.lock:
                self.made[rows] -= 1
                self.lock.notify()
            raise

    def _set_batch(self, slot: _Slot, run_as: int) -> None:
        if slot.shape != run_as:
            if not slot.context.set_input_shape(self.input_name, (run_as, *self.input_shape)):
                raise EngineError(
                    f"{self.path}: TensorRT refused batch {run_as} (the engine's profile "
                    f"takes {self.min_batch} to {self.max_batch})"
                )
            slot.shape = run_as

    def _bind(self, slot: _Slot, name: str, address: int) -> None:
        if not slot.context.set_tensor_address(name, address):
            raise EngineError(
                f"{self.path}: TensorRT refused the address {address:#x} of tensor {name!r} "
                "(see its log); report this with the engine's sidecar"
            )

    def _input_buffer(self, slot: _Slot) -> tuple[Any, int]:
        held = slot.held
        if held.device_in is None:
            shape = (slot.rows, *self.input_shape)
            held.device_in = self.cuda.device(shape, self.input_dtype)
            held.host_in = self.cuda.pinned(shape, self.input_dtype)
            self.cuda.claim(slot.stream)
        return held.device_in

    def _execute(self, slot: _Slot, batch, run_as: int) -> dict[str, np.ndarray]:
        count = len(batch)
        self._set_batch(slot, run_as)
        if isinstance(batch, np.ndarray):
            device, address = self._input_buffer(slot)
            assert slot.host_in is not None
            host = slot.host_in[:run_as]
            host[:count] = batch
            host[count:] = 0
            self.cuda.upload(device, host, slot.stream)
            del host  # no view of a pinned block outlives its owner (a traceback would keep it)
        else:  # a CUDA torch tensor, made on the caller's stream
            assert not isinstance(self.cuda, PyCuda)  # _check_tensor admitted it: torch's
            if not slot.graphed:  # read in place where TensorRT can: padded below the profile's MIN, aligned
                if run_as > count:
                    batch = self.cuda.padded(batch, run_as)  # queued on the caller's stream
                elif self.cuda.address(batch) % ALIGNMENT:  # a view with a storage offset
                    batch = self.cuda.copy(batch)  # queued on the caller's stream
            self.cuda.wait_current(slot.stream)  # after every copy above: TensorRT reads them
            if slot.graphed:  # a graph reads the buffer it was captured with: copy in, on the GPU
                device, address = self._input_buffer(slot)
                self.cuda.copy_rows(device, batch, run_as, slot.stream)
            else:
                address = self.cuda.address(batch)
        self._bind(slot, self.input_name, address)
        for name, (_, pointer, _) in slot.outputs.items():
            self._bind(slot, name, pointer)
        self._launch(slot)
        for device, _, pinned in slot.outputs.values():
            self.cuda.download(pinned, device, count, slot.stream)
            del pinned  # no view of a pinned block outlives its owner (a traceback would keep it)
        self.cuda.synchronize(slot.stream)  # once, for every output (``batch`` is alive until here)
        return {name: out[:count].astype(np.float32) for name, (_, _, out) in slot.outputs.items()}

    def _launch(self, slot: _Slot) -> None:
        if slot.graph is not None:
            assert not isinstance(self.cuda, PyCuda)  # graphs are captured with torch only
            self.cuda.replay(slot.graph, slot.stream)
            return
        if not slot.context.execute_async_v3(slot.handle):
            raise EngineError(f"{self.path}: TensorRT failed to run the engine (see its log)")
        if slot.graphed and not slot.tried_capture:  # the ordinary first run is queued: capture after it
            slot.tried_capture = True
            slot.graph = self._capture(slot)

    def _drain(self, slot: _Slot) -> None:
        """Wait for what a failed call left queued on the context's stream (a copy, a launch):
        the tensors it made are freed as it returns, and the buffers once the model is closed.
        A failure here (a sticky CUDA error) is the one already on its way, not raised again."""
        try:
            self.cuda.synchronize(slot.stream)
        except Exception:
            log.debug("%s: synchronizing after a failed call failed too", self.path, exc_info=True)

    def _capture(self, slot: _Slot) -> Any | None:
        """The context's launch captured as a CUDA graph, or None (warned once) where it cannot be."""
        assert not isinstance(self.cuda, PyCuda)  # cuda_graphs needs torch (checked at load)
        self.cuda.synchronize(slot.stream)  # the first run finished before capturing, as trtexec does
        graph = self.cuda.capture(slot.stream, lambda: slot.context.execute_async_v3(slot.handle))
        if graph is None and not self.warned:
            self.warned = True
            log.warning(
                "%s: no CUDA graph at batch %d (the capture failed); those calls run as ordinary launches",
                self.path,
                slot.rows,
            )
        return graph

    def _release(self, slots: list[_Slot]) -> None:
        """Destroy the streams and graphs of ``slots``, no longer in any call: every one, then
        the first failure raised."""
        failure: Exception | None = None
        with self.cuda.active():
            for slot in slots:
                graph, slot.graph = slot.graph, None
                slot.held.free()  # here, with the device current (pycuda frees in its context only)
                try:
                    self.cuda.release(slot.stream, graph)
                except Exception as error:
                    failure = failure or error
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Release the contexts, their streams and graphs; calls in flight finish (and release
        theirs), later ones get a clear error."""
        _LIVE.discard(self)
        with self.lock:
            self.closed = True
            idle = [slot for slots in self.idle.values() for slot in slots]
            for slots in self.idle.values():
                slots.clear()
            self.lock.notify_all()
        self.engine = None  # contexts in use keep it alive (TensorRT's bindings) until released
        self._release(idle)
