"""TensorRT calibration cache: exact text format, round trip, refusal of foreign caches."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from fastervit_trt.calibration.cache import CalibrationCache, CalibrationCacheError, version_number

FIXTURE = Path(__file__).parents[1] / "fixtures" / "trt8601_entropy.cache"


def _ieee754(hex_digits: str) -> float:
    """Decode a big-endian float32 bit pattern by hand (sign, exponent, mantissa)."""
    bits = int(hex_digits, 16)
    sign = -1.0 if bits >> 31 else 1.0
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    return sign * (1 + mantissa / 2**23) * 2.0 ** (exponent - 127)


def test_reads_a_cache_in_tensorrts_format():
    cache = CalibrationCache.read(FIXTURE)
    assert cache.method == "entropy" and cache.trt_version == 8601
    assert list(cache.scales) == [
        "input",
        "/patch_embed/conv_down/conv_down.2/Relu_output_0",
        "/levels.2/blocks.0/norm1/LayerNormalization_output_0",
    ]
    assert cache.scales["input"] == pytest.approx(_ieee754("3c010a14"), rel=1e-7)
    assert cache.amax["input"] == pytest.approx(127 * _ieee754("3c010a14"), rel=1e-7)


def test_round_trip_is_exact(tmp_path):
    scales = {"input": 0.0078759, "/a/b/MatMul_output_0": 1.5e-3, "x:y": 12.25}
    path = tmp_path / "model.cache"
    CalibrationCache(scales, "minmax", version_number(10, 13, 3)).write(path)
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-101303-MinMaxCalibration"
    assert f"input: {struct.pack('>f', 0.0078759).hex()}" in text.splitlines()
    back = CalibrationCache.read(path)
    assert back.method == "minmax"
    assert back.scales == {k: struct.unpack(">f", struct.pack(">f", v))[0] for k, v in scales.items()}
    assert CalibrationCache.read(path).to_text() == text


def test_version_encoding():
    assert version_number(8, 6, 1) == 8601
    assert version_number(10, 13, 3) == 101303


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello world\n", "not a TensorRT calibration cache"),
        ("TRT-8601-LegacyCalibration\ninput: 3c010a14\n", "LegacyCalibration is not one of"),
        ("TRT-8601-EntropyCalibration2\ninput 3c010a14\n", "line 2 is malformed"),
        ("TRT-8601-EntropyCalibration2\ninput: 3c01zz14\n", "line 2 is malformed"),
        ("", "not a TensorRT calibration cache"),
    ],
)
def test_malformed_caches(tmp_path, text, message):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(CalibrationCacheError, match=message):
        CalibrationCache.read(path)


def test_check_refuses_other_method_and_other_graph():
    cache = CalibrationCache.read(FIXTURE)
    graph = {
        "input",
        "/patch_embed/conv_down/conv_down.2/Relu_output_0",
        "/levels.2/blocks.0/norm1/LayerNormalization_output_0",
        "/x/MatMul_output_0",
        "/y/Conv_output_0",
    }
    with pytest.raises(CalibrationCacheError, match="--calib-method entropy"):
        cache.check("minmax", ["input"], graph, FIXTURE)
    with pytest.raises(CalibrationCacheError, match=r"2 of 3 tensors have no scale \(e\.g\. /x/MatMul_output_0, /y"):
        cache.check("entropy", ["input", "/x/MatMul_output_0", "/y/Conv_output_0"], graph, FIXTURE)
    with pytest.raises(CalibrationCacheError, match=r"2 of its tensors are not in this graph \(e\.g\. /patch"):
        cache.check("entropy", ["input"], {"input"}, FIXTURE)  # a cache of a bigger model
    cache.check("entropy", ["input"], graph, FIXTURE)
    with_trt_internal = CalibrationCache({**cache.scales, "(Unnamed Layer* 12) [Shuffle]_output": 0.1})
    with_trt_internal.check("entropy", ["input"], graph, FIXTURE)
