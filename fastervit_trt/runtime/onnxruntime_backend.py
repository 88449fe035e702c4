"""ONNX Runtime backend: the execution provider asked for (``auto``: CUDA when this
onnxruntime has it, else the CPU; its TensorRT provider only when asked)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, OptionsError
from ..quant_formats import ONNXRUNTIME_CPU as CPU_TARGET
from ..quant_formats import QUANT_FORMATS
from ..sidecar import DEFAULT_BATCH_PROFILE, METADATA_KEY
from .backend import PROVIDERS, RunsOn, RuntimeOptions

log = logging.getLogger(__name__)

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
ON_DEVICE = (PROVIDERS["tensorrt"], PROVIDERS["cuda"])  # the providers that take a CUDA device_id
UNOPTIMIZED = {f.name: f.onnx_type for f in QUANT_FORMATS.values() if not f.ort_optimizes}  # run unoptimized


def session_providers(provider: str, available: list[str]) -> list[str]:
    """The providers a session is given for ``provider`` (``auto``, a ``PROVIDERS`` name or an
    execution provider's own name): it first, then the built-in ones after it that ``available``
    has. ``auto``: CUDA when available, else the CPU; never the TensorRT provider."""
    if provider == "auto":
        provider = "cuda" if PROVIDERS["cuda"] in available else "cpu"
    wanted = PROVIDERS.get(provider, provider)
    if wanted not in available:
        raise OptionsError(
            f"ONNX Runtime provider {provider!r} ({wanted}) is not in this onnxruntime, which has "
            f"{', '.join(available)}; pass --provider {' or '.join(n for n, p in PROVIDERS.items() if p in available)}"
        )
    order = list(PROVIDERS.values())
    after = order[order.index(wanted) + 1 :] if wanted in order else [PROVIDERS["cpu"]]
    return [wanted, *(p for p in after if p in available)]


def open_backend(path: Path, options: RuntimeOptions) -> OnnxRuntimeBackend:
    """The registry's opener (``backend.BACKENDS``)."""
    return OnnxRuntimeBackend(path, options.provider, options.device)


class OnnxRuntimeBackend:
    """One InferenceSession (thread-safe for concurrent ``run`` calls) on ``provider`` (see
    ``session_providers``), its CUDA or TensorRT provider on device ``device`` (None: ONNX
    Runtime's default, device 0); a provider that takes no device is given none."""

    def __init__(self, path: Path, provider: str = "auto", device: int | None = None) -> None:
        import onnxruntime as ort

        chosen = session_providers(provider, ort.get_available_providers())
        if device is not None and chosen[0] not in ON_DEVICE:
            runs = "the CPU" if chosen[0] == PROVIDERS["cpu"] else f"{chosen[0]}, which takes none"
            raise OptionsError(
                f"{path}: device {device} is for a CUDA provider; ONNX Runtime runs it on {runs}: drop --device"
            )
        gpu = {"device_id": device}
        self.providers: list = [(p, gpu) if device is not None and p in ON_DEVICE else p for p in chosen]
        self.session = _session(path, self.providers, optimize=True)
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = json.loads(raw) if raw else {}
        if not raw:
            log.warning("%s: no fastervit-trt metadata; assuming ImageNet preprocessing", path)
        # ONNX Runtime's Q/DQ rewrites mistreat FP8 (top-1 99.7 % -> 22.5 % on the fixture): such a
        # graph runs unoptimized. The toolkit's metadata says so; another tool's file is scanned.
        if self.metadata.get("precision") in UNOPTIMIZED or (not raw and _stores_unoptimized(path)):
            self.session = _session(path, self.providers, optimize=False)
        feed, fetches = self.session.get_inputs()[0], self.session.get_outputs()
        _check_io(path, self.session.get_inputs(), fetches)
        self.input_name, self.output_names = feed.name, [f.name for f in fetches]
        self.input_dtype = np.dtype(ORT_DTYPES[feed.type])
        self.input_shape = tuple(feed.shape[1:])
        self.output_shapes = {f.name: tuple(f.shape[1:]) for f in fetches}
        # a fixed batch axis (another tool's export) runs exactly that many inputs per call
        self.fixed_batch = feed.shape[0] if isinstance(feed.shape[0], int) else None
        self.max_batch = self.fixed_batch or (self.metadata.get("batch_profile") or DEFAULT_BATCH_PROFILE)[-1]
        running = self.session.get_providers()[0]  # the first choice: nodes it cannot run go to the next
        if running != chosen[0] and device is not None:  # the fallback runs without the device asked for
            raise OptionsError(
                f"{path}: ONNX Runtime could not start {chosen[0]} on device {device} (see its log) and would run "
                f"on {running}; check --device {device} against nvidia-smi and CUDA_VISIBLE_DEVICES, or drop it"
            )
        if running != chosen[0] and provider == "auto":  # ONNX Runtime moves on quietly: say so
            log.warning("%s: ONNX Runtime could not start %s; running on %s", path, chosen[0], running)
        elif running != chosen[0]:  # a provider whose libraries failed to load
            raise OptionsError(
                f"{path}: ONNX Runtime could not start {chosen[0]} (see its log: CUDA or TensorRT libraries "
                f"missing?) and would run on {running}; pass --provider cpu, or install what it needs"
            )
        # nor may run() re-create the session on other providers, without their options, when one fails
        self.session.disable_fallback()
        self.device: int | None = None
        where = "cpu" if running == PROVIDERS["cpu"] else "default"  # another provider picks its own device
        if running in ON_DEVICE:  # the device it started on (its default: 0)
            self.device = int(self.session.get_provider_options().get(running, {}).get("device_id", 0))
            where = f"cuda:{self.device}"
        self.runs_on = RunsOn("onnxruntime", running, where)
        if running == PROVIDERS["cpu"]:
            _warn_if_not_for_cpu(path, self.metadata)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The first output (a classifier's logits) of ``infer_all``."""
        return self.infer_all(batch)[self.output_names[0]]

    def infer_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output, float32, of one batch (at most ``max_batch`` inputs)."""
        if not isinstance(batch, np.ndarray):  # a CUDA tensor: ONNX Runtime takes host arrays here
            batch = batch.detach().cpu().numpy()
        count = len(batch)
        if self.fixed_batch and count < self.fixed_batch:  # pad to the fixed size, slice the result
            batch = np.concatenate([batch, np.zeros((self.fixed_batch - count, *batch.shape[1:]), batch.dtype)])
        outputs = self.session.run(self.output_names, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        return {name: value[:count].astype(np.float32, copy=False) for name, value in zip(self.output_names, outputs)}

    def close(self) -> None:
        self.session = None


def _warn_if_not_for_cpu(path: Path, metadata: dict) -> None:
    """One warning when a quantized graph made for TensorRT (files from before ``--target``
    are) is run on the CPU provider, where it is slower than FP32 (faster_vit_0_224 INT8:
    0.45-0.6x), naming the export option that makes a CPU graph."""
    quantization = metadata.get("quantization") or {}
    target = quantization.get("target", "tensorrt")
    if quantization and target != CPU_TARGET.name:
        log.warning(
            "%s: this %s graph is shaped for %s and runs slower than FP32 on ONNX Runtime's CPU provider; "
            "export one for the CPU: fastervit-export --precision int8 --target %s",
            path,
            str(metadata.get("precision", "quantized")).upper(),
            target,
            CPU_TARGET.name,
        )


def _session(path: Path, providers: list, optimize: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelFileError(
            f"{path}: ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:200]}); re-export it"
        ) from None


def _stores_unoptimized(path: Path) -> bool:
    """Whether the graph stores tensors of a format ONNX Runtime's optimisations mistreat (FP8
    E4M3: a ``--precision fp8`` export)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_type in UNOPTIMIZED.values() for t in model.graph.initializer)


