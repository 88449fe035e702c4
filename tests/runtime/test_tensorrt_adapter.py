"""The TensorRT adapter driven on the CPU through a stand-in TensorRT and CUDA as strict as
the real ones (tests/stand_in_tensorrt.py): batch planning against the profile, CUDA graphs
per captured size, asynchronous copies, refused addresses, the device, the pool's closed
state; dtype mapping through TensorRT's own ``nptype``; and the legacy INT8 calibrator."""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.runtime.tensorrt_backend import TensorRTBackend, batch_plan, graph_sizes, numpy_dtype
from tests import stand_in_tensorrt as stand_in


@pytest.mark.parametrize(
    "count,low,high,plan",
    [
        (5, 1, 32, [(0, 5, 5)]),
        (70, 1, 32, [(0, 32, 32), (32, 64, 32), (64, 70, 6)]),
        (1, 4, 8, [(0, 1, 4)]),  # below the profile's MIN: padded up
        (10, 4, 8, [(0, 8, 8), (8, 10, 4)]),  # the remainder of a split batch too
        (3, 8, 8, [(0, 3, 8)]),  # a fixed-batch engine
    ],
)
def test_batch_plan_respects_the_profile(count, low, high, plan):
    assert batch_plan(count, low, high) == plan
    assert all(low <= run_as <= high and run_as >= stop - start for start, stop, run_as in plan)


@pytest.mark.parametrize(
    "low,high,sizes",
    [
        (1, 32, (1, 2, 4, 8, 16, 32)),
        (4, 8, (4, 8)),
        (1, 48, (1, 2, 4, 8, 16, 32, 48)),
        (3, 3, (3,)),
        (3, 20, (3, 4, 8, 16, 20)),
    ],
)
def test_graphs_are_captured_at_powers_of_two_and_the_profile_ends(low, high, sizes):
    assert graph_sizes(low, high) == sizes
    assert sum(sizes) < 3 * high and (high & (high - 1) or sum(sizes) < 2 * high)  # the memory bound stated
    plan = batch_plan(70, low, high, sizes)
    assert all(run_as in sizes and run_as >= stop - start for start, stop, run_as in plan)
    assert batch_plan(70, 1, 32, graph_sizes(1, 32)) == [(0, 32, 32), (32, 64, 32), (64, 70, 8)]


def test_io_dtypes_come_from_tensorrt_itself():
    from tests.conftest import has_tensorrt

    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX installed")
    from fastervit_trt.engines import load_tensorrt

    _, trt = load_tensorrt()
    for name, expected in [
        ("float32", np.float32),
        ("float16", np.float16),
        ("int64", np.int64),
        ("bool", np.bool_),
        ("uint8", np.uint8),
        ("int8", np.int8),
    ]:
        assert numpy_dtype(trt, getattr(trt, name), "m.engine") == np.dtype(expected)
    with pytest.raises(FasterViTTRTError, match="m.engine: TensorRT type .* has no NumPy equivalent"):
        numpy_dtype(trt, trt.bfloat16, "m.engine")


def _backend(
    tmp_path,
    monkeypatch,
    low=1,
    high=8,
    contexts=1,
    cuda_graphs=False,
    device=None,
    version_compat=False,
    **world_options,
):
    """A TensorRTBackend over the stand-in, and the stand-in's record of what it was asked."""
    from fastervit_trt.runtime import tensorrt_backend

    world = stand_in.tensorrt(low, high, **world_options)
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda flavour=None: world.trt)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", world.open_cuda)
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    return TensorRTBackend(
        path, contexts=contexts, cuda_graphs=cuda_graphs, device=device, version_compat=version_compat
    ), world


def _images(count, seed=0):
    return np.random.default_rng(seed).standard_normal((count, 3, 2, 2)).astype(np.float32)


def _sums(x):
    return x.reshape(len(x), -1).sum(1)


