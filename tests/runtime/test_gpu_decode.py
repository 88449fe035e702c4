"""GPU decoding's steps run on CPU tensors (torchvision decodes JPEGs on either device):
EXIF orientation as the CPU path applies it, the whole decoder against the CPU path, and
the normalisation constants made once."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fastervit_trt.preprocess import SAMPLE_IMAGES, Preprocess, load_image
from fastervit_trt.runtime.gpu_decode import GpuDecoder, exif_orientation, orient

ORIENTATIONS = range(1, 9)


def _with_orientation(image: Image.Image, orientation: int, kind: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, kind, exif=exif.tobytes(), **({"quality": 95} if kind == "JPEG" else {}))
    return out.getvalue()


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_orientation_step_gives_the_cpu_paths_pixels(orientation):
    """Stored pixels (a 5x7 image, every pixel distinct) turned by ``orient`` equal what
    the CPU path (Pillow's exif_transpose) makes of the same file, for all 8 orientations."""
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    data = _with_orientation(Image.fromarray(pixels), orientation, "PNG")
    assert exif_orientation(data) == orientation
    stored = torch.from_numpy(np.asarray(load_image(data, exif_rotate=False)).copy()).permute(2, 0, 1)
    upright = orient(stored, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(upright, np.asarray(load_image(data)))


def test_an_image_without_exif_or_with_a_broken_header_counts_as_upright():
    out = io.BytesIO()
    Image.new("RGB", (4, 3)).save(out, "JPEG")
    assert exif_orientation(out.getvalue()) == 1 and exif_orientation(b"\xff\xd8\xff junk") == 1


@pytest.fixture(scope="module")
def photo():
    return load_image(sorted(SAMPLE_IMAGES.glob("*.jpg"))[0]).resize((320, 240))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_decoder_follows_the_cpu_path_for_every_orientation(photo, orientation):
    """JPEGs with each orientation through the whole GPU path on CPU tensors: within the
    resize difference of the CPU path's inputs, and far from the stored, unturned pixels."""
    preprocess = Preprocess(input_size=(64, 64), crop_pct=0.875)
    data = _with_orientation(photo, orientation, "JPEG")
    decoded = GpuDecoder(preprocess, device="cpu")([data]).numpy()[0]
    upright, stored = preprocess.load(data), preprocess.load(data, exif_rotate=False)
    assert decoded.shape == upright.shape == (3, 64, 64)
    assert np.abs(decoded - upright).mean() < 0.03  # the resize difference, in normalised units
    if orientation != 1:
        assert np.abs(decoded - stored).mean() > 10 * np.abs(decoded - upright).mean()
    unturned = GpuDecoder(preprocess, device="cpu")([data], exif_rotate=False).numpy()[0]
    assert np.abs(unturned - stored).mean() < 0.03


def test_the_decoder_makes_mean_and_std_once(photo, monkeypatch):
    preprocess = Preprocess(input_size=(32, 32), crop_pct=1.0)
    decoder = GpuDecoder(preprocess, device="cpu")
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    data = _with_orientation(photo, 1, "JPEG")
    for _ in range(3):
        batch = decoder([data, data])
    assert made == [] and batch.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(decoder.mean.flatten().numpy(), preprocess.mean, rtol=1e-6)


def test_the_decoder_turns_non_jpegs_on_the_cpu_path(photo):
    preprocess = Preprocess(input_size=(32, 32), crop_pct=1.0, input_format="uint8")
    data = _with_orientation(photo, 6, "PNG")
    decoded = GpuDecoder(preprocess, device="cpu")([data]).numpy()[0]
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - preprocess.load(data).astype(int)).mean() < 3
