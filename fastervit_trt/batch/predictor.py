"""The Ray Data stage that runs the model: a callable class, one model per actor.

    dataset.map_batches(Predictor, fn_constructor_kwargs={"model_path": "m.onnx", "runtime": RuntimeOptions()},
                        concurrency=2, num_gpus=0, batch_size=32, batch_format="pyarrow")

Each batch is a table of ``path`` and ``bytes`` (``ray.data.read_binary_files(...,
include_paths=True)``); the answer is a table of ``schema(kind)``: one row per file, in
order, decoded with the model's recorded preprocessing (``runtime.inputs.to_input``) so each
row equals ``model.predict`` (or ``embed``) of the same file. A file that does not decode is
a row with its one-line error, never a failed task.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FasterViTTRTError
from ..runtime.backend import RuntimeOptions
from ..runtime.inputs import to_input
from ..runtime.pipelined import decode_ahead

UNNAMED = "<image bytes>"  # how load_image names bytes in its errors


def schema(kind: str) -> Any:
    """The output columns for a model of ``kind`` (``InferenceModel.kind``)."""
    import pyarrow as pa

    answer = (
        [
            ("index", pa.list_(pa.int32())),
            ("name", pa.list_(pa.string())),
            ("probability", pa.list_(pa.float32())),
        ]
        if kind == "classifier"
        else [("embedding", pa.list_(pa.float32()))]
    )
    return pa.schema([("path", pa.string()), ("error", pa.string()), *answer])


def _named(error: FasterViTTRTError, path: str) -> FasterViTTRTError:
    """``error`` with the file it is about named (decoding bytes names them ``UNNAMED``)."""
    message = str(error)
    message = path + message.removeprefix(UNNAMED) if message.startswith(UNNAMED) else f"{path}: {message}"
    return type(error)(message)


class Predictor:
    """Loads ``model_path`` (``.engine`` or ``.onnx``) once, as ``runtime`` says; each call answers a
    batch of files.

    Classifiers answer the ``topk`` classes (index, name, probability; most probable first),
    headless models their pooled embedding, backbones the global average of their deepest
    feature map."""

    def __init__(
        self,
        model_path: str,
        topk: int = 5,
        exif_rotate: bool = True,
        exact_preprocess: bool = False,
        runtime: RuntimeOptions = RuntimeOptions(),
        model_files: Any = None,
    ) -> None:
        from ..runtime import load

        loaded = model_path
        if model_files is not None:  # the driver's files (a Ray object), loaded from a folder of this node's
            folder = _local_copy(model_files)
            weakref.finalize(self, shutil.rmtree, str(folder), True)  # gone with the actor
            loaded = str(folder / Path(model_path).name)
        try:
            self.model = load(loaded, **asdict(runtime))
        except FasterViTTRTError as exc:  # named as the user knows the file, not as this node's copy
            raise type(exc)(str(exc).replace(loaded, model_path)) from None
        self.model.exif_rotate = exif_rotate
        if exact_preprocess:
            self.model.preprocess = replace(self.model.preprocess, jpeg_draft=False)
        self.topk = topk
        self.schema = schema("classifier" if self.model.kind == "classifier" else "embedding")

    def vectors(self, batch: np.ndarray) -> np.ndarray:
        """The model's row per input of a preprocessed batch: logits, embeddings, or a
        backbone's deepest stage averaged over its height and width."""
        if self.model.kind != "backbone":
            return self.model.run(batch)
        deepest = list(self.model.output_shapes)[-1]
        return self.model.outputs(batch)[deepest].mean(axis=(2, 3))

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        paths = batch.column("path").to_pylist()
        files = list(zip(paths, batch.column("bytes").to_pylist()))
        preprocess, exif_rotate = self.model.preprocess, self.model.exif_rotate

        def decode(file: tuple[str, bytes]) -> np.ndarray:
            try:
                return to_input(file[1], preprocess, exif_rotate)
            except FasterViTTRTError as exc:
                raise _named(exc, file[0]) from None

        rows = list(decode_ahead(files, decode, self.vectors, self.model.max_batch))
        good = [row for row in rows if not isinstance(row, FasterViTTRTError)]
        columns: dict[str, list] = {
            "path": paths,
            "error": [str(row) if isinstance(row, FasterViTTRTError) else None for row in rows],
        }
        if self.model.kind == "classifier":
            tops = iter(self.model.top(np.stack(good), self.topk) if good else [])
            answers = [None if isinstance(row, FasterViTTRTError) else next(tops) for row in rows]
            columns["index"] = [None if top is None else [p.index for p in top] for top in answers]
            columns["name"] = [None if top is None else [p.name for p in top] for top in answers]
            columns["probability"] = [None if top is None else [p.probability for p in top] for top in answers]
        else:
            columns["embedding"] = [None if isinstance(row, FasterViTTRTError) else row for row in rows]
        return pa.Table.from_pydict(columns, schema=self.schema)


def _local_copy(files: Any) -> Path:
    """``files`` (name -> bytes, or the Ray object holding them) written to a new folder."""
    if not isinstance(files, dict):
        import ray

        files = ray.get(files)
    folder = Path(tempfile.mkdtemp(prefix="fastervit-model-"))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
