"""Preprocessing equals timm's eval transform for the variant configs, on real photos."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from fastervit_trt.calibration.dataset import DEFAULT_DATA, find_images
from fastervit_trt.models import get_variant
from fastervit_trt.preprocess import ImageError, Preprocess, load_image

PHOTOS = [item.path for item in find_images(DEFAULT_DATA)[0]]


@pytest.mark.parametrize(
    "name, size",
    [
        ("faster_vit_0_224", None),
        ("faster_vit_1_224", None),
        ("faster_vit_4_21k_224", None),
        ("faster_vit_4_21k_768", None),
        ("faster_vit_2_any_res", None),
        ("faster_vit_0_any_res", (576, 960)),
    ],
)
def test_matches_timm_eval_transform(name, size):
    from timm.data import create_transform

    config = get_variant(name).eval
    reference = create_transform(
        input_size=(3, *config.input_size),
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
        is_training=False,
    )
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
    as_dict = {
        "input_size": [224, 224],
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": list(config.mean),
        "std": list(config.std),
    }
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


# ---------------------------------------------------------------- images as people have them


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG once came out nearly white (values above 255 clipped)."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth.png")
    pixels = np.asarray(load_image(tmp_path / "depth.png"))
    assert pixels.shape == (64, 64, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    np.testing.assert_allclose(pixels[..., 0], ramp / 257.0, atol=0.51)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "print.jpg")  # pure red ink
    red, green, blue = np.asarray(load_image(tmp_path / "print.jpg")).reshape(-1, 3).mean(0)
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_transparency_is_composited_onto_white(mode, tmp_path):
    image = Image.new("RGBA", (20, 10), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 10, 10))  # left half fully transparent (black underneath)
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = image.getpixel((0, 0))
    image.save(tmp_path / "logo.png", **({"transparency": image.info["transparency"]} if mode == "P" else {}))
    pixels = np.asarray(load_image(tmp_path / "logo.png"))
    assert (pixels[:, :10] == 255).all() and (pixels[:, 10:] == (0, 0, 255)).all()


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animation_gives_its_first_frame(suffix, tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(
        tmp_path / f"a{suffix}",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
        **({"lossless": True} if suffix == ".webp" else {}),
    )
    red, _, blue = np.asarray(load_image(tmp_path / f"a{suffix}")).reshape(-1, 3).mean(0)
    assert red > 200 and blue < 60


def test_exif_orientation_makes_phone_photos_upright(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # blue on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    raw = load_image(tmp_path / "phone.jpg", exif_rotate=False)
    assert raw.size == (40, 20) and upright.size == (20, 40)
    assert np.asarray(upright)[5, 10, 2] > 200  # stored left (blue) is displayed on top


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    import struct
    import time
    import zlib

    Image.new("1", (8, 8)).save(tmp_path / "small.png")
    data = bytearray((tmp_path / "small.png").read_bytes())
    ihdr = struct.pack(">II", 40_000, 40_000) + bytes(data[24:29])  # 1.6 gigapixels claimed
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb\.png: refused.*exceeds limit"):
        load_image(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 2  # nothing decoded


def test_encoded_bytes_and_file_objects_are_images(tmp_path):
    import io

    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    for source in (data, io.BytesIO(data)):
        assert np.asarray(load_image(source)).reshape(-1, 3).tolist()[0] == [1, 2, 3]
    with pytest.raises(ImageError, match="<image bytes>: cannot decode"):
        load_image(b"not an image")


@pytest.mark.parametrize(
    "name, size",
    [
        ("faster_vit_0_224", None),
        ("faster_vit_4_21k_768", None),
        ("faster_vit_0_any_res", (576, 960)),
    ],
)
def test_fast_path_resizes_the_crop_within_two_levels(name, size, monkeypatch):
    """``jpeg_draft`` resizes only the region the crop keeps (upscaling too, squash too):
    within two levels of the full resize then crop (Pillow's float32 box corners)."""
    from dataclasses import replace

    exact = replace(Preprocess.from_config(get_variant(name).eval), input_format="uint8")
    exact = replace(exact, input_size=size) if size else exact
    fast = replace(exact, jpeg_draft=True)
    resized, real = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, to, *a, **k: resized.append(to) or real(self, to, *a, **k))
    for path in PHOTOS:
        image = load_image(path)
        full = exact.resize_size(*image.size)
        got, expected = fast(image).astype(int), exact(image).astype(int)
        assert got.shape == expected.shape == (*exact.input_size, 3)
        assert np.abs(got - expected).max() <= 2, path.name
        assert resized[-1] == full and full not in resized[-3:-1]  # exact resizes it all, fast only the crop


def test_each_transform_setting_is_a_preprocess_field_with_a_default():
    """A new eval-transform option is one ``TransformOptions`` field (its flag in the metadata)
    and its ``Preprocess`` field: the checkpoint reader, the export and the records derive the rest."""
    from dataclasses import MISSING, fields

    from fastervit_trt.preprocess import TRANSFORM_SETTINGS

    defaults = {option.name: option.default for option in fields(Preprocess)}
    assert all(defaults.get(name, MISSING) is not MISSING for name in TRANSFORM_SETTINGS)


def test_recorded_transform_reads_each_setting_as_preprocess_holds_it():
    from fastervit_trt.preprocess import recorded_transform

    args = {"mean": [0, 0.5, 1], "std": (1, 1), "interpolation": "bilinear", "crop_pct": 1, "crop_mode": ""}
    assert recorded_transform({**args, "model": "x", "lr": 0.1}) == {
        "mean": (0.0, 0.5, 1.0),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    assert recorded_transform({"crop_pct": True, "interpolation": None}) == {}


def test_from_config_fills_settings_a_record_lacks_and_reads_json_forms():
    record = {"input_size": [224, 224], "crop_pct": 1, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    preprocess = Preprocess.from_config(record)
    assert preprocess == Preprocess((224, 224), 1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert isinstance(preprocess.crop_pct, float) and preprocess.input_format == "float"
    assert Preprocess.from_config(preprocess.record()) == preprocess


def test_an_empty_file_is_named_so_in_every_path(tmp_path):
    """One wording per failure: calibration lists it, infer, batch and serve raise it."""
    from fastervit_trt.calibration.dataset import _header_problem
    from fastervit_trt.preprocess import EMPTY_IMAGE, ImageError, load_image

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _header_problem(empty) == EMPTY_IMAGE == "empty file (0 bytes)"
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file \(0 bytes\); check that it is a readable"):
        load_image(empty)
    with pytest.raises(ImageError, match=r"<image bytes>: empty file \(0 bytes\)"):
        load_image(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(ImageError) as raised:
        load_image(corrupt)
    assert _header_problem(corrupt) in str(raised.value)  # the same words as calibration's


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"mean": (124, 116, 104)}, "--mean 124 116 104: on the 0..1 scale: divide by 255"),
        ({"std": (58.4, 57.1, 57.4)}, "--std 58.4 57.1 57.4: above 0 and at most 1 on the 0..1 scale: divide by 255"),
        ({"std": (0.2, 0, 0.2)}, "--std 0.2 0 0.2: above 0"),
    ],
)
def test_mean_and_std_on_the_wrong_scale_are_refused(settings, message):
    from fastervit_trt.errors import OptionsError
    from fastervit_trt.preprocess import check_transform

    with pytest.raises(OptionsError, match=re.escape(message)):
        check_transform(settings)
    check_transform({"mean": (0.52, 0.5, 0.45), "std": (0.25, 0.24, 1.0)})  # the 0..1 scale passes
