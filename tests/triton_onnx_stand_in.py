"""A Triton Python-backend model that runs ``1/model.onnx`` with ONNX Runtime: the stand-in for
the TensorRT / ONNX Runtime backends that PyPI's ``tritonserver`` (nvidia-pytriton) lacks.

The test copies it to ``<name>/1/model.py`` and swaps the config's ``platform`` for
``backend: "python"``, keeping every other entry the toolkit wrote (inputs, outputs with their
``label_filename``, max_batch_size, dynamic batching), so Triton's own server checks those.
It follows the Python backend's API: ``TritonPythonModel.initialize(args)`` gets the model
config as JSON and the model's folder; ``execute(requests)`` reads each request's input with
``pb_utils.get_input_tensor_by_name`` and answers one ``pb_utils.InferenceResponse`` of
``pb_utils.Tensor`` outputs per request, in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime

try:  # inside Triton's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported elsewhere
    pb_utils = None


class TritonPythonModel:
    """ONNX Runtime on the CPU, one session, the config's input and output names."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        folder = Path(args["model_repository"]) / args["model_version"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a shared machine
        self.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            outputs = self.session.run(self.output_names, {self.input_name: batch})
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(n, o) for n, o in zip(self.output_names, outputs)])
            )
        return responses
