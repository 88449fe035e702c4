"""The README and docs/ pages: their relative links resolve and their commands parse.

Every line of a ```bash block that starts with `fastervit-<command>` (or
`.venv/bin/fastervit-<command>`) is parsed by that command's own argparse parser; nothing
is run. A page whose example stops parsing (a renamed or removed flag) fails here.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = sorted((ROOT / "bench" / "results").glob("*.md"))  # the benchmark tables the docs link
PAGES = [ROOT / "README.md", *DOCS, *RESULTS]
COMMANDS = ("export", "build", "infer", "bench", "inspect", "triton", "eval", "serve", "deepstream", "batch")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"^(?:\.venv/bin/)?fastervit-([a-z]+)(?:\s+(.*))?$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _links():
    for page in PAGES:
        fence = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            if fence:
                continue
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL (https:, mailto:) or an anchor on the same page
                yield page, number, target


def _commands():
    """(page, line number, command, arguments) for each command line of a bash block."""
    for page in PAGES:
        lines = page.read_text().splitlines()
        fence = None
        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if stripped.startswith("```"):
                fence = None if fence is not None else stripped[3:].strip()
                i += 1
                continue
            start = i
            i += 1
            if fence != "bash":
                continue
            while stripped.endswith("\\") and i < len(lines):
                stripped = stripped[:-1] + " " + lines[i].strip()
                i += 1
            # the commands chained after `bash tools/setup_venv.sh &&`
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", stripped):
                part = re.sub(r"\s+#.*$", "", part).strip()
                match = COMMAND.match(part)
                if match:
                    yield page, start + 1, match.group(1), match.group(2) or ""


LINKS = list(_links())
CASES = list(_commands())


def test_pages_exist():
    for name in (
        "export",
        "quantization",
        "engines",
        "runtime",
        "serving",
        "batch",
        "triton",
        "deepstream",
        "backbone",
        "your-own-model",
        "model-zoo",
        "benchmarks",
        "installing",
    ):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
    readme = (ROOT / "README.md").read_text()
    for page in DOCS:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_benchmark_tables_live_in_bench_results_and_are_linked():
    """Measured tables are kept beside the scripts that make them; a page links them."""
    assert len(RESULTS) >= 5, RESULTS
    linked = {(page.parent / target.split("#", 1)[0]).resolve() for page, _, target in LINKS}
    assert [_rel(r) for r in RESULTS if r.resolve() not in linked] == []
    timed = re.compile(r"^\|.*\b(ms|img/s|req/s|images/s|peak RSS|build s)\b")
    assert [
        f"{_rel(d)}:{n}" for d in DOCS for n, line in enumerate(d.read_text().splitlines(), 1) if timed.match(line)
    ] == []


def test_links_resolve():
    assert len(LINKS) >= 10, LINKS
    broken = []
    for page, number, target in LINKS:
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(f"{_rel(page)}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_enough_commands_found():
    assert len(CASES) >= 20, [f"{_rel(p)}:{n}" for p, n, _, _ in CASES]
    assert {c for _, _, c, _ in CASES} >= {"export", "build", "infer", "serve", "batch"}


@pytest.mark.parametrize(
    ("page", "number", "command", "rest"),
    CASES,
    ids=[f"{_rel(p)}:{n}:{c}" for p, n, c, _ in CASES],
)
def test_command_parses(page, number, command, rest):
    where = f"{_rel(page)}:{number}: fastervit-{command} {rest}"
    assert command in COMMANDS, f"{where}: no such command"
    module = importlib.import_module(f"fastervit_trt.cli.{command}")
    args = shlex.split(rest)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            module.parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None) or "--help" not in args and "-h" not in args:
            message = err.getvalue().strip().splitlines()
            pytest.fail(f"{where}\ndoes not parse: {message[-1] if message else exc.code}")
