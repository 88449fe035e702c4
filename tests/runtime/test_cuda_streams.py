"""runtime.cuda.TorchCuda's own streams and CUDA graphs, run over a stand-in torch.cuda and
cuda-python runtime (tests/stand_in_tensorrt.py: ``install_cuda``): streams no one else
holds, and captures that leave nothing behind when CUDA or TensorRT make them fail."""

from __future__ import annotations

import pytest

from fastervit_trt.runtime.cuda import TorchCuda
from tests import stand_in_tensorrt as stand_in


def test_every_stream_is_created_for_its_owner_alone_and_destroyed_on_release(monkeypatch):
    """torch.cuda.Stream() hands out 32 pooled streams round-robin, shared with every other
    user of the pool (another model, torchvision's decoder): the 33rd is the 1st again."""
    torch, cudart = stand_in.install_cuda(monkeypatch)
    others = {torch.cuda.Stream().cuda_stream for _ in range(3)}
    helper = TorchCuda()
    made = [helper.stream() for _ in range(40)]
    handles = [handle for _, handle in made]
    assert len(set(handles)) == 40 and not others & set(handles)
    assert all(stream.cuda_stream == handle for stream, handle in made)  # what torch queues on
    assert [flags for kind, _, flags in cudart.log if kind == "create"] == [cudart.cudaStreamNonBlocking] * 40
    for stream, _ in made:
        helper.release(stream, None)
    assert cudart.live["streams"] == []


@pytest.mark.parametrize("failure", ["invalidated", "launch refused"])
def test_a_failed_capture_leaves_nothing_capturing_and_nothing_alive(monkeypatch, failure):
    """CUDA invalidates the capture (a synchronizing call inside it: cudaStreamEndCapture
    fails, no graph), or TensorRT's launch returns False inside it: no graph, the stream no
    longer capturing, nothing created left alive, no CUDA error left pending, the caching
    allocator not left believing a capture is underway, and the stream runs uncaptured."""
    torch, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda()
    stream, handle = helper.stream()
    ran = []

    def launch():
        cudart.enqueue(handle, lambda: ran.append("captured"))
        if failure == "invalidated":
            cudart.cudaStreamSynchronize(handle)
        return failure == "invalidated"

    assert helper.capture(stream, launch) is None
    assert not torch.cuda.allocator_capturing
    assert cudart.live["graphs"] == [] and cudart.live["capturing"] == []
    assert cudart.cudaGetLastError() == (cudart.cudaError_t.cudaSuccess,)
    cudart.enqueue(handle, lambda: ran.append("uncaptured"))
    helper.synchronize(stream)
    assert ran == ["uncaptured"]


def test_a_launch_that_raises_inside_a_capture_ends_it(monkeypatch):
    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda()
    stream, _ = helper.stream()
    with pytest.raises(OSError, match="launch broke"):
        helper.capture(stream, lambda: (_ for _ in ()).throw(OSError("launch broke")))
    assert cudart.live["capturing"] == [] and cudart.live["graphs"] == []


def test_a_capture_is_thread_local_on_the_stream_and_replays_until_released(monkeypatch):
    """Begun and ended on the stream itself in thread-local mode (other threads keep
    launching; no device-wide synchronize); replays run the recorded work in stream order;
    release destroys the instantiated graph and the stream."""
    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda()
    stream, handle = helper.stream()
    ran = []
    graph = helper.capture(stream, lambda: cudart.enqueue(handle, lambda: ran.append("kernel")) is None)
    assert graph is not None and ran == []
    assert ("begin capture", handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal) in cudart.log
    helper.replay(graph, stream)
    helper.replay(graph, stream)
    helper.synchronize(stream)
    assert ran == ["kernel", "kernel"]
    helper.release(stream, graph)
    assert cudart.live == {"streams": [], "graphs": [], "capturing": []}