def _check_io(path: Path, inputs: list, outputs: list) -> None:
    """What the runtime needs of an ONNX file: one float (N, C, H, W) input (or uint8
    (N, H, W, C) images) with known dimensions, and float outputs: one (N, classes) (a
    classifier) or (N, C, H, W) feature maps (a backbone); anything else gets one line saying so."""
    feed = inputs[0]
    shape = list(feed.shape or [])
    if len(inputs) != 1 or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise ModelFileError(
            f"{path}: input {feed.name!r} has shape {shape or 'unknown'} ({len(inputs)} inputs); the toolkit "
            "runs image classifiers with one (N, C, H, W) input of fixed C, H, W: re-export with "
            "fastervit-export, or with static spatial dimensions"
        )
    if feed.type not in ORT_DTYPES:
        raise ModelFileError(
            f"{path}: input {feed.name!r} is {feed.type}; the toolkit feeds float inputs or uint8 images"
        )
    ranks = {len(output.shape or []) for output in outputs}
    for output in outputs:
        if (
            output.type not in ("tensor(float)", "tensor(float16)")
            or ranks not in ({2}, {4})
            or (len(outputs) > 1 and ranks != {4})
        ):
            raise ModelFileError(
                f"{path}: output {output.name!r} is {output.type} of shape {output.shape}; the toolkit needs "
                "float logits of shape (N, classes) (an ArgMax or class-id output cannot give "
                "probabilities) or float (N, C, H, W) feature maps"
            )
