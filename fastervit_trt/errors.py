"""Typed errors: each message names the file or value at fault and what to do about it.

Only the command-line layer turns these into one line and an exit code; library code
raises them and never exits. Every error says what kind of problem it is:

    FasterViTTRTError
    ├── OptionsError          options or arguments out of range or contradicting each other
    ├── ModelError            the network: an unknown name, a resolution, a checkpoint
    │   ├── UnknownModelError, ResolutionError, CheckpointError
    ├── ModelFileError        an .onnx / .engine that cannot be loaded as given
    │   └── EngineMismatchError   an engine for another TensorRT, GPU or sidecar
    ├── InputError            an input the model cannot take; ImageError: an undecodable image
    ├── ExportError           tracing, writing or validating an export; ValidationError
    ├── CalibrationError      CalibrationDataError, CalibrationCacheError
    ├── EngineBuildError      parsing or building an engine
    ├── EngineError           the engine or its device failed to run a batch
    ├── OutputError           an output that cannot be written
    ├── EvaluationError       a dataset or label mapping that cannot be evaluated
    └── ServiceError          a server, batcher, Ray, Triton or DeepStream set-up
"""

from __future__ import annotations


class FasterViTTRTError(Exception):
    """Base class of every error this toolkit raises on purpose (never raised bare)."""


class OptionsError(FasterViTTRTError, ValueError):
    """Options or arguments that are out of range or contradict each other."""


class ModelError(FasterViTTRTError):
    """The network asked for: its name, resolution or weights."""


class UnknownModelError(ModelError):
    """A model name that is not in the registry."""


class ResolutionError(ModelError):
    """An input resolution the variant's windows cannot take."""


class CheckpointError(ModelError):
    """A checkpoint that is missing, unreadable, unsafe or for another network."""


class ModelFileError(FasterViTTRTError):
    """An ONNX file or engine that is missing, of another kind, or not a model the toolkit runs."""


class EngineMismatchError(ModelFileError):
    """An engine that does not belong to this runtime, GPU or sidecar."""


class InputError(FasterViTTRTError):
    """An input the model cannot take (wrong shape, dtype or kind)."""


class ImageError(InputError):
    """A file that cannot be decoded as an image."""


class ExportError(FasterViTTRTError):
    """Tracing, writing or checking an exported graph failed."""


class ValidationError(ExportError):
    """The exported graph does not reproduce PyTorch within tolerance."""


class CalibrationError(FasterViTTRTError):
    """Calibration that cannot run or cannot be reused."""


class CalibrationDataError(CalibrationError):
    """Calibration data that is missing, empty or unusable."""


class CalibrationCacheError(CalibrationError):
    """A calibration cache that is malformed, of another calibrator, or for another graph."""


class EngineBuildError(FasterViTTRTError):
    """The ONNX file could not be parsed or built into an engine."""


class EngineError(FasterViTTRTError):
    """The engine or its device failed to run a batch; the inputs were not at fault."""


class OutputError(FasterViTTRTError):
    """An output that cannot be written (folder not writable, file exists without --force)."""


class EvaluationError(FasterViTTRTError):
    """A dataset folder or label mapping that cannot be evaluated."""


class ServiceError(FasterViTTRTError):
    """A server, batcher, Ray pipeline, Triton repository or DeepStream set-up that cannot run."""