@pytest.mark.parametrize("low,high,count,calls", [(4, 8, 1, [4]), (4, 8, 10, [8, 4]), (1, 8, 3, [3])])
def test_backend_pads_to_the_profile_minimum_and_drops_the_padding(low, high, count, calls, tmp_path, monkeypatch):
    backend, world = _backend(tmp_path, monkeypatch, low, high)
    x = _images(count)
    logits = backend.infer(x)
    assert world.calls == calls and logits.shape == (count, 1)
    np.testing.assert_allclose(logits[:, 0], _sums(x), rtol=1e-6)


def test_backend_returns_every_output_of_a_backbone_engine(tmp_path, monkeypatch):
    """Feature-map engines: one buffer per output, each read back in full, split batches
    joined per output, and results that later calls do not overwrite."""
    shapes = {"stage2": (4, 3, 3), "stage3": (8, 2, 2), "stage4": (16, 1, 1)}
    backend, world = _backend(tmp_path, monkeypatch, 2, 4, outputs=shapes)
    assert backend.output_names == list(shapes) and backend.output_shapes == shapes
    x = _images(5)
    outputs = backend.infer_all(x)
    assert world.calls == [4, 2]  # split at MAX, the remainder padded to MIN
    backend.infer_all(-x)  # reuses the same buffers
    for k, (name, shape) in enumerate(shapes.items(), start=1):
        assert outputs[name].shape == (5, *shape) and outputs[name].dtype == np.float32
        np.testing.assert_allclose(
            outputs[name], np.broadcast_to((k * _sums(x)).reshape(5, 1, 1, 1), (5, *shape)), rtol=1e-6
        )
    np.testing.assert_array_equal(backend.infer(x), outputs["stage2"])  # infer: the first output


def test_one_stream_synchronize_per_engine_call_whatever_the_outputs(tmp_path, monkeypatch):
    """Outputs appear only once the stream is synchronized; that happens once per engine
    call, not once per output (a backbone has four)."""
    shapes = {f"stage{i}": (2, 1, 1) for i in range(1, 5)}
    backend, world = _backend(tmp_path, monkeypatch, 1, 4, outputs=shapes)
    world.cuda.log.clear()
    outputs = backend.infer_all(_images(7))
    assert world.calls == [4, 3] and world.cuda.log.count(("sync",)) == 2
    np.testing.assert_allclose(outputs["stage4"][:, 0, 0, 0], 4 * _sums(_images(7)), rtol=1e-6)


