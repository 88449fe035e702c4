"""Q/DQ placement gated by measured speed (``fastervit-export --speed-search``).

The quantizable layers are grouped into regions, one per top-level module (the stem
``patch_embed``, each stage ``levels.N``) and, apart, each stage's attention products. Going
through the regions in graph order, a region's Q/DQ is kept only when the model with it runs
measurably faster (by ``MIN_GAIN``) than the same model without it, both timed interleaved on
the runtime at hand; otherwise that region runs in float from then on. Dropping Q/DQ never
costs accuracy, so a placement that met the accuracy budget still meets it. The result is
timed once more against the placement it started from, and the faster of the two is kept:
the search never ends slower than the fixed placement. ModelOpt's autotune makes the same
choice per region on TensorRT engines.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from ..graph.ort_cpu import release_memory
from ..graph.timing import Timer, seeded_batches, time_runners
from ..graph.weights import WeightFile
from ..progress import Bar
from .sensitivity import Evaluator

MIN_GAIN = 1.03  # a region is kept when the model runs at least 3 % faster with it (timing noise is about 1-2 %)
REPEATS = 5


@dataclass(frozen=True)
class SearchResult:
    """The nodes whose Q/DQ the search dropped, and the report's ``speed_search`` record."""

    dropped: frozenset[str]
    record: dict


def region_of(node: str, attention: bool) -> str:
    """``levels.2``, ``levels.2 attention``, ``patch_embed``: the top-level module of an
    exported node name (``/levels.2/blocks.0/attn/qkv/MatMul``), attention products apart."""
    parts = node.strip("/").split("/")
    module = parts[0] if len(parts) > 1 else "graph"
    return f"{module} attention" if attention else module


def regions(evaluator: Evaluator, excluded: frozenset[str]) -> dict[str, list[str]]:
    """Region -> the quantized nodes in it (layers and attention products), in graph order."""
    found: dict[str, list[str]] = {}
    for target in evaluator.targets:
        if target.node not in excluded:
            found.setdefault(region_of(target.node, False), []).append(target.node)
    for product in evaluator.attention:
        if product.node not in excluded:
            found.setdefault(region_of(product.node, True), []).append(product.node)
    order = {n.name: i for i, n in enumerate(evaluator.base.graph.node)}
    return dict(sorted(found.items(), key=lambda item: order.get(item[1][0], 0)))


def speed_search(
    evaluator: Evaluator,
    timer: Timer,
    store: WeightFile,
    excluded: frozenset[str],
    batch: int,
    input_shape: Sequence[int],
    dtype: np.dtype | type,
    fp32_path: Path,
    stream: TextIO | None = sys.stderr,
) -> SearchResult:
    """Drop each region whose Q/DQ does not make ``timer``'s runtime measurably faster at
    ``batch``; ``excluded`` nodes stay in float throughout."""
    inputs = seeded_batches([batch], input_shape, dtype)

    def runner(skip: frozenset[str], name: str):
        return timer.runner(store.save_view(evaluator.quantized(skip=skip), name))

    found = regions(evaluator, excluded)
    start = runner(excluded, "search_start.onnx")
    current, dropped, rows = start, frozenset[str](), []
    with Bar(len(found), "speed search", "regions", stream) as bar:
        for index, (region, nodes) in enumerate(found.items()):
            candidate = runner(excluded | dropped | set(nodes), f"search_{index}.onnx")
            seconds, _ = time_runners({"with": current, "without": candidate}, inputs, REPEATS)
            gain = seconds[batch]["without"] / seconds[batch]["with"]
            kept = gain >= MIN_GAIN
            rows.append(
                {
                    "region": region,
                    "nodes": len(nodes),
                    "seconds_with": seconds[batch]["with"],
                    "seconds_without": seconds[batch]["without"],
                    "gain": round(gain, 3),
                    "kept": kept,
                }
            )
            if not kept:
                dropped, current = dropped | set(nodes), candidate
            release_memory()
            bar.update()
    fp32 = timer.runner(fp32_path)
    final, _ = time_runners({"fixed": start, "searched": current, "fp32": fp32}, inputs, REPEATS)
    times = final[batch]
    if times["searched"] > times["fixed"]:  # never slower than the placement it started from
        dropped = frozenset()
    record = {
        "runtime": timer.runtime,
        "batch": batch,
        "min_gain": MIN_GAIN,
        "regions": rows,
        "kept": [r["region"] for r in rows if r["kept"]] if dropped else [r["region"] for r in rows],
        "dropped": [r["region"] for r in rows if not r["kept"]] if dropped else [],
        "seconds": {"fp32": times["fp32"], "fixed_placement": times["fixed"], "searched": times["searched"]},
        "chosen": "searched" if dropped else "fixed placement",
    }
    return SearchResult(dropped, record)
