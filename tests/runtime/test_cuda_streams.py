"""runtime.cuda.TorchCuda's own streams and CUDA graphs, run over a stand-in torch.cuda and
cuda-python runtime (tests/stand_in_tensorrt.py: ``install_cuda``): streams no one else
holds, and captures that leave nothing behind when CUDA or TensorRT make them fail."""

from __future__ import annotations

import pytest

from fastervit_trt.errors import FasterViTTRTError
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


def test_a_stream_is_destroyed_with_its_device_current_whoever_collects_or_releases_it(monkeypatch):
    """A model on cuda:1: its stream is destroyed with cuda:1 current, when released from a
    thread whose current device is another, and when only the garbage collector gets to it
    (on whatever thread: a runtime call with no context current initialises device 0)."""
    import gc
    import threading

    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda(1)
    released, handle = helper.stream()
    worker = threading.Thread(target=helper.release, args=(released, None))
    worker.start()
    worker.join(10)
    collected, other = helper.stream()
    del collected
    gc.collect()
    assert [entry for entry in cudart.log if entry[0] == "destroy"] == [("destroy", handle, 1), ("destroy", other, 1)]
    assert cudart.live["streams"] == []


def test_release_checks_what_cuda_answers_and_destroys_the_stream_even_when_the_graph_fails(monkeypatch):
    """cudaStreamDestroy's and cudaGraphExecDestroy's errors raise; the stream is destroyed
    even when its graph's destroy fails."""
    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda()
    stream, handle = helper.stream()
    graph = helper.capture(stream, lambda: cudart.enqueue(handle, lambda: None) is None)
    cudart.cudaGraphExecDestroy(graph)  # gone already: the release's own destroy fails
    with pytest.raises(FasterViTTRTError, match="CUDA cudaGraphExecDestroy failed on cuda:0"):
        helper.release(stream, graph)
    assert cudart.live["streams"] == []

    monkeypatch.setattr(
        cudart, "cudaStreamDestroy", lambda created: (stand_in.CudaError.cudaErrorInvalidResourceHandle,)
    )
    stream, handle = helper.stream()
    with pytest.raises(
        FasterViTTRTError, match="CUDA cudaStreamDestroy failed on cuda:0: cudaErrorInvalidResourceHandle"
    ):
        helper.release(stream, None)


def test_a_capture_ending_with_an_error_other_than_invalidation_raises(monkeypatch):
    """Only cudaErrorStreamCaptureInvalidated means "no graph, run uncaptured" (trtexec's
    endCaptureOnError); any other error of cudaStreamEndCapture, or of destroying the graph
    of a refused launch, is an error, and none is left pending."""
    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda()
    stream, handle = helper.stream()
    with pytest.raises(FasterViTTRTError, match="CUDA cudaStreamEndCapture failed on cuda:0: cudaErrorIllegalState"):
        helper.capture(stream, lambda: cudart.captures.pop(handle) is not None)  # no capture left to end
    assert cudart.cudaGetLastError() == (cudart.cudaError_t.cudaSuccess,)

    destroy = cudart.cudaGraphDestroy
    monkeypatch.setattr(
        cudart,
        "cudaGraphDestroy",
        lambda graph: (destroy(graph), (stand_in.CudaError.cudaErrorInvalidResourceHandle,))[1],
    )
    with pytest.raises(FasterViTTRTError, match="CUDA cudaGraphDestroy failed"):
        helper.capture(stream, lambda: False)
    with pytest.raises(FasterViTTRTError, match="CUDA cudaGraphDestroy failed"):
        helper.capture(stream, lambda: cudart.enqueue(handle, lambda: None) is None)
    assert cudart.live["graphs"] == [] and cudart.live["capturing"] == []


def test_a_stream_never_released_takes_its_graph_along_when_collected(monkeypatch):
    """A model dropped without close(): its streams are collected, and the instantiated
    graphs captured on them are destroyed with them, with the device current."""
    import gc

    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda(1)
    stream, handle = helper.stream()
    graph = helper.capture(stream, lambda: cudart.enqueue(handle, lambda: None) is None)
    assert cudart.live["graphs"] == [graph]
    del stream, graph
    gc.collect()
    assert cudart.live == {"streams": [], "graphs": [], "capturing": []}
    assert ("destroy", handle, 1) in cudart.log


def test_finalizers_that_ran_leave_the_lists(monkeypatch):
    """A service making contexts again and again: the entries of streams and graphs already
    collected go when the next is made, so the lists hold only what is alive."""
    import gc

    _, cudart = stand_in.install_cuda(monkeypatch)
    helper = TorchCuda()
    for _ in range(50):
        stream, handle = helper.stream()
        helper.capture(stream, lambda handle=handle: cudart.enqueue(handle, lambda: None) is None)
        del stream
        gc.collect()
    assert cudart.live["streams"] == [] and cudart.live["graphs"] == []
    _, last = helper.stream()
    assert list(helper.destroyers) == [last] and list(helper.graph_destroyers) == []
