"""ONNX Runtime backend: TensorRT / CUDA execution providers when present, else the CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FasterViTTRTError
from ..sidecar import METADATA_KEY

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    """One InferenceSession (thread-safe for concurrent ``run`` calls)."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort
        available = ort.get_available_providers()
        chosen = providers or [p for p in PREFERRED if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise FasterViTTRTError(f"{path}: ONNX Runtime cannot load the model "
                                    f"({str(exc).splitlines()[0][:200]}); re-export it") from None
        feed, fetch = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = feed.name, fetch.name
        self.input_dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
        self.input_shape = tuple(feed.shape[1:])
        self.num_classes = fetch.shape[-1]
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = json.loads(raw) if raw else {}
        self.max_batch = (self.metadata.get("batch_profile") or [1, 8, 32])[-1]
        self.providers = self.session.get_providers()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):  # a CUDA tensor: ONNX Runtime takes host arrays here
            batch = batch.detach().cpu().numpy()
        feed = {self.input_name: batch.astype(self.input_dtype, copy=False)}
        return self.session.run([self.output_name], feed)[0].astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None
