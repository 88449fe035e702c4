"""Triton Inference Server: write a model repository from an engine or ONNX, or serve in-process.

``write_model_repository("engines/x.engine", "models/")`` writes

    models/<name>/config.pbtxt
    models/<name>/1/model.plan     (TensorRT backend, platform "tensorrt_plan")
                    model.onnx     (ONNX Runtime backend, platform "onnxruntime_onnx")

with max_batch_size and dims from the engine's profile (sidecar) or the ONNX metadata,
dynamic batching (preferred sizes: the profile's opt and max), an instance group, and the
preprocessing as ``parameters`` so clients know what to send. A classifier also gets
``models/<name>/labels.txt`` (its class names, one a line, in output order: the export's own
names, else its label set's) named by the output's ``label_filename``, so Triton's
classification extension (an output requested with ``class_count=k``) answers
"score:index:name". Backbones and embedding models have no classes and get none.
``serve_pytriton`` binds the toolkit's own runtime to a real Triton server (PyTriton) for CPU
machines and tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import check_writable, staged, write_bytes
from .errors import ModelFileError, OptionsError, ServiceError
from .runtime.labels import model_class_names
from .sidecar import DEFAULT_BATCH_PROFILE, read_metadata

LABELS_FILE = "labels.txt"  # an output's label_filename, relative to its model's folder
INSTANCE_KINDS = ("gpu", "cpu")  # Triton's instance_group kinds this repository can ask for
_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_TRITON_TYPES = {
    "float": "TYPE_FP32",
    "float32": "TYPE_FP32",
    "half": "TYPE_FP16",
    "float16": "TYPE_FP16",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
}


@dataclass(frozen=True)
class TritonOptions:
    """One model repository's settings; each field's metadata spells its ``fastervit-triton``
    flag (``cli/common.py``: ``add_options``)."""

    name: str | None = field(
        default=None, metadata={"flag": "--name", "help": "model name in the repository (default: the file name)"}
    )
    instances: int = field(
        default=1, metadata={"flag": "--instances", "range": (1, None), "help": "instance_group count"}
    )
    kind: str | None = field(  # default: gpu for engines, cpu for ONNX
        default=None,
        metadata={
            "flag": "--kind",
            "choices": INSTANCE_KINDS,
            "help": "instance kind (default: gpu for engines, cpu for ONNX)",
        },
    )
    max_queue_delay_us: int = field(
        default=100,
        metadata={
            "flag": "--max-queue-delay-us",
            "range": (0, None),
            "help": "dynamic batching: how long a request may wait for others",
        },
    )
    image_bytes: bool = field(  # also a Python-backend preprocessing model and an ensemble taking bytes
        default=False,
        metadata={
            "flag": "--image-bytes",
            "help": "also write <name>_preprocess (Python backend: decodes image bytes with the "
            "model's preprocessing) and the ensemble <name>_bytes, so clients send JPEG/PNG "
            "bytes and get logits",
        },
    )
    force: bool = False

    def __post_init__(self) -> None:
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise OptionsError(
                f"--name {self.name!r}: a Triton model name is letters, digits, '_', '-' "
                "and '.' (not starting with '.'), so it stays a folder inside --repo"
            )
        if self.instances < 1:
            raise OptionsError(f"--instances must be at least 1, not {self.instances}")
        if self.max_queue_delay_us < 0:
            raise OptionsError(f"--max-queue-delay-us must be at least 0, not {self.max_queue_delay_us}")
        if self.kind not in (None, *INSTANCE_KINDS):
            raise OptionsError(f"--kind must be gpu or cpu, not {self.kind!r}")


def _describe(model_path: Path) -> dict:
    """Batch profile, I/O and preprocessing of an engine (sidecar) or ONNX (metadata)."""
    if model_path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(model_path), load_external_data=False)
        meta = read_metadata(model)
        graph_in, graph_outs = model.graph.input[0], list(model.graph.output)
        dtype = lambda v: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
        dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]
        axes = list(graph_in.type.tensor_type.shape.dim)
        if not axes or axes[0].HasField("dim_value") or not all(d.dim_value > 0 for d in axes[1:]):
            shape = [d.dim_param or d.dim_value for d in axes] or "unknown"
            raise ModelFileError(
                f"{model_path}: input {graph_in.name!r} has shape {shape}; Triton's batching "
                "needs a symbolic batch axis and fixed C, H, W: re-export with fastervit-export"
            )
        if any(dtype(v) not in _TRITON_TYPES for v in (graph_in, *graph_outs)):
            raise ModelFileError(
                f"{model_path}: input/output types {dtype(graph_in)}/"
                f"{','.join(dtype(v) for v in graph_outs)}; the toolkit serves image "
                "models with float or uint8 input and float outputs"
            )
        outputs = [(v.name, dtype(v), dims(v)) for v in graph_outs]
        return {
            "platform": "onnxruntime_onnx",
            "file": "model.onnx",
            "batch": meta.get("batch_profile", list(DEFAULT_BATCH_PROFILE)),
            "input": (graph_in.name, dtype(graph_in), dims(graph_in)),
            "outputs": outputs,
            "preprocess": meta.get("preprocess") or {},
            "model": meta.get("model"),
            "labels": _class_labels(model_path, meta, outputs),
        }
    from .runtime.tensorrt_backend import verify_engine

    sidecar = verify_engine(model_path, check_device=False)  # sha256 and TensorRT version, as load() does
    if not sidecar:
        raise ModelFileError(
            f"{model_path}: no sidecar; Triton's config needs the engine's profile "
            "and I/O: rebuild it with fastervit-build"
        )
    (io_in,) = sidecar["inputs"]
    profile = io_in["profile"]
    outputs = [(o["name"], o["dtype"], o["shape"][1:]) for o in sidecar["outputs"]]
    return {
        "platform": "tensorrt_plan",
        "file": "model.plan",
        "batch": [profile["min"][0], profile["opt"][0], profile["max"][0]],
        "input": (io_in["name"], io_in["dtype"], io_in["shape"][1:]),
        "outputs": outputs,
        "preprocess": sidecar.get("preprocess") or {},
        "model": sidecar.get("model"),
        "labels": _class_labels(model_path, sidecar, outputs),
    }


def _class_labels(model_path: Path, meta: dict, outputs: list[tuple[str, str, list[int]]]) -> str | None:
    """The labels file of a classifier (one class name a line, in output order, from the
    metadata or sidecar ``meta``); None for a backbone (feature maps) or an embedding model."""
    if meta.get("features") or meta.get("output") == "embedding" or len(outputs) != 1:
        return None
    name, _, dims = outputs[0]
    if name == "embedding" or len(dims) != 1 or dims[0] < 1:  # dims[0] 0: a symbolic class axis
        return None
    names = model_class_names(meta, dims[0])
    broken = next((n for n in names if "\n" in n or "\r" in n), None)
    if broken is not None:
        raise ModelFileError(
            f"{model_path}: class name {broken!r} spans lines, and Triton's labels file holds one name a line; "
            "re-export with each name on one line"
        )
    return "".join(f"{n}\n" for n in names)


def _tensor(entry: tuple[str, str, list[int]], layout: str | None = None, labels: bool = False) -> str:
    """One ModelInput/ModelOutput; ``layout`` (NCHW or NHWC) becomes the input's ``format``,
    ``labels`` names the model folder's labels file in the output's ``label_filename``."""
    tensor_name, dtype, dims = entry
    data_type = _TRITON_TYPES.get(dtype, dtype)
    fmt = f"\n    format: FORMAT_{layout}" if layout else ""
    label = f'\n    label_filename: "{LABELS_FILE}"' if labels else ""
    return (
        f'  {{\n    name: "{tensor_name}"\n    data_type: {data_type}{fmt}\n'
        f"    dims: [ {', '.join(map(str, dims))} ]{label}\n  }}"
    )


def _outputs(info: dict) -> str:
    """The ModelOutputs (a classifier's one, with its labels; a backbone's feature maps),
    comma-separated as the text format wants."""
    return ",\n".join(_tensor(entry, labels=info["labels"] is not None) for entry in info["outputs"])


def _layout(info: dict) -> str:
    """The classifier input's layout: NHWC uint8 images (``--input uint8``) or NCHW floats."""
    return "NHWC" if info["preprocess"].get("input_format") == "uint8" else "NCHW"


