"""fastervit-batch on a local Ray (2 CPUs, ONNX Runtime): every row equals ``model.predict``
of the same file, bad images are error rows, a killed actor costs no row, re-runs resume."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from fastervit_trt.batch import Predictor, predict_files, schema
from fastervit_trt.batch.pipeline import actor_runtime, default_gpus
from fastervit_trt.errors import FasterViTTRTError, OptionsError
from fastervit_trt.runtime import RuntimeOptions, load
from tests.fixtures.digits import digits_split, to_pil

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 150
TWO_ACTORS = {"actors": 2, "cpus_per_actor": 0.5}  # the 2-CPU Ray keeps one CPU for reading files


def within(seconds: float, call, *args, **kwargs):
    """``call(...)``'s result, or a failed test once ``seconds`` have passed."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args, **kwargs).result(timeout=seconds)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """36 digits as PNG and JPEG (some in a subfolder, some upscaled), a truncated JPEG, a
    text file named .jpg, and a text file the listing skips."""
    root = tmp_path_factory.mktemp("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    pictures, _, _, _ = digits_split()
    for i, picture in enumerate(pictures[:36]):
        image = to_pil(picture).resize((8 * (1 + i % 5), 8 * (1 + i % 3)))
        folder = root if i % 3 == 0 else root / "nested" if i % 3 == 1 else root / "nested" / "deeper"
        image.save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    jpeg = io.BytesIO()
    to_pil(pictures[40]).resize((64, 64)).save(jpeg, "JPEG")
    (root / "nested" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "text.jpg").write_text("not an image")
    (root / "notes.txt").write_text("not listed")
    return root


@pytest.fixture(scope="module")
def model(digits_batch8_onnx):
    with load(digits_batch8_onnx) as loaded:
        yield loaded


def image_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def assert_rows_equal_predict(table: pa.Table, model, files: list[str]) -> None:
    """One row per file of ``files``, each what ``model.predict`` answers for it."""
    rows = table.to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(files)  # each file once: none lost, none twice
    for row in rows:
        try:
            (expected,) = model.predict(row["path"], topk=5)
        except FasterViTTRTError as exc:
            assert row["error"] == str(exc) and row["path"] in row["error"], row
            assert row["index"] is None and row["probability"] is None, row
            continue
        assert row["error"] is None, row
        assert row["index"] == [p.index for p in expected], row["path"]
        assert row["name"] == [p.name for p in expected], row["path"]
        np.testing.assert_allclose(row["probability"], [p.probability for p in expected], rtol=1e-4, atol=1e-6)


def test_rows_equal_predict_bad_images_are_error_rows(local_ray, images, model, digits_batch8_onnx, tmp_path):
    out = tmp_path / "out"
    summary = within(
        RUN_TIMEOUT_S,
        predict_files,
        [str(images)],
        digits_batch8_onnx,
        str(out),
        batch_size=4,
        rows_per_part=8,
        progress=None,
        **TWO_ACTORS,
    )
    files = image_files(images)
    assert len(files) == 38 and summary.files == summary.rows == 38 and summary.errors == 2
    parts = sorted(out.glob("part-*.parquet"))
    assert [str(p) for p in parts] == summary.parts
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [8, 8, 8, 8, 6]
    assert all(pq.read_schema(p).equals(schema("classifier"), check_metadata=False) for p in parts)
    table = pq.read_table(out)
    assert_rows_equal_predict(table, model, files)
    errors = {row["path"]: row["error"] for row in table.to_pylist() if row["error"]}
    assert set(errors) == {str(images / "text.jpg"), str(images / "nested" / "truncated.jpg")}


def test_killed_actor_is_restarted_and_loses_no_row(local_ray, images, model, digits_batch8_onnx, tmp_path):
    died = tmp_path / "died"

    class DiesOnce(Predictor):
        """Its first call anywhere ends its process, as a crash or a lost node would."""

        def __call__(self, batch):
            if not died.exists():
                died.touch()
                os._exit(1)
            return super().__call__(batch)

    out = tmp_path / "out"
    summary = within(
        RUN_TIMEOUT_S,
        predict_files,
        [str(images)],
        digits_batch8_onnx,
        str(out),
        batch_size=4,
        predictor=DiesOnce,
        progress=None,
        **TWO_ACTORS,
    )
    assert died.exists() and summary.rows == 38
    assert_rows_equal_predict(pq.read_table(out), model, image_files(images))


def test_rerun_processes_only_the_rest(local_ray, images, model, digits_batch8_onnx, tmp_path):
    out = tmp_path / "out"
    files = image_files(images)
    first = within(RUN_TIMEOUT_S, predict_files, files[:10], digits_batch8_onnx, str(out), progress=None)
    assert first.rows == 10 and len(first.parts) == 1
    (out / ".part-00001.parquet.tmp").write_bytes(b"PAR1 cut short by an interruption")
    rest = within(
        RUN_TIMEOUT_S, predict_files, [str(images)], digits_batch8_onnx, str(out), rows_per_part=16, progress=None
    )
    assert (rest.files, rest.skipped, rest.rows) == (38, 10, 28)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert_rows_equal_predict(pq.read_table(out), model, files)
    again = within(RUN_TIMEOUT_S, predict_files, [str(images)], digits_batch8_onnx, str(out), progress=None)
    assert (again.skipped, again.rows, again.parts) == (38, 0, [])


def test_globs_pick_image_files(images):
    from fastervit_trt.batch import list_images

    _, found = list_images([f"{images}/**/*.png", f"{images}/nested/*.jpg", str(images / "text.jpg")])
    expected = {str(p) for p in images.rglob("*.png")} | {str(p) for p in (images / "nested").glob("*.jpg")}
    assert [f.path for f in found] == sorted(expected | {str(images / "text.jpg")})
    with pytest.raises(FasterViTTRTError, match="no such file or folder"):
        list_images([str(images / "missing")])


def test_actors_that_take_every_cpu_are_refused(local_ray, images, digits_batch8_onnx, tmp_path):
    with pytest.raises(FasterViTTRTError, match="leave less than the 1 CPU that reading files takes"):
        predict_files(
            [str(images)], digits_batch8_onnx, str(tmp_path / "out"), actors=2, cpus_per_actor=0.75, progress=None
        )


def test_headless_model_rows_equal_embed(tmp_path, images):
    """The predictor alone (what an actor runs) on a pooled-embedding model: ``model.embed``."""
    from fastervit_trt.export.pipeline import ExportOptions, export_model

    onnx_path = export_model(
        ExportOptions(
            model="faster_vit_digits",
            num_classes=0,
            precision="fp32",
            batch=(1, 4, 8),
            output_dir=tmp_path,
        )
    ).onnx_path
    files = image_files(images)
    batch = pa.table({"path": files, "bytes": [Path(f).read_bytes() for f in files]})
    table = Predictor(str(onnx_path))(batch)
    assert table.schema.equals(schema("embedding")) and table.column("path").to_pylist() == files
    with load(onnx_path) as headless:
        for row in table.to_pylist():
            if row["error"]:
                assert row["path"] in row["error"] and row["embedding"] is None
                continue
            np.testing.assert_allclose(row["embedding"], headless.embed(row["path"])[0], rtol=1e-4, atol=1e-5)
    assert table.column("error").null_count == len(files) - 2


def test_cli_end_to_end(local_ray, images, model, digits_batch8_onnx, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fastervit_trt.cli.batch", str(images), "--model", str(digits_batch8_onnx)]
    child = subprocess.run(
        [*command, "--output", str(out), "--address", local_ray, "--batch-size", "8"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=ROOT,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "38 files written" in child.stderr and "2 errors" in child.stderr
    assert_rows_equal_predict(pq.read_table(out), model, image_files(images))
    helped = subprocess.run(
        [sys.executable, "-m", "fastervit_trt.cli.batch", "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "examples:" in helped.stdout and "probability (list<float32>)" in helped.stdout


def test_backbone_rows_are_its_deepest_stage_averaged(tmp_path, images):
    from fastervit_trt.export.pipeline import ExportOptions, export_model

    onnx_path = export_model(
        ExportOptions(
            model="faster_vit_digits", features=(1, 2, 3, 4), precision="fp32", batch=(1, 4, 8), output_dir=tmp_path
        )
    ).onnx_path
    files = image_files(images)[:6]
    table = Predictor(str(onnx_path))(pa.table({"path": files, "bytes": [Path(f).read_bytes() for f in files]}))
    assert table.schema.equals(schema("embedding"))
    with load(onnx_path) as backbone:
        for row in table.to_pylist():
            expected = backbone.features(row["path"])["stage4"].mean(axis=(2, 3))[0]
            np.testing.assert_allclose(row["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_a_model_that_does_not_load_fails_the_run_in_one_line(local_ray, images, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_text("not a model")
    with pytest.raises(FasterViTTRTError) as failed:
        within(RUN_TIMEOUT_S, predict_files, [str(images)], broken, str(tmp_path / "out"), progress=None)
    assert str(failed.value).startswith(f"{broken}: ONNX Runtime cannot load the model") and "\n" not in str(
        failed.value
    )


def test_the_runtime_options_reach_the_actors(local_ray, images, digits_batch8_onnx, tmp_path):
    """The actors load the model as asked: a provider this onnxruntime lacks fails the run in one line."""
    with pytest.raises(OptionsError) as failed:
        within(
            RUN_TIMEOUT_S,
            predict_files,
            [str(images)],
            digits_batch8_onnx,
            str(tmp_path / "out"),
            gpus_per_actor=0,
            progress=None,
            runtime=RuntimeOptions(provider="cuda"),
        )
    assert "'cuda' (CUDAExecutionProvider) is not in this onnxruntime" in str(failed.value)
    assert "\n" not in str(failed.value)


def test_gpus_per_actor_follow_the_backend_and_provider():
    assert default_gpus("m.engine") == default_gpus("m.plan") == 1.0
    assert default_gpus("m.onnx") == default_gpus("m.onnx", RuntimeOptions(provider="cpu")) == 0.0
    assert default_gpus("m.onnx", RuntimeOptions(provider="cuda")) == 1.0
    assert default_gpus("m.bin", RuntimeOptions(backend="tensorrt")) == 1.0


def test_a_device_is_refused_before_ray_starts(digits_batch8_onnx, tmp_path, monkeypatch):
    """Ray gives each actor its GPUs (CUDA_VISIBLE_DEVICES): inside one only device 0 exists."""

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started or asked before the options were checked")

    for call in ("init", "is_initialized", "cluster_resources"):
        monkeypatch.setattr(ray, call, no_ray)
    with pytest.raises(OptionsError) as refused:
        predict_files(["x.jpg"], digits_batch8_onnx, str(tmp_path / "out"), runtime=RuntimeOptions(device=1))
    assert str(refused.value) == (
        "device 1: Ray assigns each actor its GPU (CUDA_VISIBLE_DEVICES: device 0 inside it); drop --device"
    )


def test_actors_without_a_gpu_run_onnx_runtime_on_the_cpu(local_ray, images, digits_batch8_onnx, tmp_path):
    """Provider auto in an actor Ray gives no GPU (it hides them all) is the CPU's, not a CUDA
    provider that fails to start in each actor; engines keep their options as given."""

    class Tells(Predictor):
        def __init__(self, model_path, runtime, **kwargs):
            raise OptionsError(f"the actor got {runtime}")

    for gpus in (None, 0):
        with pytest.raises(OptionsError) as told:
            within(
                RUN_TIMEOUT_S,
                predict_files,
                [str(images)],
                digits_batch8_onnx,
                str(tmp_path / "out"),
                gpus_per_actor=gpus,
                predictor=Tells,
                progress=None,
            )
        assert "provider='cpu'" in str(told.value)
    assert actor_runtime("m.onnx", RuntimeOptions(), 1.0) == RuntimeOptions()  # its GPU: CUDA when there
    assert actor_runtime("m.onnx", RuntimeOptions(provider="cuda"), 0) == RuntimeOptions(provider="cuda")
    assert actor_runtime("m.engine", RuntimeOptions(), 0) == RuntimeOptions()  # an engine reads no provider


def test_a_model_that_kills_its_actor_every_time_ends_the_run(local_ray, images, digits_batch8_onnx, tmp_path):
    """Ray Data restarts a dead actor and retries its batch without end by default; the run now
    ends after ``max_restarts`` with one line naming the model and the last failure."""
    from fastervit_trt.errors import FasterViTTRTError

    class AlwaysDies(Predictor):
        """Every call ends its process, as a model that crashes the runtime on every batch."""

        def __call__(self, batch):
            os._exit(1)

    started = time.monotonic()
    with pytest.raises(FasterViTTRTError) as failed:
        within(
            RUN_TIMEOUT_S,
            predict_files,
            [str(images)],
            digits_batch8_onnx,
            str(tmp_path / "out"),
            batch_size=8,
            predictor=AlwaysDies,
            progress=None,
            max_restarts=1,
        )
    message = str(failed.value)
    assert str(digits_batch8_onnx) in message and "died 2 times" in message and "\n" not in message
    assert time.monotonic() - started < RUN_TIMEOUT_S


def test_actors_load_the_model_without_the_drivers_path(local_ray, images, model, digits_batch8_onnx, tmp_path):
    """The model reaches the actors through Ray's object store: an actor that never opens the
    driver's path (another node's view of the file system) loads the same bytes."""
    driver_path = str(digits_batch8_onnx)

    class ElsewhereOnly(Predictor):
        def __init__(self, model_path, model_files=None, **kwargs):
            assert model_files is not None, "the model's bytes were not sent"
            super().__init__(model_path, model_files=model_files, **kwargs)
            assert str(self.model.source) != driver_path and self.model.source.name == Path(driver_path).name

    out = tmp_path / "out"
    summary = within(
        RUN_TIMEOUT_S,
        predict_files,
        [str(images)],
        digits_batch8_onnx,
        str(out),
        batch_size=8,
        predictor=ElsewhereOnly,
        progress=None,
    )
    assert summary.rows == 38
    assert_rows_equal_predict(pq.read_table(out), model, image_files(images))
