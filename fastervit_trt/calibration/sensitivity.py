"""Which layers INT8 hurts, and how many to leave in FP16 to meet an accuracy budget.

Sensitivity of a layer = the output degradation (logit cosine and top-1 agreement with the
FP32 graph, on held-out inputs) when only that layer is quantized, evaluated with ONNX
Runtime's plain Q/DQ arithmetic. The mixed-precision search leaves the k most sensitive
layers unquantized (they run in the base graph's FP16) and finds the smallest k whose
top-1 agreement drop stays within the budget, by bisection over k (agreement grows as more
layers are left out), so it costs about log2(layers) evaluations after the ranking.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import onnx

from ..compare import compare, compare_outputs
from ..graph.ort_eval import QDQ_CHUNK, InputSet, ort_logits
from ..graph.weights import WeightFile
from ..progress import Bar
from .qdq import AttentionProduct, QuantTarget, ResidualInput, insert_qdq, tensor_types


@dataclass
class Evaluator:
    """Runs Q/DQ variants of one base graph on fixed inputs against fixed FP32 logits."""

    base: onnx.ModelProto
    targets: list[QuantTarget]
    amax: dict[str, float]
    weights: Mapping[str, np.ndarray]
    inputs: InputSet
    reference: np.ndarray
    store: WeightFile | None = None  # where the graphs' external weights live
    fmt: str = "int8"  # or "fp8"
    sizes: dict[str, int] | None = None  # values per input of each output (default: logits only)
    residuals: list[ResidualInput] = field(default_factory=list)  # quantized with their Conv
    input_means: dict[str, np.ndarray] | None = None  # for bias correction (None: none)
    attention: list[AttentionProduct] = field(default_factory=list)  # both inputs quantized
    outputs: list[str] = field(default_factory=list)  # layer outputs quantized (with their layer)
    target: str = "tensorrt"  # the runtime the graph is typed for

    def __post_init__(self) -> None:
        self.types = tensor_types(self.base)  # once, not per variant
        self.producer = {o: n.name for n in self.base.graph.node for o in n.output}

    @property
    def feature_maps(self) -> bool:
        """Whether the outputs are a backbone's feature maps (compared one by one, no top-1)."""
        return bool(self.sizes) and list(self.sizes or {}) != ["logits"]

    def quantized(self, skip: AbstractSet[str] = frozenset(), only: AbstractSet[str] | None = None) -> onnx.ModelProto:
        """The base graph with Q/DQ on every layer and attention product (by node name) not in
        ``skip`` and, given ``only``, in it."""

        def taken(node: str) -> bool:
            return node not in skip and (only is None or node in only)

        chosen = [t for t in self.targets if taken(t.node)]
        layers = {t.node for t in chosen}
        return insert_qdq(
            self.base,
            chosen,
            self.amax,
            self.weights,
            self.types,
            self.store,
            self.fmt,
            self.residuals,
            self.input_means,
            [a for a in self.attention if taken(a.node)],
            [o for o in self.outputs if self.producer.get(o) in layers],
            self.target,
        )

    def measure(self, model: onnx.ModelProto) -> dict:
        """Mean cosine (of the worst output: a backbone's feature maps each count) and, for
        logits, top-1 agreement (%) of ``model`` against the FP32 reference."""
        source = self.store.save_view(model, "measured.onnx") if self.store else model.SerializeToString()
        outputs = ort_logits(source, self.inputs, optimize=False, images=QDQ_CHUNK)
        if self.feature_maps:
            each = compare_outputs(self.reference, outputs, self.sizes or {})
            return {"mean_cosine": min(c.mean_cosine for c in each.values()), "top1_agreement": None}
        report = compare(self.reference, outputs)
        return {"mean_cosine": report.mean_cosine, "top1_agreement": 100.0 * report.top1_agreement}


def layer_sensitivity(evaluator: Evaluator, stream: TextIO | None = sys.stderr) -> list[dict]:
    """One row per quantized layer, most sensitive (lowest cosine) first."""
    rows = []
    with Bar(len(evaluator.targets), "sensitivity", "layers", stream) as bar:
        for target in evaluator.targets:
            rows.append({"layer": target.node, **evaluator.measure(evaluator.quantized(only={target.node}))})
            bar.update()
    return sorted(rows, key=lambda r: (r["mean_cosine"], r["top1_agreement"]))


def fewest_exclusions(
    order: list[str], drop_with: Callable[[list[str]], float], budget: float
) -> tuple[int, list[dict]]:
    """Smallest k such that excluding ``order[:k]`` keeps ``drop_with(...) <= budget`` (bisection)."""
    trace, cache = [], {}

    def drop(k: int) -> float:
        if k not in cache:
            cache[k] = drop_with(order[:k])
            trace.append({"excluded": k, "top1_drop": cache[k]})
        return cache[k]

    if drop(0) <= budget:
        return 0, trace
    low, high = 0, len(order)  # drop(low) > budget, drop(high) == 0 (all excluded = the float graph)
    while high - low > 1:
        middle = (low + high) // 2
        if drop(middle) <= budget:
            high = middle
        else:
            low = middle
    return high, trace


def mixed_precision(evaluator: Evaluator, order: list[str], budget: float) -> dict:
    """Leave the first layers of ``order`` unquantized until the top-1 agreement drop <= ``budget``."""
    measured: dict[int, dict] = {}

    def drop_with(excluded: list[str]) -> float:
        result = evaluator.measure(evaluator.quantized(skip=set(excluded)))
        measured[len(excluded)] = result
        return 100.0 - result["top1_agreement"]

    k, trace = fewest_exclusions(order, drop_with, budget)
    final = measured.get(k) or {"mean_cosine": 1.0, "top1_agreement": 100.0}
    return {
        "budget_points": budget,
        "excluded": order[:k],
        "int8_layers": len(order) - k,
        "layers": len(order),
        "top1_agreement": final["top1_agreement"],
        "mean_cosine": final["mean_cosine"],
        "search": trace,
    }
