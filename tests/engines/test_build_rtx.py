"""Every exported graph is parsed and built by NVIDIA's own builder (TensorRT-RTX on the CPU)."""

from __future__ import annotations

import re

import onnx
import pytest
from onnx import TensorProto, helper

from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine
from tests.conftest import requires_tensorrt

pytestmark = requires_tensorrt


@pytest.mark.parametrize(
    "precision, options",
    [
        ("fp32", {}),
        ("fp16", {}),
        ("fp32", {"model": "faster_vit_0_any_res", "resolution": (480, 640), "validation_batch": 2}),
    ],
)
@pytest.mark.slow
def test_exported_graph_builds(exported, tmp_path, precision, options):
    result = exported(precision, **options)
    engine = tmp_path / "model.engine"
    sidecar = build_engine(result.onnx_path, engine, BuildConfig(batch=(1, 2, 4)))
    assert engine.stat().st_size > 10e6
    assert sidecar["tensorrt"]["flavour"] in ("tensorrt", "tensorrt-rtx")
    assert "Building engine" in sidecar["build"]["phases"]


def test_parser_error_names_the_node(tmp_path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="the_bad_node", domain="example.custom")
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineBuildError, match=r"bad\.onnx: .*cannot parse.*the_bad_node.*NoSuchOp"):
        build_engine(path, tmp_path / "bad.engine", BuildConfig(batch=(1, 1, 1)))
    assert not (tmp_path / "bad.engine").exists()


@pytest.fixture
def tiny_onnx(tmp_path):
    """A graph TensorRT-RTX parses in milliseconds: (N, 3, 8, 8) -> (N, 3)."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_target_the_installed_bindings_lack_is_named_with_what_they_offer(tiny_onnx, tmp_path, monkeypatch):
    """A target table newer than the bindings (9.0 as SM90, which TensorRT-RTX 1.7 does not
    build for) is one line naming it and the installed bindings' own targets."""
    from fastervit_trt.engines import builder

    monkeypatch.setitem(builder.RTX_TARGETS, "9.0", "SM90")
    config = BuildConfig(batch=(1, 1, 1), backend="tensorrt-rtx", compute_capabilities=("8.9", "9.0"))
    with pytest.raises(EngineBuildError) as error:
        build_engine(tiny_onnx, tmp_path / "tiny.engine", config)
    assert re.fullmatch(
        r"compute capability 9\.0 \(SM90\) is not a target of the installed TensorRT-RTX [\d.]+ bindings; "
        r"they offer 7\.5, 8\.0, 8\.6, 8\.9, 12\.0, 12\.1 \(choose --compute-capability from those, or "
        r"upgrade tensorrt-rtx-cu12-bindings\)",
        str(error.value),
    )
    assert not (tmp_path / "tiny.engine").exists()


def test_a_compute_capability_the_bindings_refuse_is_an_error_not_ignored(tiny_onnx, tmp_path, monkeypatch):
    """set_compute_capability answers False (here: kNONE, which TensorRT-RTX never builds for);
    the build stops with one line instead of going on without that target."""
    from fastervit_trt.engines import builder

    monkeypatch.setitem(builder.RTX_TARGETS, "8.9", "NONE")
    config = BuildConfig(batch=(1, 1, 1), backend="tensorrt-rtx", compute_capabilities=("8.6", "8.9"))
    with pytest.raises(
        EngineBuildError,
        match=r"^TensorRT-RTX [\d.]+ refused compute capability 8\.9 \(NONE\) as build target 2 of 2 "
        r"\(set_compute_capability returned False; its reason is printed above\)$",
    ):
        build_engine(tiny_onnx, tmp_path / "tiny.engine", config)
    assert not (tmp_path / "tiny.engine").exists()


