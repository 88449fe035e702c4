"""``--features``: FasterViT as a detection backbone (no head, one NCHW output per stage).

The oracle is the official package: its levels' intermediate outputs, read with forward
hooks where its detection backbones take them (the input of each level's downsampling;
the last level's output; the classifier norm for a normalised stage 4).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fastervit_trt.compare import compare
from fastervit_trt.errors import FasterViTTRTError, OptionsError
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.models import Backbone, create_model
from tests.conftest import requires_tensorrt
from tests.export.test_onnx_graph import BANNED_OPS
from tests.parity import official_model, randomize_

TOLERANCE = 1e-4  # max |diff| <= TOLERANCE x max |feature|, per feature map


def _official_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """stage1..stage4 (raw) and norm4 (stage 4 through the classifier norm) of an official model."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i, level in enumerate(model.levels, start=1):
        if level.downsample is not None:  # the stage output is what enters its downsampling
            hooks.append(
                level.downsample.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(f"stage{i}", args[0]))
            )
        else:
            hooks.append(level.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(f"stage{i}", out)))
    hooks.append(model.norm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("norm4", out)))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return {name: value.numpy() for name, value in seen.items()}


def _shared_weights(name: str, resolution, path: Path) -> torch.nn.Module:
    """An official model with random weights, saved to ``path`` for ours to load."""
    official = randomize_(official_model(name, resolution), seed=5)
    torch.save({"state_dict": official.state_dict()}, path)
    return official


@pytest.mark.parametrize("name,resolution", [("faster_vit_0_224", None), ("faster_vit_0_any_res", (800, 1216))])
@pytest.mark.slow
def test_feature_maps_equal_the_official_levels(name, resolution, tmp_path):
    official = _shared_weights(name, resolution, tmp_path / "w.pth")
    ours = create_model(name, checkpoint=tmp_path / "w.pth", resolution=resolution)
    x = torch.randn(1, 3, *ours.variant.arch.resolution, generator=torch.Generator().manual_seed(2))
    expected = _official_features(official, x)
    with torch.no_grad():
        raw = Backbone(ours, (1, 2, 3, 4))(x)
        normed = Backbone(ours, (1, 2, 3, 4), norm=True)(x)
        subset = Backbone(ours, (2, 3))(x)
    for stage, value in enumerate(raw, start=1):
        assert value.shape[-2:] == expected[f"stage{stage}"].shape[-2:]
        assert compare(expected[f"stage{stage}"], value.numpy()).relative_diff <= TOLERANCE, stage
    assert compare(expected["norm4"], normed[3].numpy()).relative_diff <= TOLERANCE
    assert all(torch.equal(a, b) for a, b in zip(subset, raw[1:3]))
    if resolution == (800, 1216):
        assert [tuple(v.shape[-2:]) for v in raw] == [(200, 304), (100, 152), (50, 76), (25, 38)]


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.fixture(scope="module")
def any_res_features(tmp_path_factory):
    """faster_vit_0_any_res at 320x480 (non-square), official random weights, FP32 features."""
    folder = tmp_path_factory.mktemp("features")
    official = _shared_weights("faster_vit_0_any_res", (320, 480), folder / "w.pth")
    result = export_model(
        ExportOptions(
            model="faster_vit_0_any_res",
            resolution=(320, 480),
            precision="fp32",
            features=(1, 2, 3, 4),
            checkpoint=folder / "w.pth",
            batch=(1, 1, 2),
            output_dir=folder,
        )
    )
    return official, result


@pytest.mark.slow
def test_exported_features_match_the_official_model_through_onnx_runtime(any_res_features):
    import onnxruntime as ort

    official, result = any_res_features
    x = torch.randn(2, 3, 320, 480, generator=torch.Generator().manual_seed(4))
    expected = _official_features(official, x)
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["stage1", "stage2", "stage3", "stage4"]
    for name, value in zip(names, session.run(None, {"input": x.numpy()})):
        assert value.shape == expected[name].shape
        assert compare(expected[name], value).relative_diff <= TOLERANCE, name


