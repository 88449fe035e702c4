"""The runtime API through ONNX Runtime: inputs, batching, labels, threads, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from fastervit_trt.artifacts import write_json
from fastervit_trt.errors import FasterViTTRTError
from fastervit_trt.export.pipeline import ExportOptions, export_model
from fastervit_trt.preprocess import ImageError, load_image
from fastervit_trt.runtime import EngineMismatchError, load

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "faster_vit_digits.pth"
PHOTOS = sorted((Path(__file__).parents[2] / "calibration").glob("*.jpg"))


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """The trained digits model, FP32 ONNX with a batch profile max of 4 (to force splitting)."""
    out = tmp_path_factory.mktemp("rt")
    return export_model(
        ExportOptions(
            model="faster_vit_digits", checkpoint=CHECKPOINT, precision="fp32", batch=(1, 2, 4), output_dir=out
        )
    ).onnx_path


@pytest.fixture(scope="module")
def model(digits_onnx):
    with load(digits_onnx) as loaded:
        yield loaded


def test_every_input_type_gives_the_same_logits(model):
    """Decoded inputs agree with each other; encoded ones (paths, bytes) with the model's own
    decoding (reduced-scale JPEG decoding as recorded at export)."""
    image = load_image(PHOTOS[0])
    chw = model.preprocess(image)
    reference = model.logits(np.stack([chw]))
    encoded = model.logits(model.preprocess.load(PHOTOS[0])[None])
    hwc = np.asarray(image)
    for value, expected in [
        (PHOTOS[0], encoded),
        (str(PHOTOS[0]), encoded),
        (PHOTOS[0].read_bytes(), encoded),
        ([PHOTOS[0]], encoded),
        (image, reference),
        (hwc, reference),
        (hwc[None], reference),
        (chw, reference),
        ([chw], reference),
        (torch.from_numpy(chw[None]), reference),
        ([image], reference),
    ]:
        got = model.logits(value)
        assert got.shape == (1, 10)
        assert np.allclose(got, expected, atol=1e-5), type(value)
    mixed = model.logits([PHOTOS[0], image, hwc, chw])
    assert np.allclose(mixed, np.concatenate([encoded, *[reference] * 3]), atol=1e-5)


def test_batches_above_the_profile_are_split_and_rejoined(model, monkeypatch):
    inputs = np.stack([model.preprocess(load_image(p)) for p in PHOTOS] * 2)  # 8+ images
    singles = np.concatenate([model.logits(x[None]) for x in inputs])
    sizes = []
    real = model.backend.infer_all  # every backend call of the model goes through it
    monkeypatch.setattr(model.backend, "infer_all", lambda b: sizes.append(len(b)) or real(b))
    joined = model.logits(inputs)
    assert model.max_batch == 4 and max(sizes) == 4 and sum(sizes) == len(inputs)
    assert np.allclose(joined, singles, atol=1e-5)
    sizes.clear()
    model.logits(inputs[:3])
    assert sizes == [3]  # smaller batches run at their own size


def test_predictions_carry_class_names(model, digits_folders):
    from fastervit_trt.calibration.dataset import find_images

    items = [i for i in find_images(digits_folders["heldout"])[0]][:20]
    top = model.predict([i.path for i in items], topk=3)
    assert [t[0].name for t in top] == [i.label for i in items]  # the trained model reads the digits
    assert all(len(t) == 3 and t[0].probability >= t[1].probability >= t[2].probability for t in top)
    assert all(0.0 < p.probability <= 1.0 for t in top for p in t)


def test_imagenet_names(exported):
    from fastervit_trt.runtime.labels import class_names

    names = class_names("imagenet-1k", 1000)
    assert names[0] == "tench" and names[285] == "Egyptian cat" and len(set(names)) > 990
    with load(exported("fp32").onnx_path) as imagenet:
        assert imagenet.names == names


def test_threads_give_identical_results(model):
    inputs = [np.stack([model.preprocess(load_image(PHOTOS[i % len(PHOTOS)]))] * (1 + i % 6)) for i in range(50)]
    expected = [model.logits(x) for x in inputs]

    def worker(_):
        return [model.logits(x) for x in inputs]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert all(np.array_equal(got, want) for run in results for got, want in zip(run, expected))


def test_undecodable_image_then_the_model_keeps_working(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageError, match="bad.jpg"):
        model.predict([PHOTOS[0], bad])
    assert len(model.predict(PHOTOS[0])) == 1


def test_wrong_shapes_are_refused(model):
    from fastervit_trt.runtime.inputs import InputError

    with pytest.raises(InputError, match=r"the model takes \(N, 3, 128, 128\)"):
        model.logits(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="cannot use a dict"):
        model.logits({"a": 1})


def test_importing_the_runtime_imports_no_heavy_module():
    code = (
        "import sys, fastervit_trt.runtime, fastervit_trt.runtime.tensorrt_backend, fastervit_trt.sidecar\n"
        "heavy = [m for m in ('torch', 'tensorrt', 'tensorrt_rtx_bindings', 'pycuda', 'onnx') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_every_module_imports_without_optional_gpu_packages():
    """All modules import with tensorrt/pycuda unavailable (their imports are lazy)."""
    code = """
