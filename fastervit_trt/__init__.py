"""fastervit-trt: FasterViT -> TensorRT-friendly ONNX -> FP16/INT8 TensorRT engines -> batched runtime."""

from .errors import FasterViTTRTError

__version__ = "0.1.0"
__all__ = ["FasterViTTRTError", "__version__"]