def test_feature_graph_keeps_the_graph_rules(any_res_features):
    _, result = any_res_features
    model = onnx.load(str(result.onnx_path))
    ops = _ops(result.onnx_path)
    assert not BANNED_OPS & set(ops) and "Gemm" not in ops  # no head
    onnx.checker.check_model(model, full_check=True)
    for io in (*model.graph.input, *model.graph.output):
        dims = io.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and all(d.HasField("dim_value") for d in dims[1:])
    report = result.report
    assert [o["shape"] for o in report["outputs"]] == [
        ["batch", 64, 80, 120],
        ["batch", 128, 40, 60],
        ["batch", 256, 20, 30],
        ["batch", 512, 10, 15],
    ]
    assert report["features"]["strides"] == {"stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
    validation = report["validation"]
    assert validation["passed"] and set(validation["outputs"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert result.onnx_path.name == "faster_vit_0_any_res_fp32_features.onnx"


@pytest.mark.slow
def test_fp16_normalised_subset_validates_per_output(tmp_path, realistic_checkpoint):
    result = export_model(
        ExportOptions(
            precision="fp16",
            features=(3, 2),
            feature_norm=True,
            batch=(1, 1, 2),
            checkpoint=realistic_checkpoint,
            output_dir=tmp_path,
        )
    )
    report = result.report
    assert [o["name"] for o in report["outputs"]] == ["stage2", "stage3"]
    assert report["features"] == {**report["features"], "stages": [2, 3], "norm": True}
    for name in ("stage2", "stage3"):
        assert report["validation"]["outputs"][name]["full_batch"]["min_cosine"] >= 0.999
    ops = _ops(result.onnx_path)
    assert "BatchNormalization" not in ops and ops["LayerNormalization"] > 0  # stage 3 ran, stage 4 did not
    assert len(report["outputs"]) == 2


def test_bad_feature_options_are_refused():
    with pytest.raises(ValueError, match="distinct stages"):
        ExportOptions(features=(0, 2))
    with pytest.raises(ValueError, match="distinct stages"):
        ExportOptions(features=(2, 2))
    with pytest.raises(ValueError, match="--feature-norm .* --features"):
        ExportOptions(feature_norm=True)


@pytest.fixture(scope="module")
def int8_features(tmp_path_factory):
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    folder = tmp_path_factory.mktemp("int8-features")
    return export_quantized(
        ExportOptions(precision="int8", features=(2, 3, 4), batch=(1, 1, 2), output_dir=folder),
        CalibrationOptions(images=16, heldout=8),
    )


@pytest.mark.slow
def test_int8_features_report_cosine_per_feature_map(int8_features):
    accuracy = int8_features.report["accuracy"]
    per_output = accuracy["quantized_vs_fp32_qdq_arithmetic"]
    assert set(per_output) == {"stage2", "stage3", "stage4"}
    assert all(0.99 <= c["mean_cosine"] <= 1 for c in per_output.values()), per_output
    assert "stage2" in accuracy["summary"] and "top-1" not in accuracy["summary"]
    assert int8_features.report["quantization"]["qdq_nodes"] > 0
    assert int8_features.report["quantization"]["residual_inputs"] == 0  # auto: off for a backbone


@pytest.mark.slow
def test_residual_qdq_on_a_backbone_is_a_choice_that_costs_feature_accuracy(int8_features, tmp_path):
    """The feature maps are the residual stream: quantizing its inputs (TensorRT's fusion
    rule, on for classifiers) puts INT8 rounding into them undiluted."""
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    on = export_quantized(
        ExportOptions(precision="int8", features=(2, 3, 4), batch=(1, 1, 2), output_dir=tmp_path),
        CalibrationOptions(images=16, heldout=8, residual_qdq="on"),
    )
    assert on.report["quantization"]["residual_inputs"] == 5
    cosines = {
        name: report["quantized_vs_fp32_qdq_arithmetic"]["stage2"]["mean_cosine"]
        for name, report in (("off", int8_features.report["accuracy"]), ("on", on.report["accuracy"]))
    }
    assert cosines["on"] < cosines["off"], cosines


def test_residual_qdq_on_is_refused_for_fp8(tmp_path):
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    with pytest.raises(OptionsError, match="--residual-qdq on is for INT8"):
        export_quantized(ExportOptions(precision="fp8", output_dir=tmp_path), CalibrationOptions(residual_qdq="on"))
    assert not any(tmp_path.iterdir())


def test_accuracy_budget_needs_classes(tmp_path):
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    with pytest.raises(OptionsError, match="backbone has no classes"):
        export_quantized(
            ExportOptions(precision="int8", features=(4,), output_dir=tmp_path), CalibrationOptions(accuracy_budget=1.0)
        )
    assert not any(tmp_path.iterdir())


@requires_tensorrt
@pytest.mark.slow
def test_backbone_engine_runtime_inspect_and_triton(int8_features, tmp_path):
    """TensorRT-RTX builds the multi-output INT8 graph; the sidecar lists every output with
    its stride; the runtime returns a dict of feature maps; inspect and Triton show them all."""
    from fastervit_trt.engines import BuildConfig, build_engine
    from fastervit_trt.inspect import inspect_path
    from fastervit_trt.runtime import load
    from fastervit_trt.triton import write_model_repository

    engine = tmp_path / "backbone.engine"
    sidecar = build_engine(int8_features.onnx_path, engine, BuildConfig(batch=(1, 1, 2)))
    assert [(o["name"], o["shape"], o["stride"]) for o in sidecar["outputs"]] == [
        ("stage2", [-1, 128, 28, 28], 8),
        ("stage3", [-1, 256, 14, 14], 16),
        ("stage4", [-1, 512, 7, 7], 32),
    ]
    config = (write_model_repository(engine, tmp_path / "repo") / "config.pbtxt").read_text()
    assert all(f'name: "stage{k}"' in config for k in (2, 3, 4))
    lines = inspect_path(int8_features.onnx_path)["outputs"]
    assert lines[0] == "stage2: float ['batch', 128, 28, 28] (stride 8)" and len(lines) == 3

    model = load(int8_features.onnx_path)
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    features = model.features(x)  # 3 inputs through a max batch of 2
    assert {k: v.shape for k, v in features.items()} == {
        "stage2": (3, 128, 28, 28),
        "stage3": (3, 256, 14, 14),
        "stage4": (3, 512, 7, 7),
    }
    single = model.features(x[2:])
    np.testing.assert_allclose(single["stage4"], features["stage4"][2:], rtol=1e-4, atol=1e-4)
    with pytest.raises(FasterViTTRTError, match="a backbone .* call features()"):
        model.logits(x)


def test_bench_times_a_backbone_against_pytorch_eager(int8_features, capsys):
    import json

    from fastervit_trt.cli import bench_main

    assert (
        bench_main(
            [
                "--model",
                str(int8_features.onnx_path),
                "--torch-variant",
                "faster_vit_0_224",
                "--batch-sizes",
                "1",
                "--iters",
                "2",
                "--warmup",
                "0",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the row names where PyTorch ran
    assert [row["model"] for row in rows] == [
        int8_features.onnx_path.name,
        f"pytorch eager {device} (faster_vit_0_224)",
    ]
    assert all(row["p50_ms"] > 0 for row in rows)


@requires_tensorrt
@pytest.mark.slow
def test_fp8_backbone_exports_and_builds(tmp_path):
    from fastervit_trt.engines import BuildConfig, build_engine
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    result = export_quantized(
        ExportOptions(precision="fp8", features=(3, 4), batch=(1, 1, 1), output_dir=tmp_path),
        CalibrationOptions(images=8, heldout=4),
    )
    per_output = result.report["accuracy"]["quantized_vs_fp32_qdq_arithmetic"]
    assert set(per_output) == {"stage3", "stage4"} and all(c["mean_cosine"] >= 0.99 for c in per_output.values())
    sidecar = build_engine(result.onnx_path, tmp_path / "fp8.engine", BuildConfig(batch=(1, 1, 1)))
    assert [o["name"] for o in sidecar["outputs"]] == ["stage3", "stage4"]
    assert sidecar["build"]["compute_capabilities"] and all(
        float(c) >= 8.9 for c in sidecar["build"]["compute_capabilities"]
    )
