"""Typed errors, checked on the source: the library raises subclasses of FasterViTTRTError that
say what kind of problem it is, never the base class bare, a built-in catch-all or an exit;
the CLI turns each into one line and exit code 1."""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest

from fastervit_trt import errors
from fastervit_trt.cli.common import EXIT_ERROR, run
from fastervit_trt.errors import FasterViTTRTError, OptionsError

PACKAGE = Path(__file__).resolve().parents[1] / "fastervit_trt"

# what a caller cannot tell apart (a bug, a bad option, a missing file) or what ends the process;
# argparse.ArgumentTypeError in the cli/ argument types and a bare ``raise`` stay allowed
UNTYPED = {
    "FasterViTTRTError",
    "ValueError",
    "RuntimeError",
    "SystemExit",
    "TypeError",
    "KeyError",
    "NotImplementedError",
    "Exception",
}

CATEGORIES = sorted(
    (cls for _, cls in inspect.getmembers(errors, inspect.isclass) if cls.__module__ == errors.__name__),
    key=lambda cls: cls.__name__,
)


def _raised_name(node: ast.Raise) -> str | None:
    """The class a ``raise`` names (``raise X``, ``raise X(...)``, ``raise mod.X(...)``);
    None for a bare ``raise`` or a caught exception raised again (``raise exc``)."""
    target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    if isinstance(target, ast.Attribute):
        return target.attr
    if isinstance(target, ast.Name) and target.id in UNTYPED:
        return target.id
    return None


def _untyped_raises() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                name = _raised_name(node)
                if name in UNTYPED:
                    found.append((where, node.lineno, name))
    return [f"{where}:{line}: raise {name}" for where, line, name in sorted(found)]


def test_the_library_raises_typed_errors_only():
    offenders = _untyped_raises()
    assert not offenders, (
        f"{len(offenders)} raises of the bare base class or an untyped built-in; raise the "
        "FasterViTTRTError subclass that names the kind of problem (fastervit_trt/errors.py):\n" + "\n".join(offenders)
    )


def test_the_scan_sees_each_untyped_form():
    source = (
        "def f(exc):\n"
        "    raise ValueError('a')\n"
        "    raise errors.FasterViTTRTError('b') from None\n"
        "    raise SystemExit\n"
        "    raise OptionsError('c')\n"
        "    raise argparse.ArgumentTypeError('d')\n"
        "    raise exc\n"
        "    raise\n"
    )
    raises = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Raise) and n.exc is not None]
    names = [_raised_name(n) for n in raises]
    assert [n for n in names if n in UNTYPED] == ["ValueError", "FasterViTTRTError", "SystemExit"]


def test_every_error_is_a_fastervit_error_and_in_the_module_tree():
    assert FasterViTTRTError in CATEGORIES and len(CATEGORIES) > 10
    for cls in CATEGORIES:
        assert issubclass(cls, FasterViTTRTError), cls
        assert cls.__doc__, f"{cls.__name__}: say what kind of problem it is"
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is missing from errors.py's tree"


def test_an_options_error_is_still_a_value_error():
    try:
        raise OptionsError("--instances must be at least 1, not 0")
    except ValueError as exc:  # callers written before the typed errors catch it as before
        assert str(exc) == "--instances must be at least 1, not 0"


@pytest.mark.parametrize("cls", CATEGORIES, ids=lambda cls: cls.__name__)
def test_the_cli_answers_each_kind_in_one_line(cls, capsys):
    def main(args: argparse.Namespace) -> int:
        raise cls(f"model.onnx: a {cls.__name__}; do this instead")

    code = run(main, lambda: argparse.ArgumentParser(prog="fastervit-test"), [], "fastervit-test")
    assert code == EXIT_ERROR == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: model.onnx: a {cls.__name__}; do this instead\n"
    assert captured.out == ""
