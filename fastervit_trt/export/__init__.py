"""Export stage: deploy transforms and PyTorch -> ONNX."""

from .deploy import prepare_for_export

__all__ = ["prepare_for_export"]
