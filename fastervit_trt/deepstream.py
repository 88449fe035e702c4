"""DeepStream: an nvinfer classifier config and labels file, every value from the export itself.

nvinfer scales each frame (primary) or object (secondary) to ``infer-dims`` whole, with no
crop (``maintain-aspect-ratio`` pads instead of stretching), then feeds
``y = net-scale-factor * (x - offsets[c])``: one scale for every channel, so ImageNet's
per-channel std cannot be expressed, and averaging it gives every model a wrong input. An
export with ``--input pixels`` takes ``x`` itself (float NCHW, 0..255) and normalises per
channel inside the graph, so the config runs with ``net-scale-factor=1`` and zero offsets
and the engine sees the toolkit's own input; ``--softmax`` gives nvinfer's classifier parser
the probabilities it reads (it attaches the most probable label above
``classifier-threshold``). The labels file is nvinfer's classifier form: one line per
output, the class names in order (the export's own ``--class-names``, else its label set's),
separated by ';'.

The export's transform must be the one nvinfer applies: a plain resize to the input size,
which timm calls ``squash`` at ``crop_pct`` 1.0. Any variant exported with
``--crop-mode squash --crop-pct 1`` (and faster_vit_4_21k_384 / _512 and the digits fixture,
whose own transform it is) runs exactly. A centre crop, or a resize by a ``crop_pct`` below 1,
is refused in one line naming the ``fastervit-export`` command with every missing flag (or
preprocess with nvdspreprocess instead).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import check_writable, write_bytes
from .errors import ModelFileError, OptionsError, ServiceError
from .quant_formats import QUANT_FORMATS
from .runtime.labels import model_class_names
from .sidecar import export_command, read_metadata, read_sidecar

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode: NvDsInferNetworkMode
# scaling-filter: NvBufSurfTransform_Inter, GPU filters (Algo1: GPU cubic, Algo3: GPU Lanczos)
SCALING_FILTERS = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos": 4}
PROCESS_MODES = {"primary": 1, "secondary": 2}
PLAIN_RESIZE = ("--crop-mode squash", "--crop-pct 1")  # the export flags of nvinfer's transform
EXPORT_FLAGS = (*PLAIN_RESIZE, "--input pixels", "--softmax")  # what an export for nvinfer needs


@dataclass(frozen=True)
class DeepStreamOptions:
    """The nvinfer settings that are not the export's; each field's metadata spells its
    ``fastervit-deepstream`` flag."""

    process_mode: str = field(  # "secondary": classify the objects of detector ``operate_on_gie_id``
        default="primary",
        metadata={
            "flag": "--process-mode",
            "choices": tuple(PROCESS_MODES),
            "help": "primary: whole frames; secondary: the objects of another nvinfer (a detector)",
        },
    )
    threshold: float = field(
        default=0.5,
        metadata={
            "flag": "--threshold",
            "range": (0, 1),
            "help": "classifier-threshold: the least probability at which a label is attached",
        },
    )
    gie_unique_id: int = field(default=1, metadata={"flag": "--gie-unique-id", "range": (1, None)})
    operate_on_gie_id: int = field(  # secondary mode only
        default=1,
        metadata={
            "flag": "--operate-on-gie-id",
            "range": (1, None),
            "help": "secondary mode: the gie-unique-id of the detector whose objects are classified",
        },
    )
    gpu_id: int = field(default=0, metadata={"flag": "--gpu-id", "range": (0, None)})
    force: bool = field(default=False, metadata={"flag": "--force", "help": "overwrite existing files"})

    def __post_init__(self) -> None:
        if self.process_mode not in PROCESS_MODES:
            raise OptionsError(f"process mode must be primary or secondary, not {self.process_mode!r}")
        if not 0 <= self.threshold <= 1:
            raise OptionsError(f"--threshold {self.threshold} is a probability: 0 to 1")


def describe(model_path: Path) -> dict:
    """What nvinfer needs of an export: its metadata, ONNX and engine paths, batch, precision."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelFileError(f"{model_path}: no such model file; export one with fastervit-export --input pixels")
    if model_path.suffix == ".onnx":
        import onnx

        metadata = read_metadata(onnx.load(str(model_path), load_external_data=False))
        return {
            "metadata": metadata,
            "onnx": model_path.resolve(),
            "engine": None,
            "batch": (metadata.get("batch_profile") or [1])[-1],
            "precision": metadata.get("precision"),
        }
    if model_path.suffix in (".engine", ".plan"):
        sidecar = read_sidecar(model_path)
        if sidecar is None:
            raise ModelFileError(
                f"{model_path}: no sidecar beside the engine, so its preprocessing is unknown; "
                "build it with fastervit-build, or pass the .onnx"
            )
        onnx_path = (sidecar.get("onnx") or {}).get("path")
        outputs = [o["name"] for o in sidecar["outputs"]]
        recorded = {
            "preprocess": sidecar.get("preprocess"),
            "model": sidecar.get("model"),
            "arch": sidecar.get("arch"),
            "features": sidecar.get("features"),
            "label_set": sidecar.get("label_set"),
            "class_names": sidecar.get("class_names"),
            "output": sidecar.get("output") or (outputs[0] if outputs in (["probabilities"], ["embedding"]) else None),
        }
        metadata = {key: value for key, value in recorded.items() if value is not None}  # absent: the ONNX's
        if onnx_path and Path(onnx_path).is_file():  # the export's own record (quantization, input)
            import onnx

            metadata = {**read_metadata(onnx.load(onnx_path, load_external_data=False)), **metadata}
        return {
            "metadata": metadata,
            "onnx": Path(onnx_path) if onnx_path else None,
            "engine": model_path.resolve(),
            "batch": sidecar["inputs"][0]["profile"]["max"][0],
            "precision": sidecar.get("precision"),
        }
    raise ModelFileError(f"{model_path}: expected an .onnx export or an .engine with its sidecar")


