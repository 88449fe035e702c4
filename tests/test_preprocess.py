"""Preprocessing equals timm's eval transform for the variant configs, on real photos."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastervit_trt.calibration.dataset import DEFAULT_DATA, find_images
from fastervit_trt.models import get_variant
from fastervit_trt.preprocess import ImageError, Preprocess, load_image

PHOTOS = [item.path for item in find_images(DEFAULT_DATA)[0]]


@pytest.mark.parametrize("name, size", [
    ("faster_vit_0_224", None), ("faster_vit_1_224", None), ("faster_vit_4_21k_224", None),
    ("faster_vit_4_21k_768", None), ("faster_vit_2_any_res", None), ("faster_vit_0_any_res", (576, 960)),
])
def test_matches_timm_eval_transform(name, size):
    from timm.data import create_transform
    config = get_variant(name).eval
    reference = create_transform(input_size=(3, *config.input_size), crop_pct=config.crop_pct,
                                 crop_mode=config.crop_mode, interpolation=config.interpolation,
                                 mean=config.mean, std=config.std, is_training=False)
    ours = Preprocess.from_config(config)
    assert len(PHOTOS) >= 12
    for path in PHOTOS:
        image = load_image(path)
        expected = reference(image).numpy()
        got = ours(image)
        assert got.shape == expected.shape == (3, *config.input_size)
        assert np.abs(got - expected).max() <= 1e-6, path.name


def test_from_metadata_dict_equals_from_config():
    config = get_variant("faster_vit_0_224").eval
    as_dict = {"input_size": [224, 224], "crop_pct": 0.875, "crop_mode": "center",
               "interpolation": "bicubic", "mean": list(config.mean), "std": list(config.std)}
    assert Preprocess.from_config(as_dict) == Preprocess.from_config(config)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.new("L", (40, 30), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (40, 30), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    preprocess = Preprocess((32, 32))
    for name in ("gray.png", "rgba.png"):
        assert preprocess(load_image(tmp_path / name)).shape == (3, 32, 32)


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageError, match=r"broken\.jpg: cannot decode"):
        load_image(bad)
    with pytest.raises(ImageError, match="no such image"):
        load_image(tmp_path / "missing.png")
