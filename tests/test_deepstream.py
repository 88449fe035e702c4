"""DeepStream without DeepStream: ``--input pixels`` graphs against the float graph, the
nvinfer config read back with a key-file parser and checked key by key against the export,
nvinfer's documented preprocessing equation applied with the written values, the labels
file, and the refusals."""

from __future__ import annotations

import configparser
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from fastervit_trt.cli import deepstream_main
from fastervit_trt.compare import compare
from fastervit_trt.deepstream import DeepStreamOptions, write_deepstream
from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.graph.ort_eval import ort_logits
from fastervit_trt.models.configs import get_variant, list_models
from fastervit_trt.preprocess import Preprocess, load_image, sample_inputs
from fastervit_trt.runtime.labels import class_names
from fastervit_trt.sidecar import METADATA_KEY, SCHEMA_VERSION, read_metadata
from tests.conftest import requires_tensorrt

CHECKPOINT = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"
PHOTOS = sorted(p for p in (Path(__file__).parents[1] / "calibration").iterdir() if p.suffix in (".jpg", ".png"))

# NVIDIA's documented values for the keys written, as test data (not the implementation's tables).
# Read from DeepStream's public headers (sources/includes of the DeepStream SDK) and the Gst-nvinfer
# property table (DeepStream 9.2: https://docs.nvidia.com/deepstream/text/DS_plugin_gst-nvinfer.md),
# whose scaling-filter row refers to enum NvBufSurfTransform_Inter of nvbufsurftransform.h.
# nvbufsurftransform.h, NvBufSurfTransform_Inter (scaling-filter):
NVBUFSURFTRANSFORM_INTER = {
    "Nearest": 0,
    "Bilinear": 1,
    "Algo1": 2,  # GPU: cubic; VIC: 5-tap
    "Algo2": 3,  # GPU: super; VIC: 10-tap
    "Algo3": 4,  # GPU: Lanczos; VIC: smart
    "Algo4": 5,  # GPU: ignored; VIC: nicest
    "Default": 6,  # GPU: nearest; VIC: nearest
}
# nvbufsurftransform.h, NvBufSurfTransform_Compute (scaling-compute-hw): 0 the platform's default
# (GPU on dGPU, VIC on Jetson), 1 GPU, 2 VIC (Jetson only)
NVBUFSURFTRANSFORM_COMPUTE = {"Default": 0, "GPU": 1, "VIC": 2}
NVDSINFER_NETWORK_MODE = {"FP32": 0, "INT8": 1, "FP16": 2}  # nvdsinfer_context.h NvDsInferNetworkMode (network-mode)
NVDSINFER_NETWORK_TYPE = {"Detector": 0, "Classifier": 1, "Segmentation": 2, "InstanceSegmentation": 3, "Other": 100}
NVDSINFER_FORMAT = {"RGB": 0, "BGR": 1, "GRAY": 2}  # nvdsinfer_context.h NvDsInferFormat (model-color-format)
PROCESS_MODE = {"primary": 1, "secondary": 2}  # Gst-nvinfer process-mode: 1 full frames, 2 objects
# The GPU filter of each interpolation the toolkit's preprocessing uses (Pillow's filter of that name):
GPU_FILTER = {"nearest": "Nearest", "bilinear": "Bilinear", "bicubic": "Algo1", "lanczos": "Algo3"}


