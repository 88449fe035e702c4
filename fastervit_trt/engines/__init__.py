"""Engine stage: ONNX -> TensorRT / TensorRT-RTX engine."""
from .builder import BuildConfig, EngineBuildError, build_engine, load_tensorrt

__all__ = ["BuildConfig", "EngineBuildError", "build_engine", "load_tensorrt"]
