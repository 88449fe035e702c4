"""GPU decoding's steps run on CPU tensors, through a stand-in for torchvision's nvJPEG
decoding (tests/runtime/stand_in_nvjpeg.py): EXIF orientation as the CPU path applies it, the
whole decoder against the CPU path, the normalisation constants made once, images nvJPEG
cannot decode (or that are not images) handled one by one, and one nvJPEG decoder for
models on several devices."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fastervit_trt.preprocess import SAMPLE_IMAGES, ImageError, Preprocess, load_image
from fastervit_trt.runtime import gpu_decode
from fastervit_trt.runtime.gpu_decode import GpuDecoder, decode_jpegs, exif_orientation, orient
from tests.runtime.stand_in_nvjpeg import NvJpeg

ORIENTATIONS = range(1, 9)


@pytest.fixture(autouse=True)
def nvjpeg(monkeypatch) -> NvJpeg:
    """Every GPU decode goes through the stand-in nvJPEG, in a fresh process state."""
    import torchvision.io

    stand_in = NvJpeg()
    monkeypatch.setattr(torchvision.io, "decode_jpeg", stand_in)
    monkeypatch.setattr(torch.cuda, "device", stand_in.device)
    monkeypatch.setattr(torch.cuda, "current_device", stand_in.current_device)
    monkeypatch.setattr(torch.cuda, "current_stream", stand_in.current_stream)
    monkeypatch.setattr(gpu_decode, "_decode_device", None, raising=False)
    return stand_in


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
    with Image.open(io.BytesIO(data)) as image:
        assert exif_orientation(image) == orientation
    stored = torch.from_numpy(np.asarray(load_image(data, exif_rotate=False)).copy()).permute(2, 0, 1)
    upright = orient(stored, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(upright, np.asarray(load_image(data)))


def _encoded(image: Image.Image, kind: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


def test_only_jpegs_nvjpeg_decodes_go_to_the_gpu():
    """A colour or grey JPEG without EXIF is upright; a broken header, a CMYK JPEG or
    another format is left to the CPU path (None)."""
    assert gpu_decode.nvjpeg_orientation(_encoded(Image.new("RGB", (4, 3)))) == 1
    assert gpu_decode.nvjpeg_orientation(_encoded(Image.new("L", (4, 3)))) == 1
    assert gpu_decode.nvjpeg_orientation(_encoded(Image.new("CMYK", (4, 3)))) is None
    assert gpu_decode.nvjpeg_orientation(_encoded(Image.new("RGB", (4, 3)), "PNG")) is None
    assert gpu_decode.nvjpeg_orientation(b"\xff\xd8\xff junk") is None


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


def test_a_jpeg_nvjpeg_cannot_decode_goes_to_the_cpu_path_alone(photo, nvjpeg):
    """nvJPEG fails a whole list for one image it cannot decode (a CMYK JPEG, or one it
    refuses after reading the header): those are decoded on the CPU path, the rest on the GPU."""
    preprocess = Preprocess(input_size=(32, 32), crop_pct=1.0)
    good = _with_orientation(photo, 1, "JPEG")
    cmyk = _encoded(photo.convert("CMYK"))
    refused = _with_orientation(photo.transpose(Image.Transpose.ROTATE_90), 6, "JPEG")
    nvjpeg.refuse.add(refused)
    items = [good, cmyk, refused, good]
    batch = GpuDecoder(preprocess, device="cpu")(items).numpy()
    expected = np.stack([preprocess.load(data) for data in items])
    assert np.abs(batch - expected).mean(axis=(1, 2, 3)).max() < 0.03
    assert nvjpeg.devices  # the good ones went to nvJPEG


def test_a_broken_jpeg_gets_its_own_error_and_the_others_still_decode(photo, tmp_path):
    preprocess = Preprocess(input_size=(32, 32), crop_pct=1.0)
    data = _with_orientation(photo, 1, "JPEG")
    good, broken = tmp_path / "good.jpg", tmp_path / "broken.jpg"
    good.write_bytes(data)
    broken.write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    decoder = GpuDecoder(preprocess, device="cpu")
    with pytest.raises(ImageError, match=r"broken\.jpg: cannot decode the image"):
        decoder([good, broken, data])
    first, error, last = decoder.decode([good, broken, data])
    assert isinstance(error, ImageError) and str(broken) in str(error)
    alone = decoder.decode([data])[0]
    assert torch.equal(first, alone) and torch.equal(last, alone)


def test_a_missing_file_is_an_image_error_naming_it(tmp_path):
    decoder = GpuDecoder(Preprocess(input_size=(32, 32), crop_pct=1.0), device="cpu")
    with pytest.raises(ImageError, match="gone.jpg: no such image file"):
        decoder([tmp_path / "gone.jpg"])


def test_a_decompression_bomb_is_refused_from_its_header_as_on_the_cpu_path(nvjpeg, monkeypatch):
    """Pillow's pixel limit (lowered here) refuses a JPEG from its header with the CPU path's
    error, before nvJPEG allocates it; the batch's other images are decoded."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    small, bomb = _encoded(Image.new("RGB", (16, 16))), _encoded(Image.new("RGB", (64, 64)))
    decoder = GpuDecoder(Preprocess(input_size=(16, 16), crop_pct=1.0), device="cpu")
    with pytest.raises(ImageError) as refused:
        decoder([small, bomb])
    with pytest.raises(ImageError) as on_the_cpu:
        load_image(bomb)
    assert str(refused.value) == str(on_the_cpu.value) and "refused" in str(refused.value)
    assert (64, 64) not in nvjpeg.allocated
    assert decoder.decode([small, bomb])[0].shape == (3, 16, 16)


