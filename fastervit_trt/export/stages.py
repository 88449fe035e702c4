"""The steps every export shares: build and trace the model, write the ONNX, validate it,
publish it whole, write the report. ``pipeline`` (FP32 / FP16) and ``quantized`` (INT8 / FP8)
compose them."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import __version__
from ..artifacts import check_same_weights, check_writable, paths_of, sha256, write_json
from ..compare import Comparison, compare, compare_outputs, flatten
from ..errors import CheckpointError, OptionsError
from ..flags import to_argv
from ..graph.ort_cpu import release_memory
from ..graph.ort_eval import InputSet, eval_chunk, ort_logits
from ..graph.weights import WeightFile, tensor_bytes
from ..models import (
    WEIGHT_CHOICES,
    Backbone,
    Checkpoint,
    FasterViT,
    Variant,
    check_arch,
    check_num_classes,
    create_model,
    list_models,
    read_checkpoint,
    variant_of,
)
from ..models.checkpoint import HF_WEIGHTS
from ..preprocess import INPUT_FORMATS, TRANSFORM_SETTINGS, Preprocess, TransformOptions, sample_inputs
from ..progress import Steps
from ..quant_formats import QUANT_FORMATS, TARGETS
from ..quant_formats import target as graph_target
from ..runtime.labels import label_set_names, read_class_names
from ..sidecar import DEFAULT_BATCH_PROFILE
from .deploy import Exportable, ImageInput, Probabilities, prepare_backbone, prepare_for_export
from .fp16 import IO_DTYPES
from .onnx_export import (
    DEFAULT_OPSET,
    PROTOBUF_LIMIT,
    attach_weights,
    finalize,
    model_bytes,
    simplify,
    trace_to_onnx,
)

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "faster_vit_0_224"  # exported when neither a variant nor a checkpoint says which
QUANTIZED = tuple(QUANT_FORMATS)  # calibrated: export/quantized.py
PRECISIONS = ("fp32", "fp16", *QUANTIZED)
STAGES = (1, 2, 3, 4)
MIN_OPSET, MAX_OPSET = 17, 21  # 17: LayerNormalization; up to 21 the exports validate and TensorRT-RTX builds them
FP32_TOLERANCE = 1e-4  # max |diff| <= tolerance x max |logit|
FP16_MIN_COSINE = 0.999


@dataclass(frozen=True)
class ExportOptions:
    """Everything one export needs; defaults match ``fastervit-export``'s.

    ``model`` None: the variant the checkpoint was trained as (its training run's record, else
    the variant its weights fit), or ``DEFAULT_VARIANT`` without one; ``num_classes`` None: the
    checkpoint's head (0: headless, a pooled-embedding output); ``class_names``: a file of one
    name per line, or the names; ``transform``: eval-transform settings that override the
    checkpoint's training record and the variant's defaults."""

    model: str | None = field(
        default=None,
        metadata={
            "flag": "--variant",
            "old": "--model",
            "metavar": "NAME",
            "help": f"registered variant ({len(list_models())} available: "
            "faster_vit_{0..6}_224, faster_vit_4_21k_{224,384,512,768}, "
            f"and *_any_res of each); default: the one --checkpoint was trained as, else {DEFAULT_VARIANT}",
        },
    )
    checkpoint: Path | None = field(
        default=None,
        metadata={
            "flag": "--checkpoint",
            "help": "official or fine-tuned .pth/.pth.tar/.safetensors weights (timm training checkpoint or "
            "plain state dict), or a timm / Hugging Face model folder (config.json beside model.safetensors "
            "or pytorch_model.bin, as timm's save_for_hf writes it); its number of classes, and the transform "
            "(and a folder's class names) recorded, are read from it; without one the model is randomly "
            "initialised (seeded)",
        },
    )
    num_classes: int | None = field(
        default=None,
        metadata={
            "flag": "--num-classes",
            "range": (0, None),
            "metavar": "N",
            "help": "classifier width, checked against the checkpoint's head (read from it when omitted); "
            "0: headless, the pooled embedding is the output",
        },
    )
    class_names: Path | tuple[str, ...] | None = field(
        default=None,
        metadata={
            "flag": "--class-names",
            "metavar": "FILE",
            "help": "one class name per line, in the head's order; stored in the ONNX and engine, used by "
            "infer, eval, serve, Triton and DeepStream (default: ImageNet-1k names for 1000-class "
            "models, else 'class <i>')",
        },
    )
    transform: TransformOptions = field(
        default=TransformOptions(),
        metadata={
            "group": "preprocessing (default: what the checkpoint's timm training args recorded, else the variant's)"
        },
    )
    weights: str = field(  # of a training checkpoint: "model" (state_dict) or "ema"
        default="model",
        metadata={
            "flag": "--weights",
            "choices": WEIGHT_CHOICES,
            "help": "which weights of a training checkpoint: state_dict (as the official "
            "validate.py without --use-ema) or state_dict_ema",
        },
    )
    resolution: tuple[int, int] | None = field(
        default=None,
        metadata={
            "flag": "--resolution",
            "nargs": 2,
            "range": (1, None),
            "metavar": ("H", "W"),
            "help": "input size; the variant's own when omitted",
        },
    )
    exact_preprocess: bool = field(  # True: decode every JPEG in full (bitwise timm); recorded
        default=False,
        metadata={
            "flag": "--exact-preprocess",
            "help": "decode every JPEG in full and resize the whole image, bitwise as timm "
            "(calibration and, through the recorded setting, inference); default: JPEGs of "
            "at least twice the resize size decode at a reduced scale and only the crop is "
            "resized, several times faster",
        },
    )
    precision: str = field(
        default="fp16",
        metadata={
            "flag": "--precision",
            "choices": PRECISIONS,
            "help": "fp16: float16 graph with FP32 islands for TensorRT's strong typing; "
            "int8 / fp8: calibrated Q/DQ (FP8 E4M3: Ada, Hopper, Blackwell GPUs); the "
            "classifier head stays FP16, and for FP8 also the stem and downsampling "
            "convolutions (every path runs through them)",
        },
    )
    target: str = field(
        default="tensorrt",
        metadata={
            "flag": "--target",
            "choices": tuple(TARGETS),
            "help": "the runtime the quantized graph is for: tensorrt (Q/DQ over FP16, TensorRT's fusion "
            "rules) or onnxruntime-cpu (INT8 only: Q/DQ over FP32 in the form ONNX Runtime's x86 int8 "
            "kernels fuse, uint8 activations, int32 biases; writes <variant>_int8_cpu.onnx, no engine)",
        },
    )
    features: tuple[int, ...] = field(  # stages whose outputs the graph returns instead of logits
        default=(),
        metadata={
            "flag": "--features",
            "parse": "stages",
            "nargs": "?",
            "const": STAGES,
            "metavar": "STAGES",
            "help": "export the backbone for detection: no head, one NCHW output per stage "
            "(stage1..stage4, strides 4..32, each taken before its downsampling); "
            "STAGES picks some, e.g. 2,3,4 (default: all four)",
        },
    )
    feature_norm: bool = field(  # each feature map through its level norm (official detection)
        default=False,
        metadata={
            "flag": "--feature-norm",
            "help": "each feature map through its level's BatchNorm, as the official detection "
            "backbones add it (stage 4: the trained classifier norm; stages 1-3: "
            "BatchNorm at its initial statistics, which detection training then learns)",
        },
    )
    input_format: str = field(  # "uint8" / "pixels": the graph takes uint8 NHWC / float NCHW 0..255 crops
        default="float",
        metadata={
            "flag": "--input",
            "dest": "input_format",
            "choices": tuple(INPUT_FORMATS),
            "help": "float: normalised float NCHW input; uint8: the resized, cropped uint8 "
            "NHWC image, cast and normalised inside the graph (4x fewer bytes to the "
            "GPU, no float math on the CPU; writes <variant>_<precision>_uint8in.onnx); "
            "pixels: the crop as float NCHW pixel values 0..255, normalised per channel "
            "inside the graph, as DeepStream's nvinfer sends them with net-scale-factor 1 "
            "(writes ..._pixelsin.onnx; see fastervit-deepstream)",
        },
    )
    softmax: bool = field(  # a classifier's output as probabilities (``probabilities``), not logits
        default=False,
        metadata={
            "flag": "--softmax",
            "help": "a classifier's output as softmax probabilities ('probabilities') instead of "
            "logits, as DeepStream's nvinfer classifier parser reads them; writes "
            "<variant>_<precision>_softmax.onnx",
        },
    )
    batch: tuple[int, int, int] = field(  # min, opt, max of the engine profile
        default=DEFAULT_BATCH_PROFILE,
        metadata={
            "flag": "--batch",
            "parse": "batch_profile",
            "metavar": "MIN,OPT,MAX",
            "help": "batch sizes of the engine's optimization profile",
        },
    )
    opset: int = field(
        default=DEFAULT_OPSET,
        metadata={
            "flag": "--opset",
            "range": (MIN_OPSET, MAX_OPSET),
            "help": f"ONNX opset ({MIN_OPSET}-{MAX_OPSET}: LayerNormalization needs 17)",
        },
    )
    io_dtype: str = field(
        default="fp32",
        metadata={"flag": "--io-dtype", "choices": IO_DTYPES, "help": "dtype of the FP16 graph's input and output"},
    )
    output_dir: Path = field(
        default=Path("export"),
        metadata={
            "flag": "--output-dir",
            "default": None,  # unset: engines go to engines/, not beside the ONNX
            "metavar": "DIR",
            "help": "where the .onnx and its .report.json go (default: export); "
            "engines go there too unless --engine-dir is given",
        },
    )
    seed: int = field(
        default=0, metadata={"flag": "--seed", "range": (0, None), "help": "seed of random weights and inputs"}
    )
    name: str | None = field(
        default=None,
        metadata={
            "flag": "--name",
            "metavar": "STEM",
            "help": "file name (stem) of the .onnx, its report, cache and engine, to keep two models of one "
            "variant apart (default: <variant>_<precision>, _embedding for a headless model, ...)",
        },
    )
    force: bool = field(
        default=False, metadata={"flag": "--force", "help": "overwrite existing outputs made from the same weights"}
    )
    validation_batch: int = 4
    external_data_threshold: int = PROTOBUF_LIMIT  # bytes above which weights go to <file>.data

    def __post_init__(self) -> None:
        paths_of(self, "checkpoint", "output_dir")
        if isinstance(self.class_names, str):
            object.__setattr__(self, "class_names", Path(self.class_names))
        elif self.class_names is not None and not isinstance(self.class_names, Path):
            object.__setattr__(self, "class_names", tuple(map(str, self.class_names)))
        if self.num_classes is not None and self.num_classes < 0:
            raise OptionsError(f"--num-classes must be 0 (headless) or more, not {self.num_classes}")
        if self.model is None:  # memory-mapped: reads the pickle, not the weights
            found = variant_of(read_checkpoint(self.checkpoint, self.weights)) if self.checkpoint else DEFAULT_VARIANT
            object.__setattr__(self, "model", found)
        if self.precision not in PRECISIONS:
            raise OptionsError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.input_format not in INPUT_FORMATS:
            raise OptionsError(f"input format must be one of {', '.join(INPUT_FORMATS)}, not {self.input_format!r}")
        shape = graph_target(self.target)
        if shape.name != "tensorrt" and self.precision not in shape.formats:
            raise OptionsError(
                f"--target {shape.name} shapes a quantized graph for {shape.label} ({', '.join(shape.formats)}), "
                f"not {self.precision}: pass --precision {shape.formats[0]}, or drop --target"
            )
        low, opt, high = self.batch
        if not 1 <= low <= opt <= high:
            raise OptionsError(f"batch profile must satisfy 1 <= MIN <= OPT <= MAX, got {low},{opt},{high}")
        if not set(self.features) <= set(STAGES) or len(set(self.features)) != len(self.features):
            raise OptionsError(f"feature stages must be distinct stages of {STAGES}, not {list(self.features)}")
        if self.feature_norm and not self.features:
            raise OptionsError("--feature-norm normalises feature maps: pass --features too")
        if self.softmax and self.features:
            raise OptionsError(
                "--softmax turns a classifier's logits into probabilities; a backbone (--features) has none"
            )
        object.__setattr__(self, "features", tuple(sorted(self.features)))
        if self.name is not None and (not self.name or Path(self.name).name != self.name or self.name.startswith(".")):
            raise OptionsError(f"--name {self.name!r}: a file name stem, without folders (use --output-dir for those)")

    @property
    def quantized(self) -> bool:
        """Whether the precision is calibrated (Q/DQ): int8 or fp8."""
        return self.precision in QUANTIZED

    @cached_property
    def headless(self) -> bool:
        """Whether the model outputs a pooled embedding (no head): ``num_classes`` 0, or a
        checkpoint without a head (its pickle read, memory-mapped)."""
        if self.num_classes is not None or self.checkpoint is None or self.features:
            return self.num_classes == 0 and not self.features
        try:
            return read_checkpoint(self.checkpoint, self.weights).num_classes == 0
        except CheckpointError:  # the export's preflight says what is wrong with the file
            return False

    @property
    def onnx_path(self) -> Path:
        """``<model>_<precision>.onnx``; ``..._cpu`` for ONNX Runtime's CPU target,
        ``..._features`` for a backbone's feature maps,
        ``..._uint8in`` / ``..._pixelsin`` for a uint8-image / float-pixel input."""
        if self.name:
            return self.output_dir / f"{self.name}.onnx"
        suffix = (
            ("_cpu" if self.target == "onnxruntime-cpu" else "")
            + ("_embedding" if self.headless else "")
            + ("_features" if self.features else "")
            + ("_softmax" if self.softmax else "")
            + ("" if self.input_format == "float" else f"_{self.input_format}in")
        )
        return self.output_dir / f"{self.model}_{self.precision}{suffix}.onnx"

    @property
    def report_path(self) -> Path:
        """``<model>_<precision>.report.json``: never the name of an engine's sidecar, even
        when engines are written to the same folder."""
        return report_path(self.onnx_path)


def weights_sha256(options: ExportOptions) -> str:
    """What an export's weights are, as its metadata and an engine's sidecar record them: the
    checkpoint file's sha256 (a model folder's weights file), or ``random-init seed N``."""
    if options.checkpoint is None:
        return f"random-init seed {options.seed}"
    path = options.checkpoint
    if path.is_dir():
        path = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), path / HF_WEIGHTS[0])
    stat = path.stat()
    return f"sha256:{_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"


@cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """``sha256`` of a file, once per file version in a process (the CLI checks the engine's too)."""
    return sha256(Path(path))


def report_path(onnx_path: Path) -> Path:
    """Where the export report of ``onnx_path`` lives."""
    return onnx_path.with_name(f"{onnx_path.stem}.report.json")


@dataclass(frozen=True)
class Plan:
    """What an export settles before any work: the variant at its resolution and head width,
    the eval transform (the one record every later stage reads) with where each setting came
    from, and the class names."""

    variant: Variant
    preprocess: Preprocess
    transform_from: dict[str, str]
    class_names: tuple[str, ...] | None
    class_names_from: str | None = None  # "--class-names", or a model folder's "config.json"
    weights_sha256: str | None = None  # what the weights are (``weights_sha256``): outputs of others are kept
    transform_note: str | None = None  # the warning when the checkpoint recorded no transform

    @property
    def label_set(self) -> str | None:
        """The variant's label set when the model's class names are that set's (a 5-class
        fine-tune of an ImageNet variant has none)."""
        named = label_set_names(self.variant.eval.label_set, self.variant.arch.num_classes)
        own = list(self.class_names) if self.class_names else None
        return self.variant.eval.label_set if named is not None and own in (None, named) else None

    def metadata(self) -> dict:
        """The plan as the ONNX metadata (and the engine sidecar) keep it."""
        return {
            "preprocess": {**self.preprocess.record(), "label_set": self.label_set},
            "preprocess_from": self.transform_from,
            "preprocess_note": self.transform_note,
            "class_names": list(self.class_names) if self.class_names else None,
            "class_names_from": self.class_names_from,
            "weights_sha256": self.weights_sha256,
        }


@dataclass
class ExportResult:
    onnx_path: Path
    report_path: Path
    report: dict = field(default_factory=dict)


@dataclass
class Traced:
    """What the model stage hands on: the weightless FP32 graph (weights in a ``WeightFile``),
    and PyTorch's logits on the validation inputs (and any ``probes``), computed before the
    PyTorch model was freed. Outputs are ``flatten``-ed: a backbone's feature maps as one
    row per input."""

    plan: Plan
    checkpoint: dict | None
    graph: onnx.ModelProto
    inputs: np.ndarray
    input_kind: str
    reference: np.ndarray
    probe_references: dict[str, np.ndarray] = field(default_factory=dict)


def trace_model(
    options: ExportOptions,
    plan: Plan,
    steps: Steps,
    weights: WeightFile,
    probes: dict[str, InputSet] | None = None,
) -> Traced:
    """The first three steps of every export: the eval model, PyTorch's reference logits
    (on inputs made with ``plan``'s transform), and the simplified FP32 graph whose weights go
    to ``weights``. The PyTorch model is transformed in place and freed, so at most one copy
    of the weights is ever in memory."""
    with steps.step(f"building {options.model}"):
        model = _build(options, plan)
        preprocess = plan.preprocess
        core = (
            Backbone(model, options.features, options.feature_norm)
            if options.features
            else Probabilities(model)
            if options.softmax
            else model
        )
        network = (
            core
            if preprocess.input_format == "float"
            else ImageInput(core, preprocess.mean, preprocess.std, channels_first=preprocess.input_format == "pixels")
        )
        inputs, input_kind = validation_inputs(plan, options)
        references = {name: _logits(network, x) for name, x in {"validation": inputs, **(probes or {})}.items()}
    checkpoint = model.checkpoint
    with steps.step("folding BatchNorm, layer scale and position bias"):
        if isinstance(core, Backbone):
            prepare_backbone(core)
        else:
            prepare_for_export(model, inplace=True)
    with steps.step(f"tracing to ONNX (opset {options.opset}) and simplifying"):
        graph = attach_weights(simplify(trace_to_onnx(network, options.opset)), network, weights)
        del model, core, network
        release_memory()
    validation = references.pop("validation")
    return Traced(plan, checkpoint, graph, inputs, input_kind, validation, references)


def _logits(model: Exportable, inputs: InputSet) -> np.ndarray:
    """PyTorch's (``flatten``-ed) outputs, a few inputs at a time (32 held-out images at
    768x768 at once need tens of GB)."""
    chunk = eval_chunk(inputs)

    def run(batch: np.ndarray) -> np.ndarray:
        outputs = model(torch.from_numpy(batch))
        return flatten([o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))])

    with torch.no_grad():
        return np.concatenate([run(inputs[i : i + chunk]) for i in range(0, len(inputs), chunk)])