def _check(model_path: Path, info: dict) -> dict:
    """The export's preprocessing when nvinfer can reproduce it; one clear refusal otherwise."""
    metadata = info["metadata"]
    preprocess = metadata.get("preprocess")
    if not preprocess:
        raise ModelFileError(
            f"{model_path}: has no fastervit-trt metadata, so its preprocessing is unknown; "
            "export it with fastervit-export --input pixels --softmax"
        )
    if metadata.get("features") or metadata.get("output") == "embedding":
        kind = "a backbone (feature maps" if metadata.get("features") else "an embedding model (a pooled vector"
        raise ServiceError(f"{model_path}: {kind} out, no classes); nvinfer's classifier needs a classifier export")
    missing = _missing_flags(preprocess, metadata)
    if missing:
        changes: dict[str, list[str] | None] = {  # with the plain resize this export may have: kept
            flag.split()[0]: flag.split()[1:] for flag in EXPORT_FLAGS if flag in missing or flag in PLAIN_RESIZE
        }
        folder = info["onnx"].parent if info.get("onnx") else None
        command = export_command(metadata, info["precision"] or "fp16", changes, folder)
        *first, last = missing
        named = " and ".join(filter(None, [", ".join(first), last]))
        raise ServiceError(
            f"{model_path}: export it with {named} ({'; '.join(dict.fromkeys(missing.values()))}): {command}"
        )
    if preprocess["interpolation"] not in SCALING_FILTERS:
        raise ServiceError(
            f"{model_path}: interpolation {preprocess['interpolation']!r} has no nvinfer "
            f"scaling-filter; choose from {', '.join(SCALING_FILTERS)}"
        )
    quant = QUANT_FORMATS.get(info["precision"])
    if quant is not None and not quant.nvinfer_builds_onnx and info["engine"] is None:
        raise ServiceError(
            f"{model_path}: nvinfer builds an ONNX file with its precision flags and has no {quant.label} "
            "mode; build the engine with fastervit-build where DeepStream runs (its TensorRT) "
            "and pass the .engine"
        )
    return preprocess


def _missing_flags(preprocess: dict, metadata: dict) -> dict[str, str]:
    """The ``EXPORT_FLAGS`` an export lacks for nvinfer, each with the reason it needs it."""
    crop_mode, crop_pct = preprocess["crop_mode"], float(preprocess["crop_pct"])
    height, width = preprocess["input_size"]
    crop = (
        f"{metadata.get('model') or 'the model'} is evaluated with crop_mode {crop_mode} at crop_pct {crop_pct:g}, "
        f"and nvinfer cannot crop: it scales the whole frame or object to {height}x{width}, a plain resize, "
        "unless nvdspreprocess crops before it"
    )
    checks = {
        "--crop-mode squash": (crop_mode == "squash", crop),
        "--crop-pct 1": (crop_pct == 1.0, crop),
        "--input pixels": (
            preprocess.get("input_format") == "pixels",
            "nvinfer sends float pixels with one scale for all channels, which cannot be ImageNet's "
            "per-channel normalisation",
        ),
        "--softmax": (
            metadata.get("output") == "probabilities",
            "nvinfer's classifier parser reads probabilities, not logits",
        ),
    }
    return {flag: why for flag, (ok, why) in checks.items() if not ok}