@pytest.mark.slow
def test_pixels_graph_equals_the_float_graph_fed_the_same_images(exported):
    """faster_vit_0_224 FP32: within 1e-6 relative (the graph does Preprocess.normalize's
    float32 operations in its order on NCHW pixels)."""
    pixels, floats = exported("fp32", input_format="pixels").onnx_path, exported("fp32").onnx_path
    assert pixels.name == "faster_vit_0_224_fp32_pixelsin.onnx"
    model = onnx.load(str(pixels), load_external_data=False)
    graph_input = model.graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    metadata = read_metadata(model)
    assert metadata["preprocess"]["input_format"] == "pixels" and "0..255" in metadata["input"]["format"]
    preprocess = Preprocess.from_config(metadata["preprocess"])
    crops = sample_inputs(preprocess, 8)
    assert crops.dtype == np.float32 and crops.shape == (8, 3, 224, 224) and crops.max() > 200
    report = compare(ort_logits(floats, preprocess.normalized(crops)), ort_logits(pixels, crops))
    assert report.relative_diff <= 1e-6, report


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_folders):
    """The trained digits model (squash, crop_pct 1.0: what nvinfer scales to) with pixels in
    and probabilities out: FP32, FP16, INT8 (calibrated on its training scans) and FP8, plus
    the float-input logits graph to compare with."""
    out = tmp_path_factory.mktemp("deepstream")

    def options(precision: str, input_format: str = "pixels", softmax: bool = True) -> ExportOptions:
        return ExportOptions(
            model="faster_vit_digits",
            checkpoint=CHECKPOINT,
            precision=precision,
            softmax=softmax,
            input_format=input_format,
            batch=(1, 4, 16),
            output_dir=out,
        )

    calib = CalibrationOptions(data=digits_folders["train"], images=64, batch=16, heldout=16)
    paths = {p: export_model(options(p)).onnx_path for p in ("fp32", "fp16")}
    paths.update({p: export_quantized(options(p), calib).onnx_path for p in ("int8", "fp8")})
    paths["logits"] = export_model(options("fp32", "float", softmax=False)).onnx_path
    return paths


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.slow
def test_every_precision_takes_pixels_and_answers_probabilities(digits, digits_folders):
    from fastervit_trt.calibration.dataset import find_images

    items = find_images(digits_folders["heldout"])[0][:64]
    preprocess = Preprocess.from_config(
        read_metadata(onnx.load(str(digits["fp32"]), load_external_data=False))["preprocess"]
    )
    pixels = np.stack([preprocess.load(i.path) for i in items])
    reference = _softmax(ort_logits(digits["logits"], preprocess.normalized(pixels)))
    for precision in ("fp32", "fp16", "int8", "fp8"):
        probabilities = ort_logits(digits[precision], pixels)
        assert np.allclose(probabilities.sum(1), 1, atol=1e-2), precision
        report = compare(reference, probabilities)
        assert report.top1_agreement >= 0.98 and report.mean_cosine > 0.995, (precision, report)
    assert compare(reference, ort_logits(digits["fp32"], pixels)).relative_diff <= 1e-6


@requires_tensorrt
@pytest.mark.slow
def test_tensorrt_rtx_builds_the_pixels_graphs(digits, tmp_path):
    from fastervit_trt.engines import BuildConfig, build_engine

    for precision in ("fp32", "fp16", "int8", "fp8"):
        sidecar = build_engine(digits[precision], tmp_path / f"{precision}.engine", BuildConfig(batch=(1, 4, 16)))
        assert sidecar["inputs"][0]["shape"] == [-1, 3, 128, 128] and sidecar["outputs"][0]["name"] == "probabilities"