def write_onnx(
    graph: onnx.ModelProto, metadata: dict, path: Path, weights: WeightFile, external_threshold: int = PROTOBUF_LIMIT
) -> tuple[dict, Path]:
    """Finalize, check and save ``graph`` to ``path`` (its weights in ``<path>.data`` above
    ``external_threshold``); returns its graph summary and a view of
    the same graph on the scratch weights (what validation runs: memory-mapped weights cost
    one copy, where reading an inline 1.5 GB file costs three). The metadata's I/O dtypes
    are read from the graph itself, so they cannot disagree with it."""
    dtype = lambda value: onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
    metadata["input"]["dtype"] = dtype(graph.graph.input[0])
    metadata["outputs"] = [
        {
            "name": value.name,
            "dtype": dtype(value),
            "shape": ["batch", *(d.dim_value for d in value.type.tensor_type.shape.dim[1:])],
        }
        for value in graph.graph.output
    ]
    graph = finalize(graph, metadata)
    view = weights.save_view(graph, "final.onnx")
    onnx.checker.check_model(str(view), full_check=True)
    # ``path`` is in the scratch folder: ``publish_onnx`` is what makes it appear, whole
    weights.save(graph, path, external=model_bytes(graph) > external_threshold)
    return graph_summary(graph), view


def publish_onnx(staged: Path, path: Path) -> None:
    """Move a finished, validated ONNX file (and its ``.data``) from the scratch folder into
    place: an export interrupted before this point leaves nothing new on disk. The old
    ``.onnx`` goes first, so an old file never stands beside new weights."""
    data, final_data = (p.with_name(p.name + ".data") for p in (staged, path))
    path.unlink(missing_ok=True)
    if data.exists():
        os.replace(data, final_data)
    else:
        final_data.unlink(missing_ok=True)  # stale weights of an older export
    os.replace(staged, path)