def nvinfer_config(model_path: Path, info: dict, labels: Path, options: DeepStreamOptions = DeepStreamOptions()) -> str:
    """The ``[property]`` key file nvinfer reads for ``model_path`` (an export or its engine,
    as ``describe`` read it)."""
    preprocess = _check(Path(model_path), info)
    metadata = info["metadata"]
    height, width = preprocess["input_size"]
    precision = info["precision"]
    quant = QUANT_FORMATS.get(precision)
    keys = {
        "gpu-id": options.gpu_id,
        "net-scale-factor": 1.0,
        "offsets": "0;0;0",
        "model-color-format": 0,  # RGB: the toolkit's preprocessing converts every image to RGB
        **({"onnx-file": info["onnx"]} if info["onnx"] else {}),
        **({"model-engine-file": info["engine"]} if info["engine"] else {}),
        "infer-dims": f"3;{height};{width}",
        "batch-size": info["batch"],
        "network-mode": NETWORK_MODES[quant.network_mode if quant else precision],
        "network-type": 1,  # classifier
        "process-mode": PROCESS_MODES[options.process_mode],
        "gie-unique-id": options.gie_unique_id,
        "classifier-threshold": options.threshold,
        "labelfile-path": labels.resolve(),
        "output-blob-names": "probabilities",
        "maintain-aspect-ratio": 0,  # squash: both sides to the input size, as the model's transform
        "scaling-filter": SCALING_FILTERS[preprocess["interpolation"]],
        "scaling-compute-hw": 1,
    }  # the GPU's filters (Jetson's VIC has no plain cubic)
    cache = (metadata.get("quantization") or {}).get("cache")
    if quant is not None and quant.nvinfer_calib_file and cache and Path(cache).is_file():
        keys["int8-calib-file"] = Path(cache).resolve()
    if options.process_mode == "secondary":
        keys["operate-on-gie-id"] = options.operate_on_gie_id
    header = (
        f"# nvinfer classifier config for {metadata.get('model')} ({precision}), written by fastervit-deepstream\n"
        f"# from {model_path}: input pixels 0..255 normalised inside the graph, probabilities out\n"
    )
    return header + "[property]\n" + "".join(f"{key}={value}\n" for key, value in keys.items())


def labels_file(model_path: Path, info: dict) -> str:
    """nvinfer's classifier labels: one line, the class names in output order (the export's
    own, else its label set's), ';'-separated."""
    metadata = info["metadata"]
    names = model_class_names(metadata, int(metadata["arch"]["num_classes"]))
    broken = next((name for name in names if ";" in name or "\n" in name or "\r" in name), None)
    if broken is not None:
        raise ServiceError(
            f"{model_path}: class name {broken!r} holds ';' or a line break, which split nvinfer's one-line "
            "labels file; re-export with --class-names free of them"
        )
    return ";".join(names) + "\n"


def write_deepstream(
    model_path: Path, out: Path, options: DeepStreamOptions = DeepStreamOptions()
) -> tuple[Path, Path]:
    """Write ``<out>/config_infer_<model>.txt`` and ``<out>/labels_<model>.txt``; both paths."""
    model_path, out = Path(model_path), Path(out)
    name = model_path.stem + ("_secondary" if options.process_mode == "secondary" else "")
    config, labels = out / f"config_infer_{name}.txt", out / f"labels_{model_path.stem}.txt"
    info = describe(model_path)
    text, names = (
        nvinfer_config(model_path, info, labels, options),
        labels_file(model_path, info).encode(),
    )  # refusals first
    same_labels = labels.is_file() and labels.read_bytes() == names  # a primary and a secondary config share it
    check_writable([config] if same_labels else [config, labels], options.force)
    write_bytes(labels, names)
    write_bytes(config, text.encode())
    return config, labels


def launch_example(config: Path) -> str:
    """A gst-launch-1.0 line running ``config`` on an H.264 file (``!`` is GStreamer's link)."""
    return (
        "gst-launch-1.0 filesrc location=video.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 "
        "nvstreammux name=m batch-size=1 width=1280 height=720 ! "
        f"nvinfer config-file-path={shlex.quote(str(config))} ! fakesink"
    )
