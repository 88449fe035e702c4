"""ONNX Runtime backend: TensorRT / CUDA execution providers when present, else the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FasterViTTRTError
from ..quant_formats import QUANT_FORMATS
from ..sidecar import DEFAULT_BATCH_PROFILE, METADATA_KEY

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
UNOPTIMIZED = {f.name: f.onnx_type for f in QUANT_FORMATS.values() if not f.ort_optimizes}  # run unoptimized


class OnnxRuntimeBackend:
    """One InferenceSession (thread-safe for concurrent ``run`` calls)."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        chosen = providers or [p for p in PREFERRED if p in available]
        self.session = _session(path, chosen, optimize=True)
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = json.loads(raw) if raw else {}
        # ONNX Runtime's Q/DQ rewrites mistreat FP8 (top-1 99.7 % -> 22.5 % on the fixture): such a
        # graph runs unoptimized. The toolkit's metadata says so; another tool's file is scanned.
        if self.metadata.get("precision") in UNOPTIMIZED or (not raw and _stores_unoptimized(path)):
            self.session = _session(path, chosen, optimize=False)
        feed, fetches = self.session.get_inputs()[0], self.session.get_outputs()
        _check_io(path, self.session.get_inputs(), fetches)
        self.input_name, self.output_names = feed.name, [f.name for f in fetches]
        self.input_dtype = np.dtype(ORT_DTYPES[feed.type])
        self.input_shape = tuple(feed.shape[1:])
        self.output_shapes = {f.name: tuple(f.shape[1:]) for f in fetches}
        # a fixed batch axis (another tool's export) runs exactly that many inputs per call
        self.fixed_batch = feed.shape[0] if isinstance(feed.shape[0], int) else None
        self.max_batch = self.fixed_batch or (self.metadata.get("batch_profile") or DEFAULT_BATCH_PROFILE)[-1]
        self.providers = self.session.get_providers()

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


def _session(path: Path, providers: list[str], optimize: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise FasterViTTRTError(
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
        raise FasterViTTRTError(
            f"{path}: input {feed.name!r} has shape {shape or 'unknown'} ({len(inputs)} inputs); the toolkit "
            "runs image classifiers with one (N, C, H, W) input of fixed C, H, W: re-export with "
            "fastervit-export, or with static spatial dimensions"
        )
    if feed.type not in ORT_DTYPES:
        raise FasterViTTRTError(
            f"{path}: input {feed.name!r} is {feed.type}; the toolkit feeds float inputs or uint8 images"
        )
    ranks = {len(output.shape or []) for output in outputs}
    for output in outputs:
        if (
            output.type not in ("tensor(float)", "tensor(float16)")
            or ranks not in ({2}, {4})
            or (len(outputs) > 1 and ranks != {4})
        ):
            raise FasterViTTRTError(
                f"{path}: output {output.name!r} is {output.type} of shape {output.shape}; the toolkit needs "
                "float logits of shape (N, classes) (an ArgMax or class-id output cannot give "
                "probabilities) or float (N, C, H, W) feature maps"
            )
