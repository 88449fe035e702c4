"""TensorRT calibration cache files: the exact text format TensorRT's calibrators read and write.

    TRT-<version>-EntropyCalibration2
    input: 3c010a14
    /levels.0/blocks.0/conv1/Conv_output_0: 3d8e1a52

The first line names the TensorRT version (8.x: major*1000 + minor*100 + patch, e.g.
8601; 10.x and later: major*10000 + minor*100 + patch, e.g. 101303) and the calibrator;
each further line is ``<tensor name>: <hex>`` with the big-endian IEEE-754 float32 bit
pattern of the scale (amax / 127). Tensor names are the ONNX tensor names.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import write_bytes
from ..errors import CalibrationCacheError
from ..tensorrt_import import import_tensorrt

# calibration method -> TensorRT calibrator name in the header
ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration", "percentile": "PercentileCalibration"}
DEFAULT_TRT_VERSION = (10, 13, 3)  # the version written when no TensorRT is installed
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


def version_number(major: int, minor: int, patch: int) -> int:
    """TensorRT's NV_TENSORRT_VERSION encoding."""
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def installed_trt_version() -> tuple[int, int, int]:
    """The installed TensorRT's version (TensorRT-RTX does not read these caches), else the default."""
    tensorrt = import_tensorrt("tensorrt")
    if tensorrt is None:
        return DEFAULT_TRT_VERSION
    try:
        major, minor, patch = (int(v) for v in tensorrt.__version__.split(".")[:3])
        return major, minor, patch
    except ValueError:
        return DEFAULT_TRT_VERSION


@dataclass(frozen=True)
class CalibrationCache:
    """Per-tensor scales (amax / 127) and the calibrator that produced them."""

    scales: dict[str, float]
    method: str = "entropy"
    trt_version: int = version_number(*DEFAULT_TRT_VERSION)

    @property
    def amax(self) -> dict[str, float]:
        return {name: scale * 127.0 for name, scale in self.scales.items()}

    def to_text(self) -> str:
        lines = [f"TRT-{self.trt_version}-{ALGORITHMS[self.method]}"]
        lines += [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in self.scales.items()]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        write_bytes(Path(path), self.to_text().encode())

    @classmethod
    def from_text(cls, text: str, source: str | Path = "<text>") -> CalibrationCache:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        header = _HEADER.match(lines[0]) if lines else None
        if header is None:
            raise CalibrationCacheError(
                f"{source}: not a TensorRT calibration cache (first line should be "
                "TRT-<version>-<Calibrator>); delete it or pass another --calib-cache"
            )
        methods = {name: method for method, name in ALGORITHMS.items()}
        if header.group(2) not in methods:
            raise CalibrationCacheError(
                f"{source}: calibrator {header.group(2)} is not one of {', '.join(ALGORITHMS.values())}"
            )
        scales = {}
        for number, line in enumerate(lines[1:], start=2):
            match = _LINE.match(line)
            if match is None:
                raise CalibrationCacheError(
                    f"{source}: line {number} is malformed ({line[:60]!r}); expected '<tensor>: <8 hex digits>'"
                )
            scales[match.group(1)] = struct.unpack(">f", bytes.fromhex(match.group(2)))[0]
        return cls(scales, methods[header.group(2)], int(header.group(1)))

    @classmethod
    def read(cls, path: Path) -> CalibrationCache:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationCacheError(f"{path}: cannot read the calibration cache ({exc})") from None
        return cls.from_text(text, path)

    def check(self, method: str, needed: list[str], graph_tensors: set[str], source: str | Path) -> None:
        """Refuse a cache from another calibrator, or one that is not for this graph: it must
        give a scale to every ``needed`` tensor and name only tensors of the graph
        (TensorRT's own "(Unnamed Layer* ...)" tensors aside)."""
        if self.method != method:
            raise CalibrationCacheError(
                f"{source}: cache written by the {ALGORITHMS[self.method]} calibrator, but "
                f"--calib-method {method} was asked; pass --calib-method {self.method} or delete "
                "the cache to recalibrate"
            )
        foreign = [name for name in self.scales if name not in graph_tensors and not name.startswith("(Unnamed Layer")]
        missing = [name for name in needed if name not in self.scales]
        if foreign or missing:
            problem = (
                f"{len(foreign)} of its tensors are not in this graph (e.g. {', '.join(foreign[:3])})"
                if foreign
                else f"{len(missing)} of {len(needed)} tensors have no scale (e.g. {', '.join(missing[:3])})"
            )
            raise CalibrationCacheError(
                f"{source}: cache does not match this graph: {problem}; it was made for another "
                "model or resolution. Delete it or pass another --calib-cache to recalibrate"
            )


def record_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def means_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".means.npz")


def write_means(path: Path, means: dict[str, np.ndarray]) -> None:
    names = sorted(means)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        names=np.array(names),
        sizes=np.array([means[n].size for n in names], np.int64),
        means=np.concatenate([means[n].ravel() for n in names]) if names else np.zeros(0),
    )
    write_bytes(path, buffer.getvalue())


def read_means(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as stored:
            names, sizes, values = stored["names"], stored["sizes"], stored["means"]
        if len(names) != len(sizes) or int(sizes.sum()) != values.size:
            raise _not_means(path, "names, sizes and means do not match")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise _not_means(path, exc) from None
    return dict(zip((str(n) for n in names), np.split(values, np.cumsum(sizes)[:-1])))


def _not_means(path: Path, why: object) -> CalibrationCacheError:
    return CalibrationCacheError(
        f"{path}: not a channel-means file of this toolkit ({why}); delete it "
        "and pass --recalibrate, or --bias-correction off"
    )


def recorded_settings(cache: Path) -> dict:
    """The settings recorded beside ``cache`` (empty: no readable record)."""
    try:
        made = json.loads(record_path(cache).read_text())
    except (OSError, ValueError):
        return {}
    return made if isinstance(made, dict) else {}


def changed_settings(cache: Path, settings: dict) -> str | None:
    """How ``settings`` differ from those recorded beside ``cache`` (None: same, or no record)."""
    try:
        made = json.loads(record_path(cache).read_text())
    except (OSError, ValueError):
        return None
    return ", ".join(_differences(made, settings)) or None


def _differences(made: dict, now: dict, prefix: str = "") -> list[str]:
    """``key old -> new`` for each setting of ``now`` that ``made`` records otherwise (nested
    records key by key); a setting ``made`` lacks counts as changed: it cannot be vouched for."""
    found = []
    for key, value in now.items():
        old = made.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            found += _differences(old, value, f"{prefix}{key}.")
        elif old != value:
            found.append(f"{prefix}{key} {'not recorded' if key not in made else repr(old)} -> {value!r}")
    return found
