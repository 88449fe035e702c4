"""What artifacts say about themselves: the engine sidecar and the ONNX metadata entry.

The engine sidecar is a plain JSON file next to ``x.engine`` describing how it was made.

Never a header inside the engine, so trtexec, Triton and C++ load the engine untouched.
The runtime reads it for preprocessing, labels and I/O, and checks the engine's sha256 and
TensorRT version against it before deserializing.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from pathlib import Path

from .artifacts import sha256
from .errors import EngineMismatchError, ModelFileError
from .flags import replace_flags

SCHEMA_VERSION = 1
DEFAULT_BATCH_PROFILE = (1, 8, 32)  # MIN, OPT, MAX of an engine profile when none is given
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
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{path}: unreadable sidecar ({exc}); rebuild the engine or delete "
            "the sidecar to load the engine without it"
        ) from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise EngineMismatchError(
            f"{path}: sidecar schema {data.get('schema_version')} is not "
            f"{SCHEMA_VERSION}; rebuild the engine with this toolkit"
        )
    return data


def engine_sidecar(
    metadata: dict,
    precision: str,
    inputs: list[dict],
    outputs: list[dict],
    tensorrt: dict,
    build: dict,
    device: dict,
    onnx_path: Path,
    engine_path: Path,
    calib_cache: Path | None,
) -> dict:
    """The sidecar of a just-written engine: the export's ``metadata`` (model, preprocessing,
    labels, features), the network's I/O, the TensorRT that built it with the ``build``
    settings, the GPU, and the files it came from and is (by sha256)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": metadata.get("model"),
        "precision": precision,
        "arch": metadata.get("arch"),
        "preprocess": metadata.get("preprocess"),
        "label_set": (metadata.get("preprocess") or {}).get("label_set"),
        "class_names": metadata.get("class_names"),  # the export's own names, when it was given them
        "weights_sha256": metadata.get("weights_sha256"),  # what the weights are: engines of others are kept
        "output": metadata.get("output"),  # "probabilities", "embedding" or None (logits / feature maps)
        "features": metadata.get("features"),  # a backbone's stages, norm and strides
        "inputs": inputs,
        "outputs": outputs,
        "tensorrt": tensorrt,
        "build": build,
        "device": device,
        "onnx": {"path": str(onnx_path.resolve()), "sha256": sha256(onnx_path)},  # rebuild hints work anywhere
        "calibration_cache": {"path": str(calib_cache), "sha256": sha256(calib_cache)} if calib_cache else None,
        "engine": {"path": str(engine_path), "sha256": sha256(engine_path), "bytes": engine_path.stat().st_size},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def rebuild_command(sidecar: dict, engine: Path | None = None) -> str:
    """The fastervit-build command line, shell-quoted, that rebuilds the engine described by
    ``sidecar`` at ``engine`` (default: where it was built) with the options it was built with."""
    build = sidecar.get("build", {})
    parts = [
        "fastervit-build",
        sidecar.get("onnx", {}).get("path", "<model.onnx>"),
        "--output",
        str(engine or sidecar.get("engine", {}).get("path", "<model.engine>")),
        "--batch",
        ",".join(str(b) for b in build.get("batch", DEFAULT_BATCH_PROFILE)),
    ]
    flavour = (sidecar.get("tensorrt") or {}).get("flavour")
    if flavour:
        parts += ["--backend", flavour]
    if not build.get("strongly_typed", True):  # precision from builder flags (TensorRT 10)
        parts += ["--precision", sidecar.get("precision", "fp32")]
    for flag, option in (
        ("workspace_mib", "--workspace"),
        ("opt_level", "--opt-level"),
        ("timing_cache", "--timing-cache"),
        ("calib_cache", "--calib-cache"),
        ("calib_data", "--calib-data"),
    ):
        if build.get(flag) is not None:
            parts += [option, str(build[flag])]
    for flag in ("hardware_compat", "version_compat"):
        if build.get(flag):
            parts.append(f"--{flag.replace('_', '-')}")
    if build.get("compute_capabilities"):
        parts += ["--compute-capability", ",".join(build["compute_capabilities"])]
    return shlex.join(parts + ["--force"])


def export_command(
    metadata: dict,
    precision: str,
    changes: dict[str, list[str] | None] | None = None,
    output_dir: Path | None = None,
) -> str:
    """The fastervit-export command line that re-exports the model an ONNX file's ``metadata``
    describes at ``precision`` with ``changes`` (flag -> its new words; None drops it), into
    ``output_dir`` (the folder the export is in), shell-quoted: every option of that export kept
    (its recorded ``export_argv``), only those named changed."""
    where = {"--output-dir": [str(output_dir)]} if output_dir is not None else {}
    if "export_argv" in metadata:
        argv = list(metadata["export_argv"])
        new = {"--precision": [precision], **where, **(changes or {})}
        if "--name" in argv and precision != metadata.get("precision"):  # its own file, not the other precision's
            new.setdefault("--name", [f"{argv[argv.index('--name') + 1]}_{precision}"])
        return shlex.join(["fastervit-export", *replace_flags(argv, new)])
    parts = ["fastervit-export", "--variant", metadata.get("model", "NAME")]
    if metadata.get("checkpoint"):
        parts += ["--checkpoint", metadata["checkpoint"]]
        if (metadata.get("weights") or {}).get("key") in ("state_dict_ema", "model_ema"):
            parts += ["--weights", "ema"]
    resolution = (metadata.get("arch") or {}).get("resolution")
    if resolution and (metadata.get("arch") or {}).get("any_res"):
        parts += ["--resolution", *map(str, resolution)]
    if metadata.get("class_names_file"):
        parts += ["--class-names", metadata["class_names_file"]]
    preprocess = metadata.get("preprocess") or {}
    for name, source in (metadata.get("preprocess_from") or {}).items():
        if source == "options":  # what the checkpoint or variant would not give again
            value = preprocess[name]
            parts += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return shlex.join([parts[0], *replace_flags(parts[1:], {"--precision": [precision], **(changes or {})})])
