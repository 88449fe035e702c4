"""Real preprocessed photos for Polygraphy: ``--data-loader-script`` feeds them to every runner.

  polygraphy run export/faster_vit_0_224_fp16.onnx --onnxrt --trt \\
      --data-loader-script "$(python -c 'import fastervit_trt.polygraphy_data as m; print(m.__file__)')"

Settings come from the environment (Polygraphy calls ``load_data()`` without arguments):
``FASTERVIT_MODEL`` (required) the .onnx or .engine whose recorded preprocessing to apply,
``FASTERVIT_IMAGES`` a folder of images (default: the shipped photos), ``FASTERVIT_BATCH``
inputs per feed (default 1) and ``FASTERVIT_FEEDS`` how many feeds (default: every image once).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# absolute imports: Polygraphy loads this file as a script, outside its package
from fastervit_trt.errors import ModelFileError, OptionsError
from fastervit_trt.preprocess import IMAGE_SUFFIXES, SAMPLE_IMAGES, Preprocess


def model_preprocess(model: Path) -> tuple[Preprocess, str, np.dtype]:
    """The preprocessing, input name and input dtype recorded with an .onnx or .engine."""
    from fastervit_trt.sidecar import read_metadata, read_sidecar

    if model.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(model), load_external_data=False)
        info, feed = read_metadata(graph), graph.graph.input[0]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(feed.type.tensor_type.elem_type)
        name = feed.name
    else:
        info = read_sidecar(model) or {}
        entry = (info.get("inputs") or [{}])[0]
        dtypes = {"half": np.float16, "uint8": np.uint8}
        name, dtype = entry.get("name", "input"), np.dtype(dtypes.get(entry.get("dtype"), np.float32))
    if not info.get("preprocess"):
        raise ModelFileError(f"{model}: no fastervit-trt preprocessing recorded; export it with fastervit-export")
    return Preprocess.from_config(info["preprocess"]), name, np.dtype(dtype)


def load_data() -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts {input name: batch} of real photos, as Polygraphy's data loaders yield."""
    model = os.environ.get("FASTERVIT_MODEL")
    if not model:
        raise OptionsError("set FASTERVIT_MODEL to the .onnx or .engine whose preprocessing to apply")
    preprocess, name, dtype = model_preprocess(Path(model))
    folder = Path(os.environ.get("FASTERVIT_IMAGES", SAMPLE_IMAGES))
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise OptionsError(f"{folder}: no images; set FASTERVIT_IMAGES to a folder of photos")
    batch = int(os.environ.get("FASTERVIT_BATCH", "1"))
    feeds = int(os.environ.get("FASTERVIT_FEEDS", str(max(1, len(images) // batch))))
    for feed in range(feeds):
        chosen = [images[(feed * batch + i) % len(images)] for i in range(batch)]
        yield {name: np.stack([preprocess.load(path) for path in chosen]).astype(dtype)}
