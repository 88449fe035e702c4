"""Run the FP32 ONNX graph in ONNX Runtime over calibration batches, accumulating histograms.

Only the histograms are kept between batches, never the activations, so memory does not
grow with the number of images. The requested activations never exceed
``ACTIVATION_BUDGET``: the graph is cut, in node order, into segments whose requested
activations for one image fit it (and whose weights fit ``graph/segments.py``'s budget),
and each batch flows through the segments one after the other, each in an ONNX Runtime
session of its own that maps in only its own weights, passing on only the tensors later
segments read. So every image goes through the network once, whatever the resolution, and
memory stays near that of one inference (a batch whose outputs would exceed the budget
runs in smaller chunks: at high resolutions, one image at a time).
Tensor names are the ONNX names, which are the TensorRT network's tensor names too.
The same pass can keep per-channel means of the quantized layers' inputs (``ChannelMeans``),
which bias correction needs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from ..graph.ort_cpu import release_memory
from ..graph.segments import SegmentedGraph
from ..progress import Bar
from .dataset import CalibrationData
from .ranges import Histogram

ACTIVATION_BUDGET = 1 << 27  # bytes of requested activations alive at once


@dataclass
class ChannelMeans:
    """Running per-channel means of tensors, each over every axis but its channel axis."""

    axes: Mapping[str, int]  # tensor -> channel axis
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, name: str, values: np.ndarray) -> None:
        channel = self.axes[name] % values.ndim
        others = tuple(i for i in range(values.ndim) if i != channel)  # reduced in place: no copy
        self.sums[name] = self.sums.get(name, 0.0) + values.sum(axis=others, dtype=np.float64)
        self.counts[name] = self.counts.get(name, 0) + values.size // values.shape[channel]

    def means(self) -> dict[str, np.ndarray]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}


def collect_histograms(
    model_path: Path,
    tensors: list[str],
    data: CalibrationData,
    batch_size: int,
    stream: TextIO | None = sys.stderr,
    budget: int = ACTIVATION_BUDGET,
    means: ChannelMeans | None = None,
) -> tuple[dict[str, Histogram], int]:
    """Histograms of |x| for ``tensors`` over ``data``; returns (histograms, images seen).
    ``means`` accumulates the channel means of those of its tensors among ``tensors``."""
    graph = SegmentedGraph(model_path, tensors, budget)
    histograms = {name: Histogram() for name in tensors}
    chunk = max(1, min(batch_size, budget // max(1, max(s.bytes_per_image for s in graph.segments))))
    total = len(data) // batch_size * batch_size  # exact batches: the remainder is dropped

    def record(name: str, values: np.ndarray) -> None:
        histograms[name].update(values)
        if means is not None and name in means.axes:
            means.update(name, values)

    with Bar(total, "calibrating", "img", stream) as bar:
        for batch in data.batches(batch_size):
            for start in range(0, len(batch), chunk):
                feed = {graph.graph_input: batch[start : start + chunk]}
                if graph.graph_input in histograms:
                    record(graph.graph_input, feed[graph.graph_input])
                for segment, values in graph.flow(feed):
                    for name in segment.requested:
                        record(name, np.asarray(values[name]))
            bar.update(len(batch))
    del graph
    release_memory()
    return histograms, total