def test_cuda_graphs_never_replay_a_graph_captured_at_another_shape(tmp_path, monkeypatch):
    """70 images on a 1..32 profile run as 32, 32 and 6 (padded to 8); calls of every size in
    turn through one context per size: the stand-in fails any replay on a context whose
    shape moved since its capture, and every answer is checked."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 32, cuda_graphs=True)
    for count in (70, 6, 32, 1, 17, 70, 3, 6, 32, 1):
        x = _images(count, seed=count)
        np.testing.assert_allclose(backend.infer(x)[:, 0], _sums(x), rtol=1e-5)
    assert set(world.calls) <= set(graph_sizes(1, 32))
    assert ("replay",) in world.cuda.log
    assert all(len(set(c.history)) == 1 for c in world.contexts)  # never reshaped
    shapes = sorted(c.shape[0] for c in world.contexts)
    assert shapes == [1, 4, 8, 32]  # one context per size used: 1, 3->4, 6->8, 17->32, 32, 70->32+32+8


def test_cuda_graph_contexts_get_the_memory_of_their_size_only(tmp_path, monkeypatch):
    """USER_MANAGED contexts sized by update_device_memory_size_for_shapes: the graphs of a
    1..32 profile cost sum(1, 2, 4, 8, 16, 32) = 63 rows of activations, under 2x MAX."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 32, cuda_graphs=True)
    for count in graph_sizes(1, 32):
        backend.infer(_images(count))
    assert all(c.allocation == "user managed" for c in world.contexts)
    assert sorted(c.memory[1] // 1024 for c in world.contexts) == [1, 2, 4, 8, 16, 32]
    assert sum(c.memory[1] for c in world.contexts) < 2 * 1024 * 32


@pytest.mark.parametrize("failure", ["fail_capture", "invalidate_capture"])
def test_a_failed_capture_is_dropped_warned_once_and_runs_uncaptured(tmp_path, monkeypatch, caplog, failure):
    """TensorRT's launch returns False inside the capture, or CUDA invalidates it."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, cuda_graphs=True)
    setattr(world.cuda, failure, True)
    with caplog.at_level(logging.WARNING):
        for count in (3, 3, 8, 1, 3, 8):
            x = _images(count, seed=count)
            np.testing.assert_allclose(backend.infer(x)[:, 0], _sums(x), rtol=1e-5)
    assert ("replay",) not in world.cuda.log and world.cuda.graphs == []
    assert world.cuda.log.count(("capture",)) == 3  # once per size (4, 8, 1), never again
    warnings = [r for r in caplog.records if "no CUDA graph" in r.message]
    assert len(warnings) == 1 and "the capture failed" in warnings[0].message


def test_tensorrt_rtx_captures_for_itself_where_its_bindings_can(tmp_path, monkeypatch):
    """RTX's CudaGraphStrategy on the runtime config: its contexts capture per shape; the
    toolkit captures nothing and runs the ordinary plan."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, cuda_graphs=True, contexts=2, rtx="1.7.1")
    x = _images(3)
    np.testing.assert_allclose(backend.infer(x)[:, 0], _sums(x), rtol=1e-6)
    assert world.calls == [3] and ("capture",) not in world.cuda.log
    assert len(world.contexts) == 2
    assert all(c.config.cuda_graph_strategy == "whole graph capture" for c in world.contexts)


def test_cuda_graphs_need_a_tensorrt_rtx_that_captures_for_itself(tmp_path, monkeypatch):
    """CudaGraphStrategy (and is_stream_capturable) came with TensorRT-RTX 1.2: an older RTX
    gets one clear line with cuda_graphs, and runs without them."""
    with pytest.raises(FasterViTTRTError) as error:
        _backend(tmp_path, monkeypatch, cuda_graphs=True, rtx="1.1.1")
    assert str(error.value) == (
        f"{tmp_path / 'm.engine'}: CUDA graphs with TensorRT-RTX need TensorRT-RTX 1.2 or later "
        "(CudaGraphStrategy); this is 1.1.1: upgrade it or drop --cuda-graph"
    )
    backend, world = _backend(tmp_path, monkeypatch, rtx="1.1.1")
    x = _images(3)
    np.testing.assert_allclose(backend.infer(x)[:, 0], _sums(x), rtol=1e-6)


def test_an_unsized_activation_memory_is_an_error_not_an_empty_allocation(tmp_path, monkeypatch):
    """update_device_memory_size_for_shapes returns 0 on error (NvInferRuntime.h)."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, cuda_graphs=True, memory_error=True)
    with pytest.raises(FasterViTTRTError) as error:
        backend.infer(_images(3))
    assert str(error.value) == (
        f"{tmp_path / 'm.engine'}: TensorRT could not size the activation memory of batch 4 "
        "(update_device_memory_size_for_shapes returned 0; see its log)"
    )
    assert ("alloc", 1) not in world.cuda.log and world.cuda.streams == {}  # its stream destroyed too


def test_a_refused_tensor_address_is_an_error(tmp_path, monkeypatch):
    backend, _ = _backend(tmp_path, monkeypatch, refuse=("logits",))
    with pytest.raises(
        FasterViTTRTError, match=r"m.engine: TensorRT refused the address 0x[0-9a-f]+ of tensor 'logits'"
    ):
        backend.infer(_images(2))


def test_tensors_are_read_in_place_when_aligned_and_copied_when_not(tmp_path, monkeypatch):
    """A view with a storage offset is not 256-byte aligned: TensorRT refuses its address,
    so it is copied first; an aligned tensor is read where it lies (no input buffer made)."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, contexts=2)
    base = torch.from_numpy(world.cuda.alloc((6, 3, 2, 2), np.float32))
    base[:] = torch.from_numpy(_images(6))
    input_bytes = 8 * 3 * 2 * 2 * 4  # a MAX-batch input buffer
    world.cuda.log.clear()
    np.testing.assert_allclose(backend.infer(base)[:, 0], _sums(base.numpy()), rtol=1e-6)
    view = base[1:]  # 48 bytes into the allocation
    assert view.data_ptr() % 256
    np.testing.assert_allclose(backend.infer(view)[:, 0], _sums(view.numpy()), rtol=1e-6)
    assert ("alloc", input_bytes) not in world.cuda.log  # no context made an input buffer
    backend.infer(_images(2))  # a NumPy batch: one context gets one, then
    assert world.cuda.log.count(("alloc", input_bytes)) == 1


@pytest.mark.parametrize(
    "rows,offset,cuda_graphs",
    [(2, 0, False), (5, 1, False), (5, 0, False), (2, 0, True)],
    ids=["padded to MIN", "aligned copy", "in place", "copied into a graph's buffer"],
)
def test_a_cuda_tensor_is_complete_before_tensorrt_reads_it(tmp_path, monkeypatch, rows, offset, cuda_graphs):
    """The tensor is still being written on the caller's stream; the padded or aligned copy
    the backend makes of it is queued there too (as torch queues it): the engine's stream
    must wait for all of that, not for what was queued before the copies."""
    backend, world = _backend(tmp_path, monkeypatch, 4, 8, cuda_graphs=cuda_graphs)
    x = _images(6)
    base = torch.from_numpy(world.cuda.alloc((6, 3, 2, 2), np.float32))
    world.cuda.on_caller(lambda: base.copy_(torch.from_numpy(x)))
    logits = backend.infer(base[offset : offset + rows])
    np.testing.assert_allclose(logits[:, 0], _sums(x[offset : offset + rows]), rtol=1e-6)


def test_close_destroys_every_stream_and_graph_even_of_a_call_in_flight(tmp_path, monkeypatch):
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, cuda_graphs=True)
    for count in (3, 3, 8):
        backend.infer(_images(count))
    assert len(world.cuda.streams) == 2 and len(world.cuda.graphs) == 2
    backend.close()
    assert world.cuda.streams == {} and world.cuda.graphs == []

    backend, world = _backend(tmp_path, monkeypatch, contexts=3)
    synchronize = world.cuda.synchronize
    monkeypatch.setattr(world.cuda, "synchronize", lambda stream: (backend.close(), synchronize(stream)))
    backend.infer(_images(2))  # closed while its call runs
    assert world.cuda.streams == {}