def _read(config: Path) -> dict:
    """The [property] group as nvinfer's GKeyFile reads it (key=value, '#' comments)."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # keys are case-sensitive, as in GKeyFile
    parser.read(config)
    assert parser.sections() == ["property"]
    return dict(parser["property"])


def _documented_config(
    onnx_path: Path, labels: Path, size: tuple[int, int], batch: int, precision: str, interpolation: str
) -> dict:
    """The [property] keys a primary classifier export must get, each value NVIDIA's documented one."""
    height, width = size
    return {
        "gpu-id": "0",
        "net-scale-factor": "1.0",
        "offsets": "0;0;0",
        "model-color-format": str(NVDSINFER_FORMAT["RGB"]),
        "onnx-file": str(onnx_path.resolve()),
        "infer-dims": f"3;{height};{width}",
        "batch-size": str(batch),
        "network-mode": str(NVDSINFER_NETWORK_MODE[precision.upper()]),
        "network-type": str(NVDSINFER_NETWORK_TYPE["Classifier"]),
        "process-mode": str(PROCESS_MODE["primary"]),
        "gie-unique-id": "1",
        "classifier-threshold": "0.5",
        "labelfile-path": str(labels.resolve()),
        "output-blob-names": "probabilities",
        "maintain-aspect-ratio": "0",  # stretch to infer-dims, as squash does; 1 would pad
        # bicubic: Algo1, the GPU's cubic (so the GPU computes it)
        "scaling-filter": str(NVBUFSURFTRANSFORM_INTER[GPU_FILTER[interpolation]]),
        "scaling-compute-hw": str(NVBUFSURFTRANSFORM_COMPUTE["GPU"]),
    }


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_key_of_the_config_comes_from_the_export(digits, tmp_path, precision):
    onnx_path = digits[precision]
    config, labels = write_deepstream(onnx_path, tmp_path / "ds")
    keys = _read(config)
    metadata = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    height, width = metadata["preprocess"]["input_size"]
    expected = _documented_config(
        onnx_path,
        labels,
        (height, width),
        metadata["batch_profile"][-1],
        precision,
        metadata["preprocess"]["interpolation"],
    )
    if precision == "int8":
        expected["int8-calib-file"] = str(Path(metadata["quantization"]["cache"]).resolve())
    assert keys == expected
    assert [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output] == ["probabilities"]
    secondary, _ = write_deepstream(
        onnx_path, tmp_path / "ds", DeepStreamOptions(process_mode="secondary", operate_on_gie_id=3)
    )
    assert secondary.name.endswith("_secondary.txt")
    assert _read(secondary) == {**expected, "process-mode": str(PROCESS_MODE["secondary"]), "operate-on-gie-id": "3"}


def test_the_labels_file_is_the_models_classes_in_order(digits, tmp_path):
    _, labels = write_deepstream(digits["fp32"], tmp_path)
    lines = labels.read_text().splitlines()
    assert len(lines) == 1 and lines[0].split(";") == class_names("digits", 10)


def test_nvinfers_equation_with_the_written_values_gives_the_toolkits_input(digits, tmp_path):
    """nvinfer: scale the whole image to infer-dims, then y = net-scale-factor * (x - offsets[c]).
    With the written values and Pillow's filter of the model's interpolation that is exactly
    the toolkit's input, and the engine's answer is the toolkit's. nvinfer's own GPU scaler
    is not Pillow's (no antialiasing when it shrinks); a plain 4-tap bicubic standing for it
    differs from the toolkit's input by 2.1 to 16.0 levels of 255 on average on the 13
    shipped photos (fine textures, grass and gravel, worst), a median of 5.4."""
    keys = _read(write_deepstream(digits["fp32"], tmp_path)[0])
    scale, offsets = float(keys["net-scale-factor"]), np.array([float(v) for v in keys["offsets"].split(";")])
    _, height, width = map(int, keys["infer-dims"].split(";"))
    metadata = read_metadata(onnx.load(str(digits["fp32"]), load_external_data=False))
    preprocess = Preprocess.from_config({**metadata["preprocess"], "jpeg_draft": False})
    assert keys["model-color-format"] == str(NVDSINFER_FORMAT["RGB"]) and keys["maintain-aspect-ratio"] == "0"
    documented = {NVBUFSURFTRANSFORM_INTER[gpu]: name for name, gpu in GPU_FILTER.items()}
    resample = getattr(Image.Resampling, documented[int(keys["scaling-filter"])].upper())
    differences = []
    for photo in PHOTOS:
        image = load_image(photo)
        frame = np.asarray(image.resize((width, height), resample), np.float32)  # RGB, as model-color-format 0
        nvinfer = np.moveaxis(scale * (frame - offsets), -1, 0)[None].astype(np.float32)
        toolkit = preprocess(image)[None]
        np.testing.assert_array_equal(nvinfer, toolkit)
        np.testing.assert_array_equal(ort_logits(digits["fp32"], nvinfer), ort_logits(digits["fp32"], toolkit))
        source = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
        gpu_like = (
            torch.nn.functional.interpolate(
                source, (height, width), mode="bicubic", antialias=False, align_corners=False
            )
            .clamp(0, 255)
            .round()
        )
        gpu_like = scale * (gpu_like.numpy() - offsets.reshape(1, 3, 1, 1))
        differences.append(np.abs(gpu_like - toolkit).mean())
    assert len(differences) == 13 and max(differences) < 17 and np.median(differences) < 6, differences