def write_report(options: ExportOptions, metadata: dict, summary: dict, steps: Steps, **sections) -> dict:
    """The JSON report beside the ONNX file: metadata, graph facts, timings, ``sections``."""
    report = {
        **metadata,
        "onnx": {
            "path": str(options.onnx_path),
            "sha256": sha256(options.onnx_path),
            "bytes": options.onnx_path.stat().st_size,
            **summary,
        },
        **sections,
        "seconds": steps.seconds,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__},
    }
    write_json(options.report_path, report)
    return report


def preflight(options: ExportOptions, extra_outputs: tuple[Path, ...] = ()) -> Plan:
    """Cheap checks before any work (model name, resolution, checkpoint, head width, class
    names, transform, outputs); returns the export's ``Plan``."""
    assert options.model is not None  # named by ExportOptions
    num_classes, checkpoint = options.num_classes, None
    if options.checkpoint is not None:  # memory-mapped: reads the pickle, not the weights
        checkpoint = read_checkpoint(options.checkpoint, options.weights)
        check_arch(checkpoint, options.model)
        num_classes = check_num_classes(checkpoint, num_classes)
    with torch.device("meta"):  # builds the shapes only: validates the resolution in ms
        variant = create_model(options.model, resolution=options.resolution, num_classes=num_classes).variant
    if options.softmax and not variant.arch.num_classes:
        raise OptionsError(
            f"{options.checkpoint}: a headless checkpoint (pooled embedding out) has no classes for --softmax; drop it"
        )
    names = _class_names(options, variant, checkpoint)
    named_by = None if names is None else "--class-names" if options.class_names is not None else "config.json"
    weights = weights_sha256(options)
    preprocess, sources, note = _transform(options, variant, checkpoint)
    plan = Plan(variant, preprocess, sources, names, named_by, weights, note)
    check_same_weights(options.report_path, weights, options.onnx_path)
    check_writable(
        [
            options.onnx_path,
            options.onnx_path.with_name(options.onnx_path.name + ".data"),
            options.report_path,
            *extra_outputs,
        ],
        options.force,
    )
    if options.checkpoint is None:
        log.warning(
            "no checkpoint given: %s gets RANDOM weights (seed %d); the files test the "
            "pipeline and are useless for predictions",
            options.model,
            options.seed,
        )
    return plan


