"""``--input uint8``: graphs that take the resized, cropped uint8 image (NHWC) and normalise it
themselves, checked against the float-input graph fed the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fastervit_trt.compare import compare
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.export.quantized import CalibrationOptions, export_quantized
from fastervit_trt.graph.ort_eval import ort_logits
from fastervit_trt.inspect import inspect_onnx
from fastervit_trt.preprocess import Preprocess, sample_inputs
from fastervit_trt.runtime import load
from fastervit_trt.runtime.inputs import InputError
from fastervit_trt.sidecar import read_metadata
from tests.conftest import requires_tensorrt

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "faster_vit_digits.pth"
PHOTOS = sorted((Path(__file__).parents[2] / "calibration").glob("*.jpg"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_folders):
    """faster_vit_digits (trained) exported with float input (FP32) and uint8 input (FP32,
    FP16, INT8 calibrated on the digits' own training images)."""
    out = tmp_path_factory.mktemp("uint8")

    def options(precision: str, input_format: str) -> ExportOptions:
        return ExportOptions(
            model="faster_vit_digits",
            checkpoint=CHECKPOINT,
            precision=precision,
            input_format=input_format,
            batch=(1, 4, 16),
            output_dir=out,
        )

    paths = {(p, "uint8"): export_model(options(p, "uint8")).onnx_path for p in ("fp32", "fp16")}
    paths["fp32", "float"] = export_model(options("fp32", "float")).onnx_path
    paths["int8", "uint8"] = export_quantized(
        options("int8", "uint8"), CalibrationOptions(data=digits_folders["train"], images=64, batch=16, heldout=16)
    ).onnx_path
    return paths


@pytest.mark.slow
def test_uint8_graph_equals_the_float_graph_fed_the_same_images(exported):
    """faster_vit_0_224 FP32: logits within 1e-6 relative (the graph does the float32 ops of
    Preprocess.normalize in its order, so ONNX Runtime agrees bitwise)."""
    images = exported("fp32", input_format="uint8").onnx_path
    floats = exported("fp32").onnx_path
    assert images.name == "faster_vit_0_224_fp32_uint8in.onnx" and floats.name == "faster_vit_0_224_fp32.onnx"
    model = onnx.load(str(images), load_external_data=False)
    graph_input = model.graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", 224, 224, 3]
    reads_input = [n.op_type for n in model.graph.node if "input" in n.input]
    assert reads_input == ["Cast"]
    metadata = read_metadata(model)
    assert metadata["preprocess"]["input_format"] == "uint8" and "NHWC" in metadata["input"]["format"]

    preprocess = Preprocess.from_config(metadata["preprocess"])
    crops = sample_inputs(preprocess, 8)
    assert crops.dtype == np.uint8 and crops.shape == (8, 224, 224, 3)
    report = compare(ort_logits(floats, preprocess.normalize(crops)), ort_logits(images, crops))
    assert report.relative_diff <= 1e-6, report


@pytest.mark.slow
def test_fp16_and_int8_uint8_graphs_classify_like_the_float_graph(digits, digits_folders):
    heldout = sorted(Path(digits_folders["heldout"]).rglob("*.png"))[:48]
    reference = load(digits["fp32", "float"]).logits(heldout)
    for precision, mean_cosine in (("fp32", 0.999999), ("fp16", 0.999), ("int8", 0.995)):
        model = load(digits[precision, "uint8"])
        assert model.preprocess.input_format == "uint8"
        report = compare(reference, model.logits(heldout))
        assert report.mean_cosine >= mean_cosine and report.top1_agreement >= 0.97, (precision, report)
        described = inspect_onnx(digits[precision, "uint8"])["input"]
        assert described.startswith("input: uint8 ['batch', 128, 128, 3]") and "NHWC" in described


def test_runtime_sends_uint8_and_refuses_preprocessed_floats(digits):
    model, floats = load(digits["fp32", "uint8"]), load(digits["fp32", "float"])
    photos = PHOTOS[:3]
    logits = model.logits(photos)
    np.testing.assert_allclose(logits, floats.logits(photos), rtol=0, atol=1e-5)
    crops = np.stack([model.preprocess.load(p) for p in photos])
    assert crops.dtype == np.uint8 and crops.shape == (3, 128, 128, 3)
    np.testing.assert_array_equal(model.run(crops), logits)  # ready crops, nothing resized again
    with pytest.raises(InputError, match=r"exported with --input uint8 .* pass images"):
        model.logits(floats.preprocess.load(photos[0])[None])


@requires_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_builds_uint8_graphs_and_the_sidecar_says_so(digits, tmp_path, precision):
    from fastervit_trt.engines import BuildConfig, build_engine

    sidecar = build_engine(digits[precision, "uint8"], tmp_path / "model.engine", BuildConfig(batch=(1, 4, 16)))
    (entry,) = sidecar["inputs"]
    assert entry["dtype"] == "uint8" and entry["shape"][1:] == [128, 128, 3]
    assert "NHWC" in entry["format"] and sidecar["preprocess"]["input_format"] == "uint8"


def test_triton_config_says_uint8_nhwc(digits, tmp_path):
    from fastervit_trt.triton import TritonOptions, write_model_repository
    from tests.test_triton import parse_config

    repo = tmp_path / "models"
    write_model_repository(digits["fp32", "uint8"], repo, TritonOptions(name="images", image_bytes=True))
    write_model_repository(digits["fp32", "float"], repo, TritonOptions(name="floats"))
    images, floats = parse_config(repo / "images" / "config.pbtxt"), parse_config(repo / "floats" / "config.pbtxt")
    assert images.input[0].data_type == 2 and images.input[0].format == 1  # TYPE_UINT8, FORMAT_NHWC
    assert list(images.input[0].dims) == [128, 128, 3]
    assert floats.input[0].data_type == 11 and floats.input[0].format == 2  # TYPE_FP32, FORMAT_NCHW
    assert images.parameters["preprocess.input_format"].string_value == '"uint8"'
    preprocess = parse_config(repo / "images_preprocess" / "config.pbtxt")
    assert preprocess.output[0].data_type == 2 and list(preprocess.output[0].dims) == [128, 128, 3]


def test_calibration_arrays_must_be_in_the_models_input_format(tmp_path):
    from fastervit_trt.calibration.dataset import CalibrationData, CalibrationDataError

    preprocess = Preprocess((32, 32), input_format="uint8")
    crops = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "crops.npy", crops)
    data = CalibrationData(tmp_path / "crops.npy", preprocess, 8)
    np.testing.assert_array_equal(np.stack([data.sample(i) for i in range(8)]), crops)
    np.save(tmp_path / "floats.npy", Preprocess((32, 32)).normalize(crops))
    with pytest.raises(CalibrationDataError, match=r"floats\.npy: holds float32 values, .* must be uint8 images"):
        CalibrationData(tmp_path / "floats.npy", preprocess, 8).sample(0)