def model_config(name: str, info: dict, options: TritonOptions) -> str:
    """The config.pbtxt text (Triton's ModelConfig in protobuf text format)."""
    low, opt, high = info["batch"]
    kind = options.kind or ("gpu" if info["platform"] == "tensorrt_plan" else "cpu")

    parameters = "".join(
        f'parameters {{\n  key: "preprocess.{key}"\n  value: {{ string_value: {json.dumps(json.dumps(value))} }}\n}}\n'
        for key, value in sorted(info["preprocess"].items())
    )
    if info["model"]:
        parameters = (
            f'parameters {{\n  key: "fastervit.model"\n  value: {{ string_value: "{info["model"]}" }}\n}}\n'
            + parameters
        )
    return (
        f'name: "{name}"\nplatform: "{info["platform"]}"\nmax_batch_size: {high}\n'
        f"input [\n{_tensor(info['input'], _layout(info))}\n]\noutput [\n{_outputs(info)}\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, sorted({opt, high})))} ]\n"
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {options.instances}\n    kind: KIND_{kind.upper()}\n  }}\n]\n" + parameters
    )


def write_model_repository(model_path: Path, repo: Path, options: TritonOptions = TritonOptions()) -> Path:
    """Write ``repo/<name>/config.pbtxt`` and ``repo/<name>/1/model.{plan,onnx}``; returns the model folder."""
    model_path, repo = Path(model_path), Path(repo)
    if not model_path.is_file():
        raise ModelFileError(f"{model_path}: no such engine or ONNX file")
    if model_path.suffix not in (".onnx", ".engine", ".plan"):
        raise ModelFileError(f"{model_path}: expected an .engine/.plan or .onnx file")
    info = _describe(model_path)
    if info["platform"] == "tensorrt_plan" and options.kind == "cpu":
        raise OptionsError(
            f"{model_path}: a TensorRT plan runs on a GPU only; drop --kind cpu (or serve the .onnx on CPUs)"
        )
    name = options.name or model_path.stem
    if not _NAME.fullmatch(name):
        raise OptionsError(f"{model_path}: {name!r} is not a Triton model name; pass --name")
    folder = repo / name
    target = folder / "1" / info["file"]
    external = model_path.with_name(model_path.name + ".data")
    copies = [(model_path, target)]
    if model_path.suffix == ".onnx" and external.is_file():  # referenced by its original name
        copies.append((external, target.parent / external.name))
    labels = {folder / LABELS_FILE: info["labels"]} if info["labels"] is not None else {}
    extra = bytes_models(name, info, options) if options.image_bytes else {}
    check_writable(
        [folder / "config.pbtxt", *(dst for _, dst in copies), *labels, *(repo / relative for relative in extra)],
        options.force,
    )
    for src, dst in copies:  # the model and labels first, the config last: Triton never sees a config without them
        copy_atomic(src, dst)
    for path, text in labels.items():
        write_bytes(path, text.encode())
    write_bytes(folder / "config.pbtxt", model_config(name, info, options).encode())
    for relative, text in extra.items():  # model.py before each config.pbtxt (sorted)
        write_bytes(repo / relative, text.encode())
    return folder