def _transform(
    options: ExportOptions, variant: Variant, checkpoint: Checkpoint | None
) -> tuple[Preprocess, dict[str, str], str | None]:
    """The eval transform: ``options.transform``'s settings over the checkpoint's training
    record over the variant's defaults; where each setting came from; and the warning when a
    checkpoint recorded none (the variant's then applies to your weights)."""
    given = options.transform.given()
    trained = checkpoint.transform() if checkpoint else {}
    refused = checkpoint.refused_transform() if checkpoint else {}
    unresolved = [name for name in refused if name not in given]  # the user must choose
    if unresolved:
        raise CheckpointError(
            f"{options.checkpoint}: its training args ask for a transform this toolkit cannot apply "
            f"({'; '.join(refused[n] for n in unresolved)}); pass "
            f"{' '.join('--' + n.replace('_', '-') for n in unresolved)} to choose one"
        )
    chosen = {**trained, **given}
    preprocess = replace(
        Preprocess.from_config(replace(variant.eval, **chosen)),
        jpeg_draft=not options.exact_preprocess,
        input_format=options.input_format,
    )
    recorded = checkpoint.transform_source if checkpoint else ""
    sources = {
        name: "options" if name in given else recorded if name in trained else "variant" for name in TRANSFORM_SETTINGS
    }
    defaulted = [name for name, source in sources.items() if source == "variant"]
    note = None
    if checkpoint is not None and not trained and defaulted:  # your weights, the variant's transform: say so
        note = (
            f"{options.checkpoint} records no eval transform; using {variant.name}'s ("
            + ", ".join(f"{name} {_setting(getattr(preprocess, name))}" for name in defaulted)
            + "): if the model was trained with another, pass "
            + " ".join("--" + name.replace("_", "-") for name in defaulted)
        )
        log.warning("%s", note)
    return preprocess, sources, note


