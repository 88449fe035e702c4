"""Options flow from their dataclasses: each field's metadata spells its flag, the flag parses
back into the field, and every choice a flag offers is the package's own constant."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from fastervit_trt.calibration.options import ATTENTION_QDQ, QDQ_BASES, RESIDUAL_QDQ, CalibrationOptions
from fastervit_trt.calibration.ranges import METHODS
from fastervit_trt.cli import build, deepstream, export, infer, triton
from fastervit_trt.cli.common import FLAG_KEYS, ON_OFF, options_from
from fastervit_trt.deepstream import PROCESS_MODES, DeepStreamOptions
from fastervit_trt.engines.config import BACKENDS, OPT_LEVELS, BuildConfig
from fastervit_trt.engines.config import PRECISIONS as BUILD_PRECISIONS
from fastervit_trt.export.stages import IO_DTYPES, PRECISIONS, ExportOptions
from fastervit_trt.models import WEIGHT_CHOICES
from fastervit_trt.preprocess import CROP_MODES, INPUT_FORMATS, INTERPOLATIONS, TransformOptions
from fastervit_trt.quant_formats import TARGETS
from fastervit_trt.runtime.backend import RuntimeOptions
from fastervit_trt.triton import INSTANCE_KINDS, TritonOptions

# (command module, options dataclass, arguments every parse needs)
COMMANDS = [
    (export, ExportOptions, ["--variant", "faster_vit_digits"]),
    (export, TransformOptions, []),
    (export, CalibrationOptions, []),
    (build, BuildConfig, ["model.onnx"]),
    (deepstream, DeepStreamOptions, ["model.onnx", "--out", "ds"]),
    (triton, TritonOptions, ["model.onnx", "--repo", "models"]),
    (infer, RuntimeOptions, ["x.jpg", "--model", "model.onnx"]),
]
IDS = [f"{module.__name__.rsplit('.', 1)[1]}-{cls.__name__}" for module, cls, _ in COMMANDS]
# a flag that only parses beside another
COMPANIONS = {"--feature-norm": ["--features"], "--target": ["--precision", "int8"]}
SAMPLES = {
    "batch_profile": ("2,4,8", (2, 4, 8)),
    "stages": ("2,3", (2, 3)),
    "capabilities": ("8.9", ("8.9",)),
    "provider": ("cuda", "cuda"),
}


def _flagged(cls: type) -> list:
    return [f for f in fields(cls) if "flag" in f.metadata]


def _other_value(field, cls: type) -> tuple[list[str], object]:
    """Arguments giving ``field`` a value other than its default, and that value."""
    meta, default = field.metadata, field.default
    flag = meta["flag"]
    if isinstance(default, bool) or field.type == "bool":
        return ([flag, "off"], False) if default else ([flag], True)
    if "choices" in meta:
        choice = next(c for c in meta["choices"] if c != default)
        return [flag, str(choice)], choice
    if "parse" in meta:
        text, value = SAMPLES[meta["parse"]]
        return [flag, text], value
    kind = float if "float" in field.type else int if "int" in field.type else None
    if "range" in meta:
        low, high = meta["range"]
        value = next(
            v for v in (high, *((low + 1, low + 2) if low is not None else ())) if v is not None and v != default
        )
        value = kind(value)
    elif kind is not None:
        value = kind(1)
    else:
        value = {"--variant": "faster_vit_0_224", "--name": "a_name"}.get(flag, "some/file")
    if "nargs" in meta:
        return [flag, *[str(value)] * meta["nargs"]], (value,) * meta["nargs"]
    return [flag, str(value)], Path(value) if "Path" in field.type else value


@pytest.mark.parametrize("module,cls,needed", COMMANDS, ids=IDS)
def test_defaults_parse_into_the_dataclass_defaults(module, cls, needed):
    args = module.parser().parse_args(needed)
    given = {"model": "faster_vit_digits"} if cls is ExportOptions else {}
    assert options_from(cls, args) == cls(**given)


@pytest.mark.parametrize("module,cls,needed", COMMANDS, ids=IDS)
def test_each_flag_sets_its_field(module, cls, needed):
    for field in _flagged(cls):
        argv, value = _other_value(field, cls)
        args = module.parser().parse_args([*needed, *COMPANIONS.get(argv[0], []), *argv])
        got = getattr(options_from(cls, args), field.name)
        assert got == value, f"{' '.join(argv)}: {cls.__name__}.{field.name} is {got!r}, not {value!r}"


def test_a_field_without_metadata_takes_the_argument_of_its_name():
    from fastervit_trt.triton import TritonOptions

    args = argparse.Namespace(name="m", instances=2, kind="cpu", max_queue_delay_us=5, image_bytes=True, force=True)
    assert options_from(TritonOptions, args) == TritonOptions("m", 2, "cpu", 5, True, True)


@pytest.mark.parametrize("cls", [cls for _, cls, _ in COMMANDS])
def test_metadata_says_only_what_add_options_reads(cls):
    assert {key for f in fields(cls) for key in f.metadata} <= set(FLAG_KEYS)


CONSTANTS = {
    (export, "--precision"): PRECISIONS,
    (export, "--weights"): WEIGHT_CHOICES,
    (export, "--input"): tuple(INPUT_FORMATS),
    (export, "--io-dtype"): IO_DTYPES,
    (export, "--interpolation"): INTERPOLATIONS,
    (export, "--crop-mode"): CROP_MODES,
    (export, "--calib-method"): METHODS,
    (export, "--qdq-base"): QDQ_BASES,
    (export, "--residual-qdq"): RESIDUAL_QDQ,
    (export, "--attention-qdq"): ATTENTION_QDQ,
    (export, "--target"): tuple(TARGETS),
    (export, "--bias-correction"): ON_OFF,
    (build, "--backend"): BACKENDS,
    (build, "--precision"): BUILD_PRECISIONS,
    (build, "--opt-level"): OPT_LEVELS,
    (deepstream, "--process-mode"): tuple(PROCESS_MODES),
    (triton, "--kind"): INSTANCE_KINDS,
}


@pytest.mark.parametrize("module", [export, build, deepstream, triton], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_choices_are_the_package_constants(module):
    offered = {
        action.option_strings[0]: action.choices for action in module.parser()._actions if action.choices is not None
    }
    expected = {flag: constant for (where, flag), constant in CONSTANTS.items() if where is module}
    assert offered == expected


def test_the_options_refuse_what_the_flags_do_not_offer():
    from fastervit_trt.errors import OptionsError

    for make in (
        lambda: CalibrationOptions(method="kl"),
        lambda: CalibrationOptions(qdq_base="bf16"),
        lambda: CalibrationOptions(residual_qdq="maybe"),
        lambda: CalibrationOptions(attention_qdq="maybe"),
        lambda: ExportOptions(model="faster_vit_digits", precision="int8", target="gpu"),
        lambda: ExportOptions(model="faster_vit_digits", precision="fp8", target="onnxruntime-cpu"),
        lambda: TransformOptions(interpolation="area"),
        lambda: TransformOptions(crop_mode="border"),
        lambda: ExportOptions(model="faster_vit_digits", precision="fp4"),
        lambda: ExportOptions(model="faster_vit_digits", input_format="rgb"),
        lambda: DeepStreamOptions(process_mode="tertiary"),
    ):
        with pytest.raises(OptionsError):
            make()