def test_models_nvinfer_cannot_preprocess_are_refused_in_one_line(digits, tmp_path, capsys):
    out = tmp_path / "ds"
    with pytest.raises(
        FasterViTTRTError,
        match=r"export it with --input pixels and --softmax \(.*\): fastervit-export --variant faster_vit_digits "
        r".* --precision fp32 .*--crop-mode squash --crop-pct 1 --input pixels --softmax$",  # the export's own options kept
    ):
        write_deepstream(digits["logits"], out)  # the digits' own transform is the plain resize: kept
    with pytest.raises(FasterViTTRTError, match="nvinfer builds an ONNX file with its precision flags and has no FP8"):
        write_deepstream(digits["fp8"], out)
    assert not out.exists()  # nothing half-written
    assert deepstream_main([str(digits["logits"]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and not out.exists()
    assert deepstream_main([str(digits["fp32"]), "--out", str(out)]) == 0
    assert "gst-launch-1.0 filesrc" in capsys.readouterr().out
    assert deepstream_main([str(digits["fp32"]), "--out", str(out)]) == 1  # exists: --force to overwrite
    assert "already exists; pass --force" in capsys.readouterr().err


@requires_tensorrt
def test_an_engine_gets_its_engine_file_and_profile(digits, tmp_path):
    from fastervit_trt.engines import BuildConfig, build_engine

    engine = tmp_path / "digits_fp16.engine"
    build_engine(digits["fp16"], engine, BuildConfig(batch=(1, 2, 8)))
    keys = _read(write_deepstream(engine, tmp_path / "ds")[0])
    assert keys["model-engine-file"] == str(engine.resolve()) and keys["onnx-file"] == str(digits["fp16"].resolve())
    assert keys["batch-size"] == "8" and keys["network-mode"] == "2" and keys["output-blob-names"] == "probabilities"


def _variant_export(
    folder: Path,
    variant: str = "faster_vit_0_224",
    precision: str = "fp16",
    output: str | None = "probabilities",
    class_names: list[str] | None = None,
    **transform,
) -> Path:
    """A stand-in for ``fastervit-export --variant <variant> --input pixels [--softmax]`` with the
    eval ``transform`` overridden (crop_mode, crop_pct, interpolation, input_format): the
    metadata an export writes, from the variant registry, on a one-node graph nvinfer's config
    never runs."""
    spec = get_variant(variant)
    preprocess = dataclasses.replace(Preprocess.from_config(spec.eval), input_format="pixels", jpeg_draft=True)
    preprocess = dataclasses.replace(preprocess, **transform)
    height, width = preprocess.input_size
    metadata = {
        "model": variant,
        "precision": precision,
        "batch_profile": [1, 8, 32],
        "arch": {"num_classes": spec.arch.num_classes, "resolution": list(spec.arch.resolution)},
        "preprocess": {**json.loads(json.dumps(dataclasses.asdict(preprocess))), "label_set": spec.eval.label_set},
        "output": output,
        "class_names": class_names,
    }
    name = "probabilities" if output == "probabilities" else "logits"
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], [name])],
        variant,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", spec.arch.num_classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    path = folder / f"{variant}_{precision}_{len(list(folder.glob('*.onnx')))}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("variant", list_models(official_only=True))