def _setting(value: object) -> str:
    """A transform setting as the warning shows it: ``[0.485, 0.456, 0.406]``, ``0.875``, ``bicubic``."""
    return str(list(value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)


def _class_names(options: ExportOptions, variant: Variant, checkpoint: Checkpoint | None) -> tuple[str, ...] | None:
    """The export's class names, one per class of the head: ``--class-names``, else a model
    folder's ``label_names`` (None: none given)."""
    source = options.class_names
    if source is None and checkpoint is not None and checkpoint.class_names:
        source = checkpoint.class_names
        log.info("class names: %d from %s", len(source), checkpoint.path / "config.json")
    if source is None:
        return None
    names = read_class_names(source) if isinstance(source, Path) else source
    where = source if isinstance(source, Path) else "class_names"
    if not isinstance(source, Path) and len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise OptionsError(f"{where}: {twice!r} appears twice; each class needs its own name")
    classes = variant.arch.num_classes
    if not classes:
        raise OptionsError(f"{where}: the model is headless (no classes, a pooled embedding out); drop the names")
    if len(names) != classes:
        of = f"{options.checkpoint}'s head" if options.checkpoint else f"{variant.name}'s head"
        raise OptionsError(
            f"{where}: {len(names)} class names, but {of} has {classes} classes; give one name per class, in "
            "the head's order"
        )
    return tuple(names)


def _build(options: ExportOptions, plan: Plan) -> FasterViT:
    torch.manual_seed(options.seed)
    return create_model(
        plan.variant.name,
        checkpoint=options.checkpoint,
        resolution=options.resolution,
        num_classes=plan.variant.arch.num_classes,
        weights=options.weights,
    )


def validation_inputs(plan: Plan, options: ExportOptions) -> tuple[np.ndarray, str]:
    """The shipped sample photos through the export's own preprocessing when present (and the
    model takes RGB images), else seeded random inputs; with a description for the report."""
    arch, preprocess = plan.variant.arch, plan.preprocess
    if arch.in_chans == 3:
        photos = sample_inputs(preprocess, options.validation_batch)
        if photos is not None:
            return photos, "shipped sample photos"
    rng = np.random.default_rng(options.seed)
    if preprocess.input_format != "float":
        shape = (options.validation_batch, *preprocess.input_shape)
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        return images.astype(preprocess.input_dtype), "seeded random images"
    shape = (options.validation_batch, arch.in_chans, *arch.resolution)
    return rng.standard_normal(shape, dtype=np.float32), "seeded random inputs"


def graph_summary(model: onnx.ModelProto) -> dict:
    """Node count, op histogram, dtypes: what the graph-quality checks and inspect read."""
    ops = Counter(node.op_type for node in model.graph.node)
    dtype_bytes: Counter[str] = Counter()
    for tensor in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        dtype_bytes[name] += tensor_bytes(tensor)
    return {
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items())),
        "initializer_bytes": dict(dtype_bytes),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def validate(reference: np.ndarray, path: Path, inputs: np.ndarray, precision: str, sizes: dict[str, int]) -> dict:
    """Compare ONNX Runtime with PyTorch's outputs ``reference`` on ``inputs``, at the full
    batch and at batch 1; each output (``sizes``) on its own: a feature map must pass on
    its own scale."""
    onnx_full, onnx_single = ort_logits(path, inputs), ort_logits(path, inputs[:1])
    full = compare_outputs(reference, onnx_full, sizes)
    single = compare_outputs(reference[:1], onnx_single, sizes)
    comparisons = [*full.values(), *single.values()]

    def passes(c: Comparison) -> bool:
        return c.relative_diff <= FP32_TOLERANCE if precision == "fp32" else c.min_cosine >= FP16_MIN_COSINE

    passed = all(map(passes, comparisons))
    noun = "logit" if list(sizes) == ["logits"] else "output"
    rule = f"max|diff| <= {FP32_TOLERANCE} x max|{noun}|" if precision == "fp32" else f"cosine >= {FP16_MIN_COSINE}"
    worst_relative = max(c.relative_diff for c in comparisons)
    worst_cosine = min(c.min_cosine for c in comparisons)
    each = "" if len(sizes) == 1 else f" per output ({', '.join(sizes)})"
    verdict = (
        f"{precision} ONNX {'matches' if passed else 'does NOT match'} PyTorch{each} "
        f"({rule}; max|diff| {max(c.max_abs_diff for c in comparisons):.3g}, relative "
        f"{worst_relative:.3g}, min cosine {worst_cosine:.6f})"
    )
    result = {
        "passed": passed,
        "rule": rule,
        "verdict": verdict,
        "batch": len(inputs),
        "full_batch": compare(reference, onnx_full).as_dict(),
        "batch_1": compare(reference[:1], onnx_single).as_dict(),
    }
    if len(sizes) > 1:
        result["outputs"] = {
            name: {"full_batch": full[name].as_dict(), "batch_1": single[name].as_dict()} for name in sizes
        }
    return result


