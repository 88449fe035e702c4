"""Polygraphy, the ecosystem's comparison tool, fed real photos by our data-loader script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastervit_trt.polygraphy_data as loader
from fastervit_trt.errors import OptionsError


@pytest.mark.slow
def test_polygraphy_run_feeds_preprocessed_photos(tmp_path):
    pytest.importorskip("polygraphy")
    from polygraphy.json import load_json

    from fastervit_trt.export.pipeline import ExportOptions, export_model
    from fastervit_trt.graph.ort_eval import ort_logits
    from fastervit_trt.preprocess import IMAGE_SUFFIXES, SAMPLE_IMAGES, Preprocess, load_image

    onnx_path = export_model(ExportOptions(model="faster_vit_digits", precision="fp32", output_dir=tmp_path)).onnx_path
    env = {**os.environ, "FASTERVIT_MODEL": str(onnx_path), "FASTERVIT_BATCH": "2", "FASTERVIT_FEEDS": "2"}
    polygraphy = Path(sys.executable).with_name("polygraphy")
    child = subprocess.run(
        [
            str(polygraphy),
            "run",
            str(onnx_path),
            "--onnxrt",
            "--data-loader-script",
            loader.__file__,
            "--save-inputs",
            str(tmp_path / "in.json"),
            "--save-outputs",
            str(tmp_path / "out.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-2000:]
    feeds = load_json(str(tmp_path / "in.json"))
    photos = sorted(p for p in SAMPLE_IMAGES.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:4]
    preprocess = Preprocess.from_config(loader.model_preprocess(onnx_path)[0].__dict__)
    expected = np.stack([preprocess(load_image(p)) for p in photos])
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in feeds]), expected)
    outputs = load_json(str(tmp_path / "out.json"))  # RunResults: runner name -> per-feed outputs
    ((_, per_feed),) = outputs.items()
    got = np.concatenate([np.asarray(o["logits"]) for o in per_feed])
    np.testing.assert_allclose(got, ort_logits(onnx_path, expected), rtol=1e-5, atol=1e-5)


def test_loader_without_a_model_says_what_to_set(monkeypatch):
    monkeypatch.delenv("FASTERVIT_MODEL", raising=False)
    with pytest.raises(OptionsError, match="set FASTERVIT_MODEL"):
        next(loader.load_data())
