"""Batched inference for services: one API over TensorRT engines and ONNX Runtime.

Importing this package imports neither torch nor TensorRT; they load with the first engine.
"""

from .model import EngineMismatchError, InferenceModel, Prediction, load

__all__ = ["EngineMismatchError", "InferenceModel", "Prediction", "load"]