import sys, importlib, pkgutil
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorrt', 'tensorrt_rtx', 'tensorrt_rtx_bindings', 'pycuda'):
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
import fastervit_trt
for module in pkgutil.walk_packages(fastervit_trt.__path__, 'fastervit_trt.'):
    importlib.import_module(module.name)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ---- engines, checked against their sidecar before any GPU work (runs on CPU machines)


@pytest.fixture
def engine(tmp_path, digits_onnx):
    from tests.conftest import has_tensorrt

    if not has_tensorrt():
        pytest.skip("no TensorRT / TensorRT-RTX to build an engine")
    from fastervit_trt.engines import BuildConfig, build_engine

    path = tmp_path / "digits.engine"
    build_engine(digits_onnx, path, BuildConfig(batch=(1, 2, 4)))
    return path


def test_truncated_engine_is_caught_by_its_sidecar(engine):
    engine.write_bytes(engine.read_bytes()[:1000])
    with pytest.raises(EngineMismatchError, match=r"sha256 does not match .*fastervit-build .*--batch 1,2,4"):
        load(engine)


def test_engine_from_another_tensorrt_version(engine):
    sidecar = json.loads(engine.with_suffix(".json").read_text())
    sidecar["tensorrt"]["version"] = "0.0.1"
    write_json(engine.with_suffix(".json"), sidecar)
    with pytest.raises(
        EngineMismatchError, match=r"built by .* 0\.0\.1, but .* is installed.*Rebuild: fastervit-build"
    ):
        load(engine)


def test_engine_for_another_gpu(engine, monkeypatch):
    from fastervit_trt.runtime import tensorrt_backend

    sidecar = json.loads(engine.with_suffix(".json").read_text())
    sidecar["device"] = {"gpu": "NVIDIA A100", "compute_capability": "8.0"}
    sidecar["tensorrt"]["flavour"] = "tensorrt"  # TensorRT proper: engines are per GPU
    write_json(engine.with_suffix(".json"), sidecar)
    monkeypatch.setattr(tensorrt_backend, "_compute_capability", lambda device=None: "9.0")
    with pytest.raises(EngineMismatchError, match=r"compute capability 8\.0 \(NVIDIA A100\), this GPU is 9\.0"):
        load(engine)


def test_tensorrt_rtx_engines_run_on_other_capabilities(engine, monkeypatch):
    """TensorRT-RTX compiles for its target capabilities at run time: no per-GPU refusal."""
    from fastervit_trt.runtime import tensorrt_backend

    sidecar = json.loads(engine.with_suffix(".json").read_text())
    sidecar["device"] = {"gpu": "NVIDIA RTX 4090", "compute_capability": "8.9"}
    write_json(engine.with_suffix(".json"), sidecar)
    monkeypatch.setattr(tensorrt_backend, "_compute_capability", lambda device=None: "12.0")
    assert tensorrt_backend.verify_engine(engine)["tensorrt"]["flavour"] == "tensorrt-rtx"


def test_tensorrt_rtx_engines_are_refused_outside_their_recorded_targets(engine, monkeypatch):
    """Built with --compute-capability 8.9,12.0: portable across those, refused elsewhere."""
    from fastervit_trt.runtime import tensorrt_backend

    sidecar = json.loads(engine.with_suffix(".json").read_text())
    sidecar["build"]["compute_capabilities"] = ["8.9", "12.0"]
    write_json(engine.with_suffix(".json"), sidecar)
    for present in ("8.9", "12.0"):
        monkeypatch.setattr(tensorrt_backend, "_compute_capability", lambda device=None: present)
        assert tensorrt_backend.verify_engine(engine)["build"]["compute_capabilities"] == ["8.9", "12.0"]
    monkeypatch.setattr(tensorrt_backend, "_compute_capability", lambda device=None: "8.6")
    with pytest.raises(
        EngineMismatchError,
        match=r"for compute capabilities 8\.9, 12\.0; this GPU is 8\.6; "
        r"rebuild .*--compute-capability 8\.9,12\.0",
    ):
        load(engine)