def test_calls_run_on_the_device_the_model_was_loaded_on(tmp_path, monkeypatch):
    backend, world = _backend(tmp_path, monkeypatch, device=1)
    worker = threading.Thread(target=backend.infer, args=(_images(2),))  # a thread whose current device is 0
    worker.start()
    worker.join(10)
    backend.infer(_images(3))
    assert backend.device == 1 and [e for e in world.events if e[0] == "device"] == [("device", 1)] * 2


def test_torch_cuda_makes_its_device_current_around_every_call(monkeypatch):
    from fastervit_trt.runtime import cuda

    entered = []

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device", Device)
    helper = cuda.TorchCuda(1)
    with helper.active():
        pass
    assert helper.index == 1 and entered == [1]
    assert cuda.TorchCuda().index == 0  # None: the current device when loaded


def test_close_cannot_leak_a_context_in_flight(tmp_path, monkeypatch):
    """close() racing a call that is returning its context: the check of ``closed`` and the
    return to the pool are one step under the lock, so the context never lands in a closed pool."""
    backend, _ = _backend(tmp_path, monkeypatch)

    class Racing(list):
        def append(self, slot):  # the call returns its context: close() now
            closer = threading.Thread(target=backend.close)
            closer.start()
            closer.join(0.3)  # blocked on the lock, as it must be
            super().append(slot)
            self.closer = closer

    pool = Racing(backend.idle[backend.max_batch])
    backend.idle[backend.max_batch] = pool
    backend.infer(_images(2))
    pool.closer.join(10)
    assert backend.closed and list(pool) == []
    with pytest.raises(FasterViTTRTError, match="m.engine: the model is closed"):
        backend.infer(_images(1))


