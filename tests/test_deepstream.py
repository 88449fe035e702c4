"""DeepStream without DeepStream: ``--input pixels`` graphs against the float graph, the
nvinfer config read back with a key-file parser and checked key by key against the export,
nvinfer's documented preprocessing equation applied with the written values, the labels
file, and the refusals."""

from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from fastervit_trt.cli import deepstream_main
from fastervit_trt.compare import compare
from fastervit_trt.deepstream import SCALING_FILTERS, DeepStreamOptions, write_deepstream
from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.export.ort_eval import ort_logits
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.preprocess import Preprocess, load_image, sample_inputs
from fastervit_trt.runtime.labels import class_names
from fastervit_trt.sidecar import read_metadata
from tests.conftest import requires_tensorrt

CHECKPOINT = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"
PHOTOS = sorted(p for p in (Path(__file__).parents[1] / "calibration").iterdir() if p.suffix in (".jpg", ".png"))


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


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_key_of_the_config_comes_from_the_export(digits, tmp_path, precision):
    onnx_path = digits[precision]
    config, labels = write_deepstream(onnx_path, tmp_path / "ds")
    keys = _read(config)
    metadata = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    height, width = metadata["preprocess"]["input_size"]
    expected = {
        "gpu-id": "0",
        "net-scale-factor": "1.0",
        "offsets": "0;0;0",
        "model-color-format": "0",
        "onnx-file": str(onnx_path.resolve()),
        "infer-dims": f"3;{height};{width}",
        "batch-size": str(metadata["batch_profile"][-1]),
        "network-mode": {"fp32": "0", "int8": "1", "fp16": "2"}[precision],
        "network-type": "1",
        "process-mode": "1",
        "gie-unique-id": "1",
        "classifier-threshold": "0.5",
        "labelfile-path": str(labels.resolve()),
        "output-blob-names": "probabilities",
        "maintain-aspect-ratio": "0",
        "scaling-compute-hw": "1",
        "scaling-filter": str(SCALING_FILTERS[metadata["preprocess"]["interpolation"]]),
    }
    if precision == "int8":
        expected["int8-calib-file"] = str(Path(metadata["quantization"]["cache"]).resolve())
    assert keys == expected
    assert [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output] == ["probabilities"]
    secondary, _ = write_deepstream(
        onnx_path, tmp_path / "ds", DeepStreamOptions(process_mode="secondary", operate_on_gie_id=3)
    )
    assert secondary.name.endswith("_secondary.txt")
    assert _read(secondary) == {**expected, "process-mode": "2", "operate-on-gie-id": "3"}


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
    assert keys["model-color-format"] == "0" and keys["maintain-aspect-ratio"] == "0"
    filters = {v: k for k, v in SCALING_FILTERS.items()}
    resample = getattr(Image.Resampling, filters[int(keys["scaling-filter"])].upper())
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


def test_models_nvinfer_cannot_preprocess_are_refused_in_one_line(exported, digits, tmp_path, capsys):
    out = tmp_path / "ds"
    centre = exported("fp32", input_format="pixels").onnx_path  # faster_vit_0_224: centre crop at 0.875
    with pytest.raises(
        FasterViTTRTError,
        match=r"faster_vit_0_224 is evaluated with a center crop at crop_pct "
        r"0.875 .* nvinfer cannot crop: .* or preprocess with nvdspreprocess",
    ):
        write_deepstream(centre, out)
    with pytest.raises(
        FasterViTTRTError,
        match=r"export it with --input pixels and --softmax \(.*\): fastervit-export "
        r"--variant faster_vit_digits .* --precision fp32 --input pixels --softmax",
    ):
        write_deepstream(digits["logits"], out)
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