def test_models_on_two_devices_share_one_nvjpeg_decoder(photo, nvjpeg):
    """torchvision makes its one nvJPEG decoder again (leaking the old) for a call on another
    device: alternating models' images are all decoded on the first device asked for, then
    moved to each model's device. ``meta`` plays a second GPU (a CPU build has no other)."""
    preprocess = Preprocess(input_size=(32, 32), crop_pct=1.0)
    data = _with_orientation(photo, 1, "JPEG")
    first, second = GpuDecoder(preprocess, device="cpu"), GpuDecoder(preprocess, device="meta")
    for _ in range(3):
        (on_first,), (on_second,) = first.decode([data]), second.decode([data])
    assert nvjpeg.created == 1 and set(nvjpeg.devices) == {torch.device("cpu")}
    assert on_first.device.type == "cpu" and on_second.device.type == "meta"
    assert on_second.shape == on_first.shape


def test_the_nvjpeg_decoder_is_made_and_used_with_its_device_current(nvjpeg):
    """decode_jpegs_cuda.cpp synchronises its results with the current stream of the device
    that was current when its decoder was made: that must be the decoding device. A plain
    "cuda" is the current device, named, so that it stays one device."""
    data = torch.frombuffer(bytearray(_encoded(Image.new("RGB", (8, 8)))), dtype=torch.uint8)
    nvjpeg.current = 1
    for device in ("cuda", "cuda:0", "cuda:1"):
        assert gpu_decode.decode_jpegs([data], device)[0].shape == (3, 8, 8)
    assert nvjpeg.created == 1 and set(nvjpeg.devices) == {torch.device("cuda:1")}
    assert nvjpeg.original_device == torch.device("cuda:1")


def test_the_stand_in_fails_a_whole_list_for_one_image(nvjpeg):
    """As torchvision's GPU decode_jpeg: one undecodable image, no partial results."""
    from torchvision.io import decode_jpeg

    data = _encoded(Image.new("RGB", (8, 8)))
    good, broken = (torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (data, data[:-40]))
    assert decode_jpeg([good, good], device="cuda:0")[1].shape == (3, 8, 8)
    with pytest.raises(RuntimeError, match="Error while decoding JPEG images"):
        decode_jpeg([good, broken], device="cuda:0")


def test_decoding_from_two_threads_never_writes_over_a_block_still_in_use(nvjpeg):
    """nvJPEG's outputs are allocated on the caller's current stream and written on the
    decoder's own: each call first lets the caller's stream finish what it queued, so a block
    the caching allocator hands out again is no longer read when the decoder writes it."""
    from concurrent.futures import ThreadPoolExecutor

    data = _encoded(Image.new("RGB", (16, 12), (200, 30, 10)))

    def decode(_: int) -> int:
        nvjpeg.queue_reader()  # this thread's stream still reads a block it freed
        return len(decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], "cuda:0"))

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(decode, range(8))) == [1] * 8
    assert nvjpeg.overwrites == []
