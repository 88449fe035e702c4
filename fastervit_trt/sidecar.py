"""What artifacts say about themselves: the engine sidecar and the ONNX metadata entry.

The engine sidecar is a plain JSON file next to ``x.engine`` describing how it was made.

Never a header inside the engine, so trtexec, Triton and C++ load the engine untouched.
The runtime reads it for preprocessing, labels and I/O, and checks the engine's sha256 and
TensorRT version against it before deserializing.
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1
METADATA_KEY = "fastervit_trt"  # the ONNX metadata_props entry holding the toolkit's JSON


def read_metadata(model) -> dict:
    """The toolkit metadata of an ``onnx.ModelProto`` (empty if absent)."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


def sidecar_path(engine: Path) -> Path:
    return Path(engine).with_suffix(".json")


def read_sidecar(engine: Path) -> dict | None:
    """The sidecar of ``engine``, or None when there is none."""
    path = sidecar_path(engine)
    if not path.is_file():
        return None
    from .errors import FasterViTTRTError
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FasterViTTRTError(f"{path}: unreadable sidecar ({exc}); rebuild the engine or delete "
                                "the sidecar to load the engine without it") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise FasterViTTRTError(f"{path}: sidecar schema {data.get('schema_version')} is not "
                                f"{SCHEMA_VERSION}; rebuild the engine with this toolkit")
    return data


def rebuild_command(sidecar: dict) -> str:
    """The fastervit-build command line that reproduces the engine described by ``sidecar``."""
    build = sidecar.get("build", {})
    parts = ["fastervit-build", sidecar.get("onnx", {}).get("path", "<model.onnx>"),
             "--output", sidecar.get("engine", {}).get("path", "<model.engine>"),
             "--batch", ",".join(str(b) for b in build.get("batch", (1, 8, 32)))]
    for flag in ("workspace_mib", "opt_level"):
        if build.get(flag) is not None:
            parts += [f"--{flag.replace('_mib', '').replace('_', '-')}", str(build[flag])]
    for flag in ("hardware_compat", "version_compat"):
        if build.get(flag):
            parts.append(f"--{flag.replace('_', '-')}")
    if build.get("precision") and build.get("precision") != sidecar.get("precision"):
        parts += ["--precision", build["precision"]]
    return " ".join(parts + ["--force"])
