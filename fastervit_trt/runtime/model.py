"""One inference API over TensorRT engines and ONNX files: ``load(path)``.

    model = load("engines/faster_vit_0_224_fp16.engine")   # or an .onnx
    model.predict(["cat.jpg", pil_image], topk=5)           # top-k (index, name, probability)
    model.logits(batch)                                     # float32 (N, classes)
    model.embed(images)                                     # a headless model: float32 (N, D)

Batches above the largest the backend takes are split and re-joined; smaller ones run at
their own size. Preprocessing and class names come from the engine's sidecar or the ONNX
metadata. Thread-safe: ONNX Runtime sessions run concurrently, TensorRT engines through a
bounded pool of execution contexts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FasterViTTRTError, InputError, ModelFileError, OptionsError
from ..preprocess import Preprocess
from .backend import BACKENDS, Backend, RunsOn, RuntimeOptions, choose_backend, join_parts
from .inputs import is_encoded, to_batch, to_input
from .labels import model_class_names
from .pipelined import decode_ahead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float


class InferenceModel:
    """A loaded model: backend + its preprocessing and class names."""

    def __init__(
        self,
        backend: Backend,
        preprocess: Preprocess,
        names: list[str],
        source: Path,
        feature_config: dict | None = None,
    ) -> None:
        self.backend, self.preprocess, self.names, self.source = backend, preprocess, names, source
        self.feature_config = feature_config  # a backbone's export record: stages, norm, strides
        self.exif_rotate = True  # False: decode images with their stored pixel orientation
        self._decoder: Any = None  # decode="gpu"'s GpuDecoder

    @property
    def runs_on(self) -> RunsOn:
        """The backend, provider and device that run the model."""
        return self.backend.runs_on

    @property
    def summary(self) -> str:
        """One line: the file, what it answers and where it runs
        (``m.engine: classifier, 1000 classes, tensorrt (tensorrt-rtx 1.2.0) on cuda:0``)."""
        shapes = self.output_shapes
        answers = {
            "classifier": f"{len(self.names)} classes",
            "embedding": f"{next(iter(shapes.values()))[0]}-value embeddings",
            "backbone": f"feature maps {', '.join(shapes)}",
        }
        return f"{self.source.name}: {self.kind}, {answers[self.kind]}, {self.runs_on}"

    @property
    def max_batch(self) -> int:
        return int(self.backend.max_batch)

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each output's shape per input: ``{"logits": (classes,)}``, or a backbone's
        ``{"stage1": (C, H, W), ...}``."""
        return dict(self.backend.output_shapes)

    @property
    def is_backbone(self) -> bool:
        """Whether the model outputs feature maps (``--features``) rather than logits."""
        return any(len(shape) == 3 for shape in self.backend.output_shapes.values())

    @property
    def is_embedding(self) -> bool:
        """Whether the model is headless: one pooled-embedding vector per image, no classes."""
        return self.backend.output_names == ["embedding"]

    @property
    def kind(self) -> str:
        """``classifier``, ``embedding`` (a headless model's vectors) or ``backbone`` (feature maps)."""
        return "backbone" if self.is_backbone else "embedding" if self.is_embedding else "classifier"

    def features(self, inputs: Any) -> dict[str, np.ndarray]:
        """A backbone's feature maps ``{"stage1": (N, C, H, W), ...}`` for any accepted input
        (see ``runtime.inputs``), ``max_batch`` inputs per engine call."""
        self._require("backbone")  # exported with fastervit-export --features
        return self.outputs(to_batch(inputs, self.preprocess, self.exif_rotate))

    def logits(self, inputs: Any, decode: str = "cpu") -> np.ndarray:
        """Raw logits (N, classes) for any accepted input (see ``runtime.inputs``). A list of
        encoded images longer than the largest batch is decoded batch by batch, the next
        batch decoding while the engine runs this one. ``decode="gpu"``: encoded JPEGs are
        decoded, resized and normalised on the GPU and read there by the engine."""
        self._require("classifier")
        return self._vectors(inputs, decode)

    def embed(self, inputs: Any, decode: str = "cpu") -> np.ndarray:
        """A headless model's pooled embeddings (N, D) for any accepted input, as ``logits``
        reads them."""
        self._require("embedding")
        return self._vectors(inputs, decode)

    def _vectors(self, inputs: Any, decode: str) -> np.ndarray:
        """The one output (logits or embeddings) of a classifier or headless model."""
        step, batch = self.max_batch, None
        if decode not in ("cpu", "gpu"):
            raise OptionsError(f"decode must be 'cpu' or 'gpu', not {decode!r}")
        try:
            if decode == "gpu":
                items = inputs if isinstance(inputs, list) else [inputs]
                decoder = self._gpu_decoder()
                parts = [
                    self.backend.infer(decoder(items[i : i + step], self.exif_rotate))
                    for i in range(0, len(items), step)
                ]
            elif isinstance(inputs, list) and len(inputs) > step and all(map(is_encoded, inputs)):
                parts = [np.stack([self._raise(row) for row in self.logits_each(inputs)])]
            else:
                batch = to_batch(inputs, self.preprocess, self.exif_rotate)
                parts = [self.run(batch)]
        except MemoryError:
            size = step if batch is None else min(len(batch), step)  # batch: the one-shot path's
            raise InputError(
                f"{self.source}: a batch of {size} does not fit in memory; pass fewer inputs per call"
            ) from None
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _gpu_decoder(self):
        """The model's GPU decoder, made on first use, on the engine's device."""
        if self._decoder is None:
            from .gpu_decode import GpuDecoder

            device = self.backend.device
            self._decoder = GpuDecoder(self.preprocess, "cuda" if device is None else f"cuda:{device}")
        return self._decoder

    def logits_each(self, items: Sequence[Any]) -> Iterator[np.ndarray | FasterViTTRTError]:
        """Per encoded image of ``items`` (paths, bytes, file objects), in order: its logits
        (or embedding) row, or the error that decoding it raised (``ImageError``: one bad file
        does not end the run). The next batch decodes while the engine runs this one."""
        self._require("classifier", "embedding")
        return decode_ahead(
            items, lambda item: to_input(item, self.preprocess, self.exif_rotate), self.run, self.max_batch
        )

    @staticmethod
    def _raise(row: np.ndarray | FasterViTTRTError) -> np.ndarray:
        if isinstance(row, FasterViTTRTError):
            raise row
        return row

    def run(self, batch: Any) -> np.ndarray:
        """Logits of a batch already in the model's input format (``preprocess`` outputs
        stacked: float32 NCHW, or uint8 NHWC crops for a ``--input uint8`` model); nothing
        is resized or normalised (a headless model: its embeddings)."""
        self._require("classifier", "embedding")
        return self.outputs(batch)[self.backend.output_names[0]]

    def outputs(self, batch: Any) -> dict[str, np.ndarray]:
        """Every output of a batch already in the model's input format (as ``run`` takes it),
        ``max_batch`` inputs per backend call, joined."""
        step = self.max_batch
        return join_parts([self.backend.infer_all(batch[i : i + step]) for i in range(0, len(batch), step)])

    def _require(self, *kinds: str) -> None:
        """Refuse a call this kind of model cannot answer, naming the call that it can."""
        if self.kind not in kinds:
            call = {"classifier": "logits() or predict()", "embedding": "embed()", "backbone": "features()"}
            raise OptionsError(
                f"{self.source}: a {self.kind} model ({', '.join(self.output_shapes)} out), not a "
                f"{' or '.join(kinds)}; call {call[self.kind]}"
            )

    def predict(self, inputs: Any, topk: int = 5, decode: str = "cpu") -> list[list[Prediction]]:
        """The ``topk`` classes of each input, most probable first."""
        return self.top(self.logits(inputs, decode), topk)

    def top(self, logits: np.ndarray, topk: int = 5) -> list[list[Prediction]]:
        """The ``topk`` classes of each row of ``logits`` (a ``--softmax`` model's rows are
        probabilities already), most probable first."""
        self._require("classifier")
        logits = logits.astype(np.float64)
        if self.backend.output_names[0] == "probabilities":
            probabilities = logits
        else:
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities /= probabilities.sum(axis=1, keepdims=True)
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :topk]
        return [[Prediction(int(i), self.names[i], float(p[i])) for i in row] for row, p in zip(top, probabilities)]

    def batcher(self, **options: Any):
        """A dynamic batcher over this model (``max_batch``, ``max_delay_ms``, ``max_queue``,
        ``timeout_s``): concurrent ``submit``/``predict`` calls from any threads coalesced
        into engine calls; see ``runtime.batcher``."""
        from .batcher import Batcher

        return Batcher(self, **options)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> InferenceModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(
    path: str | Path,
    backend: str = "auto",
    provider: str = "auto",
    contexts: int = 2,
    cuda_graphs: bool = False,
    device: int | None = None,
) -> InferenceModel:
    """Load a model file with the backend ``backend`` (``auto``: by its suffix, ``.engine`` /
    ``.plan`` TensorRT with its sidecar, ``.onnx`` ONNX Runtime; see ``backend.BACKENDS``).

    ONNX Runtime: ``provider`` is its execution provider (``auto``: CUDA when present, else the
    CPU; ``cpu``, ``cuda``, ``tensorrt`` or a provider's own name). Engines: ``contexts``
    execution contexts serve concurrent calls; ``cuda_graphs`` replays CUDA graphs captured at
    fixed batch sizes (see ``tensorrt_backend``). ``device`` is the CUDA device index (None: the
    current one), kept for every later call from any thread. ``RuntimeOptions`` holds the same
    fields: ``load(path, **asdict(options))``. An option the backend does not read is refused."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    options = RuntimeOptions(backend, provider, contexts, cuda_graphs, device)
    opened = BACKENDS[choose_backend(path, options)].open(path, options)
    info = opened.metadata
    images = np.dtype(opened.input_dtype) == np.uint8  # an NHWC image input
    height, width = opened.input_shape[:2] if images else opened.input_shape[1:]
    preprocess = (
        Preprocess.from_config(info["preprocess"])
        if info.get("preprocess")
        else Preprocess(input_size=(height, width), input_format="uint8" if images else "float")
    )
    classes = next(iter(opened.output_shapes.values()))
    headless = opened.output_names == ["embedding"]
    names = [] if len(classes) != 1 or headless else model_class_names(info, int(classes[0]))
    return InferenceModel(opened, preprocess, names, path, info.get("features"))
