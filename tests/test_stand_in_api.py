"""The stand-ins speak TensorRT's API: every method and attribute they define on a class they stand
in for exists on the real class of the installed TensorRT-RTX bindings, taking a compatible
number of arguments (pybind11's ``__doc__`` signatures). TensorRT 10-only names and the
stand-ins' own records are listed below, each with its reason."""

from __future__ import annotations

import inspect
import math
import re

import onnx
import pytest
from onnx import TensorProto, helper

from fastervit_trt.tensorrt_import import import_tensorrt
from tests import stand_in_builder, stand_in_tensorrt

trt = import_tensorrt("tensorrt-rtx")
pytestmark = pytest.mark.skipif(trt is None, reason="the TensorRT-RTX bindings are not installed")

WEAK_TYPING = "TensorRT 10's implicit precision (weak typing), removed from TensorRT 11 and TensorRT-RTX"
TENSORRT_10_ONLY = {
    "IInt8EntropyCalibrator2": WEAK_TYPING,
    "IInt8MinMaxCalibrator": WEAK_TYPING,
    "BuilderFlag.FP16": WEAK_TYPING,
    "BuilderFlag.INT8": WEAK_TYPING,
    "IBuilderConfig.int8_calibrator": WEAK_TYPING,
    "IBuilderConfig.set_calibration_profile": WEAK_TYPING,
}
# what a stand-in records for the tests to read; the toolkit never touches it
RECORDS = {
    "INetworkDefinition.inputs": "the parsed graph's input tensors (get_input reads them)",
    "INetworkDefinition.outputs": "the parsed graph's output tensors (get_output reads them)",
    "OnnxParser.network": "the network parse_from_file fills",
    "ITimingCache.data": "the bytes serialize returns",
    "IOptimizationProfile.shapes": "the shapes set_shape was given",
    "IBuilderConfig.cache": "the timing cache set_timing_cache was given",
    "IBuilderConfig.profile": "the profile add_optimization_profile was given",
    "IBuilderConfig.calibration_profile": "the profile set_calibration_profile was given",
    "IExecutionContext.addresses": "the addresses set_tensor_address accepted",
    "IExecutionContext.allocation": "the allocation strategy it was made with",
    "IExecutionContext.config": "the runtime config it was made with",
    "IExecutionContext.history": "every input shape it was set to",
    "IExecutionContext.memory": "the device memory set_device_memory was given",
    "IExecutionContext.shape": "the input shape set_input_shape accepted last",
}


def _signature_counts(doc: str, name: str) -> list[tuple[int, int]]:
    """(required, total) arguments after ``self`` of each overload pybind11 lists in ``doc``."""
    counts = []
    for params in re.findall(rf"^(?:\d+\. )?{name}\((.*)\) ->", doc or "", re.MULTILINE):
        depth, start, parts = 0, 0, []
        for i, char in enumerate(params):
            depth += char in "[(<"
            depth -= char in "])>"
            if char == "," and depth == 0:
                parts.append(params[start:i].strip())
                start = i + 1
        parts.append(params[start:].strip())
        if parts[0] == "*args":
            continue  # the header line of an overloaded function
        parts = [p for p in parts[1:] if p]  # after self
        counts.append((sum(" = " not in p for p in parts), len(parts)))
    return counts