def test_a_closed_model_refuses_calls_instead_of_hanging(tmp_path, monkeypatch):
    backend, _ = _backend(tmp_path, monkeypatch)
    backend.close()
    with pytest.raises(FasterViTTRTError, match="m.engine: the model is closed"):
        backend.infer(np.zeros((2, 3, 2, 2), np.float32))


def test_concurrent_callers_share_the_bounded_pool(tmp_path, monkeypatch):
    backend, world = _backend(tmp_path, monkeypatch, 1, 4, contexts=2, cuda_graphs=True)
    inputs = [_images(1 + i % 7, seed=i) for i in range(24)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(backend.infer, inputs))
    for x, logits in zip(inputs, results):
        np.testing.assert_allclose(logits[:, 0], _sums(x), rtol=1e-5)
    per_size = {}
    for context in world.contexts:
        per_size[context.shape[0]] = per_size.get(context.shape[0], 0) + 1
    assert set(per_size) <= {1, 2, 4} and max(per_size.values()) <= 2


def test_version_compatible_engines_get_host_code_allowed_before_deserializing(tmp_path, monkeypatch):
    _, world = _backend(tmp_path, monkeypatch, version_compat=True)
    TensorRTBackend(tmp_path / "m.engine")
    assert [e for e in world.events if e[0] != "device"] == [
        ("host code allowed", True),
        ("deserialize", True),
        ("deserialize", False),
    ]


def test_rebuild_hint_keeps_every_build_input():
    """The hint once rebuilt an implicit-INT8 engine as FP32 and dropped its data and caches."""
    import shlex

    from fastervit_trt.sidecar import rebuild_command

    sidecar = {
        "precision": "int8",
        "tensorrt": {"flavour": "tensorrt"},
        "onnx": {"path": "/m/x.onnx"},
        "engine": {"path": "/e/x.engine"},
        "build": {
            "batch": [1, 8, 32],
            "strongly_typed": False,
            "calib_cache": "c.cache",
            "calib_data": "photos dir",
            "timing_cache": "t.cache",
        },
    }
    argv = shlex.split(rebuild_command(sidecar))
    for flag, value in [
        ("--precision", "int8"),
        ("--backend", "tensorrt"),
        ("--calib-cache", "c.cache"),
        ("--calib-data", "photos dir"),
        ("--timing-cache", "t.cache"),
        ("--batch", "1,8,32"),
    ]:
        assert argv[argv.index(flag) + 1] == value


def test_an_engine_with_integer_output_is_not_served_as_logits(tmp_path, monkeypatch):
    """An ArgMax (int64) output was once printed as "class 0 100.00 %"."""
    with pytest.raises(FasterViTTRTError, match="m.engine: output 'logits' is int64, not float"):
        _backend(tmp_path, monkeypatch, output_dtype="int64")


