"""Batched inference for services: one API over TensorRT engines and ONNX Runtime.

Importing this package imports neither torch nor TensorRT; they load with the first engine.
"""

from ..errors import EngineMismatchError
from .backend import BACKENDS, RunsOn, RuntimeOptions
from .model import InferenceModel, Prediction, load

__all__ = ["BACKENDS", "EngineMismatchError", "InferenceModel", "Prediction", "RunsOn", "RuntimeOptions", "load"]