def test_every_variant_exported_with_a_plain_resize_gets_nvidias_documented_config(variant, tmp_path):
    """--crop-mode squash --crop-pct 1 is nvinfer's own transform for any variant: accepted, and
    every key equals NVIDIA's documented value for the export's settings."""
    model = _variant_export(tmp_path, variant, crop_mode="squash", crop_pct=1.0)
    config, labels = write_deepstream(model, tmp_path / "ds")
    height, width = get_variant(variant).eval.input_size
    assert _read(config) == _documented_config(model, labels, (height, width), 32, "fp16", "bicubic")
    assert labels.read_text().strip().split(";") == class_names("imagenet-1k", 1000)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_network_mode_and_scaling_filter_are_the_documented_enums(precision, interpolation, tmp_path):
    model = _variant_export(
        tmp_path, "faster_vit_4_21k_384", precision, interpolation=interpolation, crop_mode="squash", crop_pct=1.0
    )
    keys = _read(write_deepstream(model, tmp_path / "ds")[0])
    assert keys["network-mode"] == str(NVDSINFER_NETWORK_MODE[precision.upper()])
    assert keys["scaling-filter"] == str(NVBUFSURFTRANSFORM_INTER[GPU_FILTER[interpolation]])
    assert keys["scaling-compute-hw"] == str(NVBUFSURFTRANSFORM_COMPUTE["GPU"])


