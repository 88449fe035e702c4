"""Every exported graph is parsed and built by NVIDIA's own builder (TensorRT-RTX on the CPU)."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from fastervit_trt.engines import BuildConfig, EngineBuildError, build_engine
from tests.conftest import requires_tensorrt

pytestmark = requires_tensorrt


@pytest.mark.parametrize("precision, options", [
    ("fp32", {}),
    ("fp16", {}),
    ("fp32", {"model": "faster_vit_0_any_res", "resolution": (480, 640), "validation_batch": 2}),
])
def test_exported_graph_builds(exported, tmp_path, precision, options):
    result = exported(precision, **options)
    engine = tmp_path / "model.engine"
    sidecar = build_engine(result.onnx_path, engine, BuildConfig(batch=(1, 2, 4)))
    assert engine.stat().st_size > 10e6
    assert sidecar["tensorrt"]["flavour"] in ("tensorrt", "tensorrt-rtx")
    assert "Building engine" in sidecar["build"]["phases"]


def test_parser_error_names_the_node(tmp_path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="the_bad_node", domain="example.custom")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineBuildError, match=r"bad\.onnx: .*cannot parse.*the_bad_node.*NoSuchOp"):
        build_engine(path, tmp_path / "bad.engine", BuildConfig(batch=(1, 1, 1)))
    assert not (tmp_path / "bad.engine").exists()
