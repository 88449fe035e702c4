"""Engine stage: ONNX -> TensorRT / TensorRT-RTX engine."""

from .builder import build_engine
from .config import BuildConfig, EngineBuildError, load_tensorrt

__all__ = ["BuildConfig", "EngineBuildError", "build_engine", "load_tensorrt"]