def _stand_in_counts(function) -> tuple[int, float]:
    """(required, total) arguments after ``self`` of a stand-in method (total inf with *args)."""
    params = list(inspect.signature(function).parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    total = math.inf if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
    return required, total


def _mismatches(stand_in: object, real_name: str) -> list[str]:
    """What the stand-in object (or class) defines that the real class ``real_name`` lacks or
    takes a different number of arguments for."""
    real = getattr(trt, real_name)
    cls = stand_in if isinstance(stand_in, type) else type(stand_in)
    names = {n: v for c in reversed(cls.__mro__[:-1]) for n, v in vars(c).items() if not n.startswith("_")}
    if not isinstance(stand_in, type):
        names.update({n: v for n, v in vars(stand_in).items() if not n.startswith("_")})
    problems = []
    for name, value in sorted(names.items()):
        key = f"{real_name}.{name}"
        if key in TENSORRT_10_ONLY or key in RECORDS:
            continue
        if not hasattr(real, name):
            problems.append(f"{key}: not in TensorRT-RTX {trt.__version__}")
            continue
        if inspect.isfunction(value):
            required, total = _stand_in_counts(value)
            real_counts = _signature_counts(getattr(real, name).__doc__, name)
            if real_counts and not any(r <= total and required <= t for r, t in real_counts):
                problems.append(f"{key}: takes {required}..{total} arguments, TensorRT-RTX {real_counts}")
    return problems


def _namespace_mismatches(module) -> list[str]:
    """Module-level names and enum members of a stand-in ``trt`` module that TensorRT-RTX lacks."""
    problems = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name in TENSORRT_10_ONLY:
            continue
        if not hasattr(trt, name):
            problems.append(f"{name}: not in TensorRT-RTX {trt.__version__}")
        elif not isinstance(value, type) and hasattr(value, "__dict__") and not callable(value):
            for member in vars(value):
                key = f"{name}.{member}"
                if key not in TENSORRT_10_ONLY and not hasattr(getattr(trt, name), member):
                    problems.append(f"{key}: not in TensorRT-RTX {trt.__version__}")
    return problems


def test_stand_in_builder_speaks_tensorrt_rtx_api(tmp_path):
    world = stand_in_builder.Builder()
    fake = world.trt
    logger = fake.Logger(fake.Logger.ERROR)
    builder = fake.Builder(logger)
    network = builder.create_network(0)
    parser = fake.OnnxParser(network, logger)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "tiny.onnx"))
    assert parser.parse_from_file(str(tmp_path / "tiny.onnx"))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3), (1, 3), (1, 3))
    config.add_optimization_profile(profile)
    config.set_calibration_profile(profile)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    objects = {
        "Builder": builder,
        "INetworkDefinition": network,
        "ITensor": network.get_input(0),
        "OnnxParser": parser,
        "IBuilderConfig": config,
        "IOptimizationProfile": profile,
        "ITimingCache": cache,
        "IProgressMonitor": fake.IProgressMonitor,
        "Logger": logger,
    }
    problems = [p for real, stand_in in objects.items() for p in _mismatches(stand_in, real)]
    assert problems + _namespace_mismatches(fake) == []


def test_stand_in_runtime_speaks_tensorrt_rtx_api():
    world = stand_in_tensorrt.tensorrt(1, 4, rtx=trt.__version__)
    fake = world.trt
    logger = fake.Logger(fake.Logger.ERROR)
    runtime = fake.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(b"engine")
    objects = {
        "Logger": logger,
        "Runtime": runtime,
        "ICudaEngine": engine,
        "IExecutionContext": engine.create_execution_context(),
        "IRuntimeConfig": engine.create_runtime_config(),
    }
    problems = [p for real, stand_in in objects.items() for p in _mismatches(stand_in, real)]
    assert problems + _namespace_mismatches(fake) == []


def test_the_check_finds_a_misspelt_name_and_a_wrong_argument_count():
    """The checks above, on a stand-in with one of each slip; and pybind11's overloads read."""

    class Slipped:
        def build_serialised_network(self, network, config):
            pass

        def create_network(self, flags, extra):
            pass

    assert _mismatches(Slipped, "Builder") == [
        f"Builder.build_serialised_network: not in TensorRT-RTX {trt.__version__}",
        "Builder.create_network: takes 2..2 arguments, TensorRT-RTX [(0, 1)]",
    ]
    assert _signature_counts(trt.IOptimizationProfile.set_shape.__doc__, "set_shape") == [(4, 4)]
    doc = trt.ICudaEngine.create_execution_context.__doc__
    assert _signature_counts(doc, "create_execution_context") == [(0, 1), (0, 1)]
