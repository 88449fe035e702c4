"""The one place that finds TensorRT or TensorRT-RTX, for the builder, the runtime and the cache."""

from __future__ import annotations

from types import ModuleType

# flavour -> the module names its Python bindings install under, in order of preference
TENSORRT_MODULES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}


def import_tensorrt(flavour: str | None = None) -> ModuleType | None:
    """The TensorRT module of ``flavour`` (any installed if None), or None; a stubs-only
    ``tensorrt`` package (tensorrt-stubs) does not count."""
    candidates = TENSORRT_MODULES.get(flavour, ()) if flavour else sum(TENSORRT_MODULES.values(), ())
    for module in candidates:
        try:
            loaded = __import__(module)
        except ImportError:
            continue
        if hasattr(loaded, "__version__"):  # not a stubs-only namespace package
            return loaded
    return None