def test_engine_without_gpu_or_sidecar_fails_clearly_and_the_process_goes_on(engine, digits_onnx, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    engine.with_suffix(".json").unlink()
    with pytest.raises(FasterViTTRTError, match="no CUDA GPU is visible|cannot deserialize"):
        load(engine)
    assert any("no sidecar" in r.message for r in caplog.records)
    with load(digits_onnx) as again:
        assert again.logits(np.zeros((1, 3, 128, 128), np.float32)).shape == (1, 10)


@pytest.mark.gpu
def test_engine_runs_on_gpu_and_matches_onnx(engine, digits_onnx):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    x = np.stack([load(digits_onnx).preprocess(load_image(p)) for p in PHOTOS[:6]])
    with load(engine) as trt_model, load(digits_onnx) as ort_model:
        assert np.allclose(trt_model.logits(x), ort_model.logits(x), atol=1e-3)
        assert np.allclose(trt_model.logits(torch.from_numpy(x).cuda()), ort_model.logits(x), atol=1e-3)


@pytest.mark.gpu
def test_cuda_graph_replay_matches_plain_launches(engine):
    """fastervit-bench --cuda-graph: each batch shape captured once, replayed after."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    x = np.random.default_rng(0).standard_normal((3, 3, 128, 128)).astype(np.float32)
    with load(engine) as plain, load(engine, cuda_graphs=True) as graphed:
        expected = plain.logits(x)
        for _ in range(3):  # the first call captures, the others replay
            assert np.allclose(graphed.logits(x), expected, atol=1e-4)
        assert np.allclose(graphed.logits(torch.from_numpy(x).cuda()), expected, atol=1e-4)


def test_cuda_graphs_are_for_engines(digits_onnx):
    with pytest.raises(FasterViTTRTError, match="CUDA graphs apply to TensorRT engines"):
        load(digits_onnx, cuda_graphs=True)


def test_encoded_images_are_decoded_in_parallel_and_pipelined(digits_onnx):
    """Bytes, file objects and paths give the logits of their decoded arrays; a list longer
    than the largest batch goes through the prefetching path with the same result."""
    import io

    with load(digits_onnx) as model:
        data = [p.read_bytes() for p in PHOTOS[:3]]
        expected = model.logits(np.stack([model.preprocess.load(p) for p in PHOTOS[:3]]))
        np.testing.assert_allclose(model.logits(data), expected, rtol=1e-6)
        np.testing.assert_allclose(model.logits([io.BytesIO(d) for d in data]), expected, rtol=1e-6)
        np.testing.assert_allclose(model.logits(data[0]), expected[:1], rtol=1e-6)
        many = [PHOTOS[i % len(PHOTOS)] for i in range(model.max_batch * 2 + 3)]
        whole = model.logits(np.stack([model.preprocess.load(p) for p in many]))
        np.testing.assert_allclose(model.logits(many), whole, rtol=1e-5, atol=1e-6)


def test_gpu_decoding_without_a_gpu_says_so(digits_onnx):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with load(digits_onnx) as model, pytest.raises(FasterViTTRTError, match="decode='gpu' needs a CUDA GPU"):
        model.logits([PHOTOS[0]], decode="gpu")


@pytest.mark.gpu
def test_gpu_decoding_matches_the_cpu_path(digits_onnx):
    """nvJPEG decode + antialiased resize on the GPU: close to Pillow's path, not bitwise."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    from fastervit_trt.runtime.gpu_decode import GpuDecoder

    with load(digits_onnx) as model:
        cpu = np.stack([model.preprocess.load(p) for p in PHOTOS[:4]])
        gpu = GpuDecoder(model.preprocess)(list(PHOTOS[:4]))
        assert gpu.is_cuda and gpu.shape == cpu.shape
        a, b = model.logits(cpu), model.logits(list(PHOTOS[:4]), decode="gpu")
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() > 0.999


def test_out_of_memory_is_one_clear_error_on_every_path(digits_onnx, monkeypatch):
    """The pipelined path once turned MemoryError into a NameError."""
    with load(digits_onnx) as model:

        def no_memory(batch):
            raise MemoryError

        monkeypatch.setattr(model.backend, "infer_all", no_memory)  # infer() reads through it too
        for inputs in ([PHOTOS[0]], [PHOTOS[0]] * (model.max_batch + 1)):
            with pytest.raises(FasterViTTRTError, match="does not fit in memory"):
                model.logits(inputs)