def test_a_stubs_only_tensorrt_package_is_not_taken_for_tensorrt(tmp_path, monkeypatch):
    """tensorrt-stubs installs a `tensorrt` folder of .pyi files: importable, but no TensorRT."""
    import sys

    from fastervit_trt.engines import EngineBuildError, load_tensorrt
    from fastervit_trt.tensorrt_import import import_tensorrt

    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("def nptype(t): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = sys.modules.pop("tensorrt", None)
    try:
        assert import_tensorrt("tensorrt") is None
        with pytest.raises(EngineBuildError, match="no TensorRT is installed"):
            load_tensorrt("tensorrt")
    finally:  # the stubs' namespace module must not outlive the test
        sys.modules.pop("tensorrt", None)
        if real is not None:
            sys.modules["tensorrt"] = real


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["pool made at load", "graph contexts made per size"])
def test_buffers_from_the_callers_stream_are_claimed_before_the_engines_stream_touches_them(
    tmp_path, monkeypatch, cuda_graphs
):
    """Output, input and activation buffers come from torch's caching allocator on the
    caller's current stream, which may hand out a block whose last use there is still
    queued; the context's own stream (not ordered after the caller's) must wait for that
    stream before it writes them, or it races the block's previous user."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, cuda_graphs=cuda_graphs)
    for count in (3, 8, 3):
        x = _images(count, seed=count)
        np.testing.assert_allclose(backend.infer(x)[:, 0], _sums(x), rtol=1e-5)
    base = torch.from_numpy(world.cuda.alloc((2, 3, 2, 2), np.float32))
    base[:] = torch.from_numpy(_images(2))
    np.testing.assert_allclose(backend.infer(base)[:, 0], _sums(base.numpy()), rtol=1e-5)


@pytest.mark.parametrize("tensor", [False, True], ids=["numpy", "cuda tensor"])
def test_a_failed_call_leaves_nothing_queued_on_the_contexts_stream(tmp_path, monkeypatch, tensor):
    """TensorRT refuses an output's address after the input's copy was queued: the call
    fails only once that copy is done, since the padded copy it made is freed as the call
    returns and its buffers once the model is closed (torch's allocator reuses either)."""
    backend, world = _backend(tmp_path, monkeypatch, 4, 8, refuse=("logits",))
    x = _images(2)
    batch = torch.from_numpy(world.cuda.alloc((2, 3, 2, 2), np.float32)) if tensor else x
    if tensor:
        batch[:] = torch.from_numpy(x)
    with pytest.raises(FasterViTTRTError, match="refused the address"):
        backend.infer(batch)
    assert [stream.pending for stream in world.cuda.streams.values()] == [[]]


def test_a_context_tensorrt_cannot_create_is_an_error(tmp_path, monkeypatch):
    """create_execution_context returns None when TensorRT cannot make one (out of memory):
    a clear error at load, or when a CUDA-graph size's context is made, its stream destroyed."""
    message = "m.engine: TensorRT could not create an execution context"
    with pytest.raises(FasterViTTRTError, match=message):
        _backend(tmp_path, monkeypatch, no_context=True)
    backend, world = _backend(tmp_path, monkeypatch, cuda_graphs=True, no_context=True)
    with pytest.raises(FasterViTTRTError, match=message):
        backend.infer(_images(2))
    assert world.cuda.streams == {}


def test_a_close_while_a_call_makes_its_context_is_the_closed_error(tmp_path, monkeypatch):
    """close() between the call taking its turn to make a context and making it: the call
    gets the closed model's error, and the stream made for it is destroyed."""
    backend, world = _backend(tmp_path, monkeypatch, cuda_graphs=True)
    stream = world.cuda.stream
    monkeypatch.setattr(world.cuda, "stream", lambda held=None: (backend.close(), stream(held))[1])
    with pytest.raises(FasterViTTRTError, match="m.engine: the model is closed"):
        backend.infer(_images(2))
    assert world.cuda.streams == {}


def test_close_releases_every_context_even_when_one_release_fails(tmp_path, monkeypatch):
    """A CUDA error destroying one context's stream is raised once every context's stream
    is destroyed, and the model is closed all the same."""
    backend, world = _backend(tmp_path, monkeypatch, contexts=3)
    release, seen = world.cuda.release, []

    def failing_first(stream, graph):
        release(stream, graph)
        seen.append(stream)
        if len(seen) == 1:
            raise FasterViTTRTError("CUDA cudaStreamDestroy failed on cuda:0: cudaErrorInvalidResourceHandle")

    monkeypatch.setattr(world.cuda, "release", failing_first)
    with pytest.raises(FasterViTTRTError, match="cudaStreamDestroy failed"):
        backend.close()
    assert len(seen) == 3 and world.cuda.streams == {} and backend.engine is None
    with pytest.raises(FasterViTTRTError, match="m.engine: the model is closed"):
        backend.infer(_images(1))


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (2, 2, 2, 3), (12,), (2, 3, 2, 2, 1)])
def test_a_batch_of_another_shape_is_refused_not_read_as_the_engines(tmp_path, monkeypatch, shape):
    """A CUDA tensor (or an array) whose shape is not (N, 3, 2, 2): once read as its first
    N x 12 values (a (1, 3, 4, 4) tensor answered the sum of 12 of them), now one line naming
    both shapes, on every path (infer, infer_all)."""
    backend, world = _backend(tmp_path, monkeypatch, 1, 8, contexts=1)
    tensor = torch.from_numpy(world.cuda.alloc(shape, np.float32))
    for batch in (tensor, np.zeros(shape, np.float32)):
        with pytest.raises(
            FasterViTTRTError, match=re.escape(f"m.engine: the batch is {shape}; the engine takes (N, 3, 2, 2)")
        ):
            backend.infer(batch)
        with pytest.raises(FasterViTTRTError, match="the engine takes"):
            backend.infer_all(batch)