def test_a_refused_number_of_targets_is_one_line(tiny_onnx, monkeypatch):
    """The bindings raise ValueError when TensorRT-RTX refuses the number of targets
    (setNbComputeCapabilities returned false); the builder says so in one line."""
    from fastervit_trt.engines import builder

    _, trt = builder.load_tensorrt("tensorrt-rtx")
    real = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()

    class Refusing:
        def __getattr__(self, name):
            return getattr(real, name)

        def __setattr__(self, name, value):
            if name == "num_compute_capabilities":
                raise ValueError("Provided number of compute capabilities is incorrect")
            setattr(real, name, value)

    with pytest.raises(
        EngineBuildError,
        match=r"^TensorRT-RTX [\d.]+ refused 2 build targets \(8\.6, 8\.9\): "
        r"Provided number of compute capabilities is incorrect$",
    ):
        builder.set_targets(trt, Refusing(), ("8.6", "8.9"))


def test_targets_are_set_in_order(tiny_onnx):
    from fastervit_trt.engines import builder

    _, trt = builder.load_tensorrt("tensorrt-rtx")
    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    builder.set_targets(trt, config, ("12.0", "8.9"))
    assert config.num_compute_capabilities == 2
    assert [config.get_compute_capability(i) for i in range(2)] == [
        trt.ComputeCapability.SM120,
        trt.ComputeCapability.SM89,
    ]


def _built_kernels(path) -> list[tuple[str, list[tuple[str, str]]]]:
    """TensorRT-RTX's kernels for the ONNX file ``path`` (strongly typed, batch 1) and their
    inputs, as its detailed build log lists them: [(kernel, [(input, datatype), ...])]."""
    from fastervit_trt.engines import load_tensorrt

    _, trt = load_tensorrt("tensorrt-rtx")

    class Recorder(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, message) -> None:
            self.lines.append(message)

    logger = Recorder()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(path))
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for tensor in (network.get_input(i) for i in range(network.num_inputs)):
        shape = [1 if d == -1 else d for d in tensor.shape]
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config)
    layer = r"Name: (\S+), LayerType: \S+, Inputs: \[(.*?)\], (?:Constants|Outputs)"
    listing = re.finditer(layer, "\n".join(logger.lines))
    return [(m.group(1), re.findall(r"Name: (\S+?),.*?Datatype: (\w+)", m.group(2))) for m in listing]


def test_residual_add_reads_the_int8_tensor_its_conv_block_already_has(tmp_path):
    """TensorRT's Q/DQ placement rule, proven on TensorRT-RTX's own build: with the residual
    input quantized, the kernel holding conv2's epilogue and the Add reads the residual in
    INT8 (the tensor conv1 reads); without, it reads a float copy kept for it."""
    from fastervit_trt.calibration.qdq import insert_qdq, placement, to_opset
    from tests.calibration.test_qdq import AMAX, WEIGHTS, _residual_graph

    model = to_opset(_residual_graph(), 19)
    placed = placement(model, "int8")

    def add_kernel_inputs(residuals) -> list[str]:
        onnx.save(insert_qdq(model, placed.targets, AMAX, WEIGHTS, residuals=residuals), str(tmp_path / "m.onnx"))
        kernels = _built_kernels(tmp_path / "m.onnx")
        names = [name for name, _ in kernels]
        after_conv2 = kernels[next(i for i, name in enumerate(names) if name.startswith("conv2")) + 1]
        assert "Add" in after_conv2[0], names
        return sorted(datatype for _, datatype in after_conv2[1])

    assert add_kernel_inputs([]) == ["Float", "Float"]
    assert add_kernel_inputs(placed.residuals) == ["Float", "Int8"]


def test_faster_vit_0_int8_build_reads_every_conv_block_residual_in_int8(int8_export):
    """The same on faster_vit_0_224 INT8: each of the 5 ConvBlocks' residual Adds (levels 0
    and 1) is fused into a kernel that reads the block input as the INT8 tensor conv1 reads."""
    kernels = _built_kernels(int8_export.onnx_path)
    residual_reads = sorted(
        re.search(r"/levels\.\d/blocks\.\d/", name).group(0)
        for kernel, inputs in kernels
        if "Add" in kernel
        for name, datatype in inputs
        if datatype == "Int8" and "/conv1/" in name
    )
    assert residual_reads == [
        "/levels.0/blocks.0/",
        "/levels.0/blocks.1/",
        "/levels.1/blocks.0/",
        "/levels.1/blocks.1/",
        "/levels.1/blocks.2/",
    ], kernels