def export_metadata(traced: Traced, options: ExportOptions, kept_fp32: list[str]) -> dict:
    variant = traced.plan.variant
    return {
        "model": variant.name,
        "precision": options.precision,
        "toolkit": f"fastervit-trt {__version__}",
        "export_argv": to_argv(options),  # re-export advice starts from it (``sidecar.export_command``)
        "checkpoint": str(options.checkpoint) if options.checkpoint else None,
        "class_names_file": str(options.class_names) if isinstance(options.class_names, Path) else None,
        "weights": traced.checkpoint,
        "random_init": options.checkpoint is None,
        "seed": options.seed,
        "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(variant.arch).items()},
        **traced.plan.metadata(),
        "input": {
            "name": "input",
            "format": INPUT_FORMATS[options.input_format],
            "shape": ["batch", *variant.arch.resolution, variant.arch.in_chans]
            if options.input_format == "uint8"
            else ["batch", variant.arch.in_chans, *variant.arch.resolution],
        },
        "features": {
            "stages": list(options.features),
            "norm": options.feature_norm,
            "strides": {f"stage{stage}": 2 ** (stage + 1) for stage in options.features},
            "taken": "each stage's output before its downsampling",
        }
        if options.features
        else None,
        "output": "probabilities" if options.softmax else None if variant.arch.num_classes else "embedding",
        "batch_profile": list(options.batch),
        "fp32_nodes_for_range": kept_fp32,
    }