def test_pinned_buffers_are_freed_before_their_streams_on_close(tmp_path, monkeypatch):
    """torch's CachingHostAllocator records an event on every stream that copied through a
    pinned block when the block is freed: close() frees each context's buffers, then destroys
    its stream (not the other way round)."""
    import gc

    backend, world = _backend(tmp_path, monkeypatch, 1, 8, contexts=2)
    backend.infer(_images(3))
    backend.infer(_images(8))
    assert world.cuda.pinned_blocks  # the contexts' host buffers, copied through
    backend.close()
    gc.collect()
    assert world.cuda.pinned_errors == [] and world.cuda.pinned_blocks == {}


@pytest.mark.parametrize("in_a_cycle", [False, True])
def test_a_slot_dropped_without_close_frees_its_buffers_before_its_stream(monkeypatch, in_a_cycle):
    """A model dropped without close(): the stream's finalizer destroys it when it is collected,
    and frees the buffers it holds for it first, whether the slot goes by reference count or
    with a reference cycle (where the collector runs weakref callbacks before any __del__)."""
    import gc
    import weakref

    from fastervit_trt.runtime.cuda import TorchCuda
    from fastervit_trt.runtime.tensorrt_backend import _Buffers, _Slot

    _, cudart = stand_in.install_cuda(monkeypatch)
    cuda = TorchCuda()
    order: list[str] = []
    monkeypatch.setattr(
        cudart,
        "cudaStreamDestroy",
        lambda handle, real=cudart.cudaStreamDestroy: order.append("stream") or real(handle),
    )
    held = _Buffers(host_in=np.zeros(4), outputs={"logits": (None, 0, np.zeros(8))})
    weakref.finalize(held.host_in, order.append, "input buffer")
    weakref.finalize(held.outputs["logits"][2], order.append, "output buffer")
    stream, handle = cuda.stream(held)
    slot = _Slot(object(), stream, handle, 8, graphed=False, held=held)
    if in_a_cycle:
        slot.graph = [slot]  # only the cycle collector frees it
    del stream, held, slot
    gc.collect()
    assert order[-1] == "stream" and set(order[:-1]) == {"input buffer", "output buffer"}, order


def test_at_exit_open_backends_are_closed_before_their_streams_go(tmp_path, monkeypatch):
    """The exit hook closes every backend still open (registered after the first stream, so it
    runs before weakref.finalize destroys the streams): buffers freed first, the backend closed,
    so a daemon thread still calling it gets the closed-model error, not freed buffers."""
    import gc

    from fastervit_trt.runtime import tensorrt_backend

    backend, world = _backend(tmp_path, monkeypatch, 1, 8, contexts=2)
    backend.infer(_images(3))
    assert tensorrt_backend._EXIT_HOOK and backend in tensorrt_backend._LIVE
    tensorrt_backend._close_at_exit()
    gc.collect()
    assert backend.closed and backend not in tensorrt_backend._LIVE
    assert world.cuda.pinned_errors == [] and world.cuda.pinned_blocks == {} and world.cuda.streams == {}
    with pytest.raises(FasterViTTRTError, match="closed"):
        backend.infer(_images(1))
