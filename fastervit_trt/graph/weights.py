"""Weights kept on disk while the graph is worked on in memory.

Every pass of the export (simplification, FP16 conversion, range checks, Q/DQ insertion)
works on a graph whose initializers are ONNX external-data references into one scratch
file, so no pass copies the weights: the largest variant (FasterViT-6, 5.4 GB of FP32
weights) exports in little more memory than its weights. ONNX Runtime reads graphs saved
beside the scratch file directly (``save_view``); ``save`` streams the weights into the
final file, inline when small, as ``<file>.data`` when above the protobuf limit.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..artifacts import private_folder

SCRATCH_NAME = "weights.bin"
# Page-aligned offsets let ONNX Runtime memory-map external weights instead of copying them.
ALIGNMENT = 4096
_COPY_CHUNK = 1 << 26


def _span(info: ExternalDataInfo) -> tuple[int, int]:
    """(offset, length) of an external tensor; the toolkit writes both for every tensor."""
    return int(info.offset or 0), int(info.length or 0)


def tensor_bytes(tensor: TensorProto) -> int:
    """Size of an initializer's data, whether inline or external."""
    if uses_external_data(tensor):
        return int(ExternalDataInfo(tensor).length or 0)
    return len(tensor.raw_data) or tensor.ByteSize()


class WeightFile:
    """An append-only scratch file of tensor data that initializers reference."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / SCRATCH_NAME
        self.path.touch()
        self._end = self.path.stat().st_size

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        """Append ``array`` and return an initializer called ``name`` that refers to it."""
        array = np.ascontiguousarray(array)
        tensor = TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        offset = _aligned(self._end)
        with open(self.path, "r+b") as fh:
            fh.seek(offset)
            fh.write(array.view(np.uint8).data)  # raw bytes, whatever the dtype (FP8 has no buffer format)
        self._end = offset + array.nbytes
        _refer(tensor, SCRATCH_NAME, offset, array.nbytes)
        return tensor

    def read(self, tensor: TensorProto) -> np.ndarray:
        """The data of ``tensor``, inline or in this file (read on demand, never cached)."""
        if not uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        info = ExternalDataInfo(tensor)
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        offset, length = _span(info)
        return np.fromfile(
            self.folder / info.location, dtype=dtype, count=length // dtype.itemsize, offset=offset
        ).reshape(tuple(tensor.dims))

    def arrays(self, model: onnx.ModelProto) -> Mapping[str, np.ndarray]:
        """The initializers of ``model`` by name, each read when looked up."""
        return _LazyArrays(self, {t.name: t for t in model.graph.initializer})

    def save_view(self, model: onnx.ModelProto, name: str) -> Path:
        """Write ``model`` beside the scratch file (no weight is copied) for ONNX Runtime."""
        path = self.folder / name
        path.write_bytes(model.SerializeToString())
        return path

    def save(self, model: onnx.ModelProto, path: Path, external: bool) -> None:
        """Write ``model`` to ``path`` with its weights: in the file, or streamed to
        ``<path.name>.data`` beside it when ``external``."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        if not external:
            self._save_inline(out, path)
            return
        data_name = path.name + ".data"
        with open(path.parent / data_name, "wb") as dst:
            for tensor in (t for t in out.graph.initializer if uses_external_data(t)):
                info = ExternalDataInfo(tensor)
                offset = _aligned(dst.tell())
                dst.seek(offset)
                start, length = _span(info)
                with open(self.folder / info.location, "rb") as src:
                    src.seek(start)
                    _copy(src, dst, length)
                _refer(tensor, data_name, offset, length)
        onnx.save_model(out, str(path))

    def _save_inline(self, model: onnx.ModelProto, path: Path) -> None:
        """Write ``model`` with its weights inside, one tensor in memory at a time.

        Protobuf merges repeated occurrences of an embedded message, so the file is the graph
        without initializers followed by one ``graph { initializer }`` record per tensor: every
        protobuf reader (ONNX, ONNX Runtime, TensorRT) reads the same model as if it had been
        serialized whole, without the whole model ever being in memory twice.
        """
        tensors = list(model.graph.initializer)
        del model.graph.initializer[:]
        with open(path, "wb") as fh:
            fh.write(model.SerializeToString())
            for tensor in tensors:
                piece = onnx.GraphProto()
                inline = piece.initializer.add()
                inline.CopyFrom(tensor)
                if uses_external_data(tensor):
                    del inline.external_data[:]
                    inline.ClearField("data_location")
                    inline.raw_data = self.read(tensor).tobytes()
                record = piece.SerializeToString()
                fh.write(_GRAPH_KEY + _varint(len(record)) + record)


class _LazyArrays(Mapping):
    def __init__(self, weights: WeightFile, tensors: dict[str, TensorProto]) -> None:
        self._weights, self._tensors = weights, tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return self._weights.read(self._tensors[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


_GRAPH_KEY = bytes([7 << 3 | 2])  # ModelProto.graph (field 7), length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _refer(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """Point ``tensor`` at ``length`` bytes at ``offset`` of ``location`` (ONNX external data)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def _copy(src, dst, length: int) -> None:
    while length > 0:
        block = src.read(min(length, _COPY_CHUNK))
        if not block:
            raise OSError(f"{src.name}: ends early")
        dst.write(block)
        length -= len(block)


@contextmanager
def scratch(near: Path) -> Iterator[WeightFile]:
    """A scratch weight file in a hidden folder inside ``near`` (same disk as the outputs),
    removed afterwards whatever happens (and by the next export if this process is killed);
    so are the folders up to ``near`` that it had to create, when nothing else was put there
    (a failed export leaves no empty output folder behind)."""
    created = [p for p in (near, *near.parents) if not p.exists()]  # deepest first
    folder = private_folder(near, ".fastervit-weights-")
    try:
        yield WeightFile(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for path in created:
            try:
                path.rmdir()
            except OSError:  # holds the export's files (or another's): kept
                break
