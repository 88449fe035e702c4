"""Triton Python-backend model: encoded image bytes -> the classifier's input (preprocessed
floats, or the uint8 crops a ``--input uint8`` model normalises itself).

``fastervit-triton ... --image-bytes`` copies this file as ``<name>_preprocess/1/model.py``;
the ensemble ``<name>_bytes`` chains it with the classifier, so clients send JPEG/PNG bytes
(a ``TYPE_STRING`` input) and receive logits, or with Triton's classification extension
(``class_count=k``) the top k as "score:index:name" from the ensemble's labels file. The
server's Python environment needs ``pip install fastervit-trt`` (Pillow and NumPy; no torch).
The preprocessing comes from the model config's ``preprocess`` parameter, written from the
engine's sidecar or ONNX metadata.
"""

from __future__ import annotations

import json

import numpy as np

try:  # inside Triton's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported elsewhere (tests, documentation)
    pb_utils = None

from fastervit_trt.preprocess import Preprocess


class TritonPythonModel:
    """Decode and preprocess each request's images in the toolkit's own way."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.preprocess = Preprocess.from_config(json.loads(config["parameters"]["preprocess"]["string_value"]))
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = {"TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8}.get(output["data_type"], np.float32)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            try:
                batch = np.stack([self.preprocess.load(bytes(item)) for item in encoded]).astype(self.output_dtype)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, batch)]))
            except Exception as exc:  # one bad image fails its request, not the server
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
