"""The one-way imports of docs/architecture.md, checked on the source: a forbidden import fails here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastervit_trt"
EXPORT_DRIVERS = ("fastervit_trt.export.pipeline", "fastervit_trt.export.quantized", "fastervit_trt.export.stages")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str]]:
    """(absolute module, kind) for every import in ``path``: ``eager`` (at import time),
    ``lazy`` (inside a function) or ``typing`` (under ``if TYPE_CHECKING:``, never run)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    kinds: dict[int, str] = {}
    for node in ast.walk(tree):
        kind = (
            "lazy"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            else "typing"
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            else None
        )
        if kind:
            kinds.update({id(child): kinds.get(id(child), kind) for child in ast.walk(node) if child is not node})
    found = []
    for node in ast.walk(tree):
        kind = kinds.get(id(node), "eager")
        if isinstance(node, ast.Import):
            found += [(alias.name, kind) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(module, kind)] + [(f"{module}.{alias.name}", kind) for alias in node.names]
    return found


MODULES = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _offenders(importer_prefix: str, forbidden: tuple[str, ...], eager_only: bool = False) -> list[str]:
    """``importer -> target`` for each import of a forbidden module (``eager_only``: at import time)."""
    return sorted(
        f"{module} imports {target}"
        for module, imports in MODULES.items()
        if module == importer_prefix or module.startswith(importer_prefix + ".")
        for target, kind in imports
        if (kind == "eager" or not eager_only) and any(target == f or target.startswith(f + ".") for f in forbidden)
    )


def test_the_checker_sees_the_imports_it_guards():
    """The rules below would pass vacuously if the parser missed imports."""
    assert ("fastervit_trt.export.quantized", "eager") in MODULES["fastervit_trt.export.pipeline"]
    assert ("fastervit_trt.calibration.cache", "eager") in MODULES["fastervit_trt.engines.calibrator"]
    assert ("torch", "lazy") in MODULES["fastervit_trt.runtime.cuda"]
    assert ("fastervit_trt.runtime.model.InferenceModel", "typing") in MODULES["fastervit_trt.runtime.batcher"]


def test_the_runtime_needs_no_torch_and_no_exporter():
    """A service installs the runtime without PyTorch: torch is only ever imported lazily, where a
    GPU path uses it when present; the model zoo, exporter and calibration are never imported."""
    assert _offenders("fastervit_trt.runtime", ("torch", "torchvision"), eager_only=True) == []
    assert (
        _offenders(
            "fastervit_trt.runtime",
            ("fastervit_trt.models", "fastervit_trt.export", "fastervit_trt.calibration", "fastervit_trt.engines"),
        )
        == []
    )


def test_nothing_imports_the_cli():
    outside = {m: i for m, i in MODULES.items() if not m.startswith("fastervit_trt.cli")}
    assert [
        f"{m} imports {t}"
        for m, imports in outside.items()
        for t, _ in imports
        if t == "fastervit_trt.cli" or t.startswith("fastervit_trt.cli.")
    ] == []


# docs/architecture.md's layers, lowest first: a module imports only its own folder, the base
# and layers below its own (never one beside it). Top-level modules not named are the base.
LAYERS = (
    ("models", "graph", "runtime"),
    ("calibration",),
    ("export",),
    ("engines",),
    ("batch", "deepstream", "evaluate", "inspect", "polygraphy_data", "serve", "triton", "triton_preprocess"),
    ("cli",),
)
RANK = {group: rank + 1 for rank, groups in enumerate(LAYERS) for group in groups}


def _group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "base"


def _rank(module: str) -> int:
    return RANK.get(_group(module), 0)


def _package_module(target: str) -> str | None:
    """The package module an import target names (``pkg.mod.Name`` -> ``pkg.mod``), if any."""
    while target not in MODULES and "." in target:
        target = target.rpartition(".")[0]
    return target if target in MODULES and target != "fastervit_trt" else None


def test_every_layer_is_named():
    """A new folder or module must be placed in a layer (or the base) on purpose."""
    groups = {_group(m) for m in MODULES if m.count(".")}
    base = sorted(g for g in groups if g not in RANK)
    assert all(f"fastervit_trt.{g}" in MODULES and not (PACKAGE / g).is_dir() for g in base), base


def test_no_import_runs_up_or_across_a_layer():
    """Data flows one way: no module imports a layer above its own, or another folder of its own layer."""
    offenders = sorted(
        f"{module} imports {target}"
        for module, imports in MODULES.items()
        if module.count(".")
        for target in {_package_module(t) for t, kind in imports if kind != "typing"} - {None}
        if _group(target) != _group(module)
        and (_rank(target) > _rank(module) or (_rank(target) == _rank(module) and _rank(module) > 0))
    )
    assert offenders == []


def test_calibration_keeps_to_algorithms():
    """Calibration algorithms sit below the export drivers and the engine builder: they import
    nothing of ``export/`` (its graph helpers live in ``graph/``) nor the engines."""
    assert (
        _offenders("fastervit_trt.calibration", (*EXPORT_DRIVERS, "fastervit_trt.export", "fastervit_trt.engines"))
        == []
    )


def test_models_and_graph_helpers_import_nothing_above_them():
    above = ("fastervit_trt.export", "fastervit_trt.calibration", "fastervit_trt.engines", "fastervit_trt.runtime")
    assert _offenders("fastervit_trt.models", above) == []
    assert _offenders("fastervit_trt.graph", (*above, "fastervit_trt.models")) == []


def test_no_circular_imports_in_the_package():
    """No module's imports (eager or lazy; typing-only ones never run) lead back to it. Importing
    one's own parent package does not count: Python runs it before the module anyway."""
    graph = {
        m: {t for t, kind in imports if kind != "typing" and t in MODULES and not (m + ".").startswith(t + ".")}
        for m, imports in MODULES.items()
    }

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for following in graph[todo.pop()] - seen:
                seen.add(following)
                todo.append(following)
        return seen

    assert sorted(m for m in graph if m in reaches(m)) == []


@pytest.mark.parametrize(
    "module",
    [
        "fastervit_trt.runtime",
        "fastervit_trt.runtime.tensorrt_backend",
        "fastervit_trt.runtime.batcher",
        "fastervit_trt.sidecar",
    ],
)
def test_importing_the_runtime_loads_no_torch(module):
    """The same rule, observed: a fresh interpreter importing the runtime has no torch loaded."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_quantized_formats_sit_in_the_base():
    """Calibration, the export drivers, the engines, the runtime, DeepStream and inspect all read
    ``quant_formats``: it imports nothing of the package but the errors."""
    assert [
        t
        for t, _ in MODULES["fastervit_trt.quant_formats"]
        if t.startswith("fastervit_trt.") and not (t + ".").startswith("fastervit_trt.errors.")
    ] == []
