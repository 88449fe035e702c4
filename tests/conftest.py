"""Shared fixtures. Tests mirror the package: tests/models, tests/export, ..."""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", module="timm")

# Fixtures that export, calibrate or build real models (10-20 s each on 2 cores). Their users
# are marked slow with them: deselecting only the slow tests would move a fixture's cost onto
# its next user, and `pytest -m "not slow"` (the fast loop) would not be fast.
SLOW_FIXTURES = {"int8_export", "mixed", "accuracies", "fp16_engine", "int8_features", "digits"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def official_state():
    """Randomised official faster_vit_0_224 weights (the oracle's state dict)."""
    from tests.parity import official_model, randomize_

    return randomize_(official_model("faster_vit_0_224"), seed=3).state_dict()


@pytest.fixture(scope="session")
def images_224():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))


def has_tensorrt() -> bool:
    from fastervit_trt.engines import EngineBuildError, load_tensorrt

    try:
        load_tensorrt()
    except EngineBuildError:
        return False
    return True


requires_tensorrt = pytest.mark.skipif(not has_tensorrt(), reason="no TensorRT / TensorRT-RTX installed")


@pytest.fixture(scope="session")
def realistic_checkpoint(tmp_path_factory, official_state):
    """faster_vit_0 weights with every bias, statistic and scale non-zero, as a trained file has.

    Random init leaves biases at zero, which onnxslim folds away; graph checks must see
    the graph a real checkpoint produces. The any-res variants load the same file.
    """
    path = tmp_path_factory.mktemp("ckpt") / "faster_vit_0_randomized.pth"
    torch.save({"state_dict": official_state}, path)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory, realistic_checkpoint):
    """Export (once per distinct options) from the realistic checkpoint: {options: result}."""
    from fastervit_trt.export.pipeline import ExportOptions, export_model

    out = tmp_path_factory.mktemp("export")
    cache = {}

    def get(precision: str, **options):
        key = (precision, tuple(sorted(options.items())))
        if key not in cache:
            folder = out / f"{precision}-{len(cache)}"
            cache[key] = export_model(
                ExportOptions(precision=precision, output_dir=folder, checkpoint=realistic_checkpoint, **options)
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory):
    """faster_vit_0_224 (random init) exported to INT8 with 64 calibration inputs."""
    from fastervit_trt.export.pipeline import ExportOptions
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    out = tmp_path_factory.mktemp("int8")
    return export_quantized(ExportOptions(precision="int8", output_dir=out), CalibrationOptions(images=64))


def _digits_onnx(folder, **options):
    """The trained digits fixture exported as FP32 ONNX into ``folder``."""
    from pathlib import Path

    from fastervit_trt.export.pipeline import ExportOptions, export_model

    checkpoint = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"
    return export_model(
        ExportOptions(model="faster_vit_digits", checkpoint=checkpoint, precision="fp32", output_dir=folder, **options)
    ).onnx_path


@pytest.fixture(scope="session")
def digits_fp32_onnx(tmp_path_factory):
    """The trained digits model as FP32 ONNX with the default batch profile (one export shared by
    the runtime-option, backend and CLI-tool tests)."""
    return _digits_onnx(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digits_batch8_onnx(tmp_path_factory):
    """The trained digits model as FP32 ONNX with a batch profile of 1,4,8 (what the batcher
    and the HTTP service are tested on)."""
    return _digits_onnx(tmp_path_factory.mktemp("digits8"), batch=(1, 4, 8))


@pytest.fixture(scope="session")
def digits_folders(tmp_path_factory):
    """scikit-learn digits written as labelled PNG folders: {"train": dir, "heldout": dir}."""
    from tests.fixtures.digits import split_named, write_folder

    root = tmp_path_factory.mktemp("digits")
    return {name: write_folder(root / name, images, labels) for name, (images, labels) in split_named().items()}


def pytest_terminal_summary(terminalreporter) -> None:
    """The bad-input suite's counts: cases tried, tracebacks and files left behind (both must be 0)."""
    import sys

    suite = sys.modules.get("tests.test_bad_inputs")
    if suite is not None and suite.TALLY["cases"]:
        tally = suite.TALLY
        terminalreporter.write_line(
            f"bad-input suite: {tally['cases']} cases, {tally['tracebacks']} tracebacks, "
            f"{tally['files left behind']} files left behind"
        )