@pytest.mark.parametrize(
    "variant,transform,missing",
    [
        ("faster_vit_0_224", {}, "--crop-mode squash and --crop-pct 1"),  # its own: centre crop at 0.875
        ("faster_vit_1_224", {}, "--crop-mode squash"),  # centre crop at 1.0: still a crop of a non-square frame
        ("faster_vit_4_21k_224", {}, "--crop-pct 1"),  # squash at 0.95: a resize, then the centre
        ("faster_vit_0_224", {"crop_mode": "center", "crop_pct": 1.0}, "--crop-mode squash"),
    ],
)
def test_a_cropping_export_is_refused_naming_the_plain_resize_flags(variant, transform, missing, tmp_path, capsys):
    model = _variant_export(tmp_path, variant, **transform)
    out = tmp_path / "ds"
    with pytest.raises(FasterViTTRTError) as refused:
        write_deepstream(model, out)
    message = str(refused.value)
    assert message.startswith(f"{model}: export it with {missing} (") and "\n" not in message
    assert f"{variant} is evaluated with crop_mode" in message and "nvinfer cannot crop" in message
    assert message.endswith(f"fastervit-export --variant {variant} --precision fp16 --crop-mode squash --crop-pct 1")
    assert not out.exists()
    assert deepstream_main([str(model), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--crop-mode squash --crop-pct 1" in err and not out.exists()


def test_one_refusal_lists_every_missing_flag_and_keeps_a_plain_resize(tmp_path):
    logits_centre = _variant_export(tmp_path, "faster_vit_0_224", "fp32", output=None, input_format="float")
    with pytest.raises(FasterViTTRTError) as refused:
        write_deepstream(logits_centre, tmp_path / "ds")
    message = str(refused.value)
    assert "export it with --crop-mode squash, --crop-pct 1, --input pixels and --softmax (" in message
    assert "nvinfer cannot crop" in message and "per-channel" in message and "probabilities, not logits" in message
    assert message.count("nvinfer cannot crop") == 1  # one reason for both crop flags
    assert message.endswith(
        "fastervit-export --variant faster_vit_0_224 --precision fp32 --crop-mode squash --crop-pct 1 "
        "--input pixels --softmax"
    )
    # already a plain resize, only --softmax missing: the command still carries the resize flags,
    # since faster_vit_0_224 re-exported without them would crop again
    resized_logits = _variant_export(tmp_path, "faster_vit_0_224", output=None, crop_mode="squash", crop_pct=1.0)
    with pytest.raises(
        FasterViTTRTError,
        match=r"export it with --softmax \(nvinfer's classifier parser reads probabilities, not logits\): "
        r"fastervit-export --variant faster_vit_0_224 --precision fp16 --crop-mode squash --crop-pct 1 --softmax$",
    ):
        write_deepstream(resized_logits, tmp_path / "ds")
    embedding = _variant_export(tmp_path, "faster_vit_0_224", output="embedding", crop_mode="squash", crop_pct=1.0)
    with pytest.raises(FasterViTTRTError, match=r"an embedding model \(a pooled vector out, no classes\)"):
        write_deepstream(embedding, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_the_labels_file_carries_the_exports_own_class_names(tmp_path):
    names = [f"part {i}" for i in range(999)] + ["defect: crack"]
    model = _variant_export(tmp_path, class_names=names, crop_mode="squash", crop_pct=1.0)
    _, labels = write_deepstream(model, tmp_path / "ds")
    lines = labels.read_text().splitlines()
    assert len(lines) == 1 and lines[0].split(";") == names
    bad = _variant_export(tmp_path, class_names=["a;b", *names[1:]], crop_mode="squash", crop_pct=1.0)
    with pytest.raises(FasterViTTRTError, match=r"class name 'a;b' holds ';'"):
        write_deepstream(bad, tmp_path / "ds2")
    assert not (tmp_path / "ds2").exists()


def _engine_beside(onnx_path: Path, engine: Path, **sidecar) -> Path:
    """An engine file and the sidecar fastervit-build writes beside it (the fields nvinfer's config
    reads), pointing at ``onnx_path``: what describe() reads without TensorRT."""
    metadata = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    height, width = metadata["preprocess"]["input_size"]
    engine.write_bytes(b"plan")
    record = {
        "schema_version": SCHEMA_VERSION,
        "model": metadata["model"],
        "precision": metadata["precision"],
        "arch": metadata["arch"],
        "preprocess": metadata["preprocess"],
        "label_set": metadata["preprocess"]["label_set"],
        "features": None,
        "inputs": [{"name": "pixels", "shape": [-1, 3, height, width], "profile": {"max": [16, 3, height, width]}}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 1000]}],
        "onnx": {"path": str(onnx_path.resolve())},
        **sidecar,
    }
    engine.with_suffix(".json").write_text(json.dumps(record))
    return engine


def test_an_engine_takes_its_class_names_from_its_sidecar_or_else_its_onnx(tmp_path):
    names = [f"sku {i}" for i in range(1000)]
    unnamed = _variant_export(tmp_path, crop_mode="squash", crop_pct=1.0)
    engine = _engine_beside(unnamed, tmp_path / "named.engine", class_names=names)
    config, labels = write_deepstream(engine, tmp_path / "ds")
    assert labels.read_text().strip().split(";") == names
    keys = _read(config)
    assert keys["model-engine-file"] == str(engine.resolve()) and keys["batch-size"] == "16"
    # a sidecar without names (or null) does not hide the names the export recorded
    named = _variant_export(tmp_path, class_names=names, crop_mode="squash", crop_pct=1.0)
    for sidecar in ({}, {"class_names": None}):
        engine = _engine_beside(named, tmp_path / "plain.engine", **sidecar)
        _, labels = write_deepstream(engine, tmp_path / "ds", DeepStreamOptions(force=True))
        assert labels.read_text().strip().split(";") == names


# How nvinfer reproduces each eval-transform setting (fastervit_trt/deepstream.py): a new
# setting fails the test below until deepstream.py says whether nvinfer can express it.
NVINFER_TRANSFORM = {
    "mean": "normalised inside the graph (--input pixels)",
    "std": "normalised inside the graph (--input pixels)",
    "interpolation": "scaling-filter, refused where nvinfer has none",
    "crop_pct": "1 only: nvinfer cannot crop",
    "crop_mode": "squash only: nvinfer scales the whole frame",
}


def test_deepstream_decides_every_transform_setting():
    from fastervit_trt.preprocess import TRANSFORM_SETTINGS

    assert set(NVINFER_TRANSFORM) == set(TRANSFORM_SETTINGS)