def bytes_models(name: str, info: dict, options: TritonOptions) -> dict[str, str]:
    """Files (relative to the repository) of ``<name>_preprocess``, a Python-backend model that
    decodes image bytes with the toolkit's preprocessing, and ``<name>_bytes``, the ensemble
    that feeds it to the model: clients send encoded images, get its outputs (logits, or a
    backbone's feature maps)."""
    _, _, high = info["batch"]
    input_name, input_dtype, input_dims = info["input"]
    image = ("image", "TYPE_STRING", [1])
    preprocess = (
        f'name: "{name}_preprocess"\nbackend: "python"\nmax_batch_size: {high}\n'
        f"input [\n{_tensor(image)}\n]\noutput [\n{_tensor(info['input'])}\n]\n"
        f"instance_group [\n  {{\n    count: {options.instances}\n    kind: KIND_CPU\n  }}\n]\n"
        f'parameters {{\n  key: "preprocess"\n  value: {{ string_value: '
        f"{json.dumps(json.dumps(info['preprocess']))} }}\n}}\n"
    )
    ensemble = (
        f'name: "{name}_bytes"\nplatform: "ensemble"\nmax_batch_size: {high}\n'
        f"input [\n{_tensor(image)}\n]\noutput [\n{_outputs(info)}\n]\n"
        f"ensemble_scheduling {{\n  step [\n"
        f'    {{\n      model_name: "{name}_preprocess"\n      model_version: -1\n'
        f'      input_map {{ key: "image" value: "image" }}\n'
        f'      output_map {{ key: "{input_name}" value: "preprocessed" }}\n    }},\n'
        f'    {{\n      model_name: "{name}"\n      model_version: -1\n'
        f'      input_map {{ key: "{input_name}" value: "preprocessed" }}\n'
        + "".join(f'      output_map {{ key: "{output}" value: "{output}" }}\n' for output, _, _ in info["outputs"])
        + "    }\n  ]\n}\n"
    )
    code = (Path(__file__).parent / "triton_preprocess.py").read_text()
    # Triton (2.51, measured) names an ensemble's classes from the ensemble's own label_filename, and
    # only without one passes the composing model's through: the ensemble's config says it itself
    labels = {f"{name}_bytes/{LABELS_FILE}": info["labels"]} if info["labels"] is not None else {}
    return {
        f"{name}_preprocess/1/model.py": code,
        f"{name}_preprocess/config.pbtxt": preprocess,
        f"{name}_bytes/1/.keep": "",
        **labels,  # before the config that names it
        f"{name}_bytes/config.pbtxt": ensemble,
    }


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file: a full disk leaves no partial copy."""
    with staged(dst) as tmp:
        shutil.copyfile(src, tmp)


def serve_pytriton(
    model, name: str, max_queue_delay_us: int = 500, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0
):
    """A started PyTriton server (loopback) serving ``model`` (a runtime InferenceModel) with
    dynamic batching, as ``name`` (the model's own input: preprocessed floats, or uint8 crops
    for a ``--input uint8`` model) and ``<name>_bytes`` (encoded images in); use it as a
    context manager or call ``.stop()``."""
    if model.kind != "classifier":
        raise ServiceError(
            f"{model.source}: PyTriton serving here is for classifiers; serve a {model.kind} model "
            "with Triton itself: fastervit-triton writes its config with every output"
        )
    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # Triton's Python-backend stub links libpython by name; point it at this interpreter's
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and libdir not in os.environ.get("LD_LIBRARY_PATH", ""):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")

    @batch
    def infer(**inputs):  # the input tensor as the engine takes it
        (batch_input,) = inputs.values()
        return {"logits": model.run(batch_input)}

    @batch
    def infer_bytes(image):
        return {"logits": model.logits([bytes(item) for item in image.reshape(-1)])}

    triton = Triton(
        config=TritonConfig(
            http_address="127.0.0.1",
            grpc_address="127.0.0.1",
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            exit_on_error=True,
            log_verbose=0,
        )
    )
    triton.bind(
        model_name=name,
        infer_func=infer,
        inputs=[Tensor(name="input", dtype=model.preprocess.input_dtype, shape=model.preprocess.input_shape)],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(len(model.names),))],
        config=ModelConfig(
            max_batch_size=model.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)
        ),
        strict=True,
    )
    triton.bind(
        model_name=f"{name}_bytes",
        infer_func=infer_bytes,  # encoded JPEG/PNG in, logits out
        inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(len(model.names),))],
        config=ModelConfig(
            max_batch_size=model.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)
        ),
        strict=True,
    )
    triton.run()
    return triton
