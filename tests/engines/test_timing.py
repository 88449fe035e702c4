"""Which machines get TensorRT's timer for the export's speed line (the timer itself runs
engines, so only on a GPU; its choice is checked here with the device queries stood in)."""

from __future__ import annotations

import pytest

from fastervit_trt.engines import timing
from tests.conftest import requires_tensorrt

pytestmark = requires_tensorrt


@pytest.fixture
def gpu(monkeypatch):
    """A visible GPU of a chosen compute capability, as torch and the runtime would report it."""
    import torch

    def with_capability(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(timing, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")

    return with_capability


def test_no_gpu_no_engine_timer(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "device_count", lambda: None)
    assert timing.engine_timer(tmp_path, (1, 8, 32), "int8") is None


def test_engine_timer_only_where_the_engines_run(tmp_path, gpu):
    rtx = timing.import_tensorrt().__name__.startswith("tensorrt_rtx")
    gpu((9, 0))  # Hopper: TensorRT runs there, TensorRT-RTX does not
    assert (timing.engine_timer(tmp_path, (1, 8, 32), "int8") is None) == rtx
    gpu((8, 6))  # Ampere: INT8 anywhere, FP8 needs 8.9
    timer = timing.engine_timer(tmp_path, (1, 8, 32), "int8")
    assert timer is not None and timer.kind == "tensorrt" and timer.runtime.endswith("on Stand-in GPU")
    assert timing.engine_timer(tmp_path, (1, 8, 32), "fp8") is None
    gpu((8, 9))
    assert timing.engine_timer(tmp_path, (1, 8, 32), "fp8") is not None
