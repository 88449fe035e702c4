#!/usr/bin/env python3
"""Repair the two syntax slips in tensorrt-stubs' tensorrt.pyi that stop mypy from reading it:
a parameter named ``in`` (a Python keyword; renamed ``in_``) and parameters without a
default after defaulted ones (given ``= ...``). Edits the file in place.

  python tools/fix_trt_stubs.py STUBS/tensorrt_bindings/tensorrt.pyi
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

KEYWORD_PARAMETER = re.compile(r"(?<=[(,] )in(?=: )|(?<=\()in(?=: )")


def _split(params: str) -> list[str]:
    """Top-level comma split of a parameter list (brackets may hold commas)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(params):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(params[start:i].strip())
            start = i + 1
    parts.append(params[start:].strip())
    return [p for p in parts if p]


def fix_line(line: str) -> str:
    match = re.match(r"^(\s*def \w+\()(.*)(\) -> .*)$", line)
    if not match:
        return line
    head, params, tail = match.groups()
    fixed, defaulted = [], False
    for param in _split(KEYWORD_PARAMETER.sub("in_", params)):
        if "=" in param:
            defaulted = True
        elif defaulted and not param.startswith("*"):
            param += " = ..."
        fixed.append(param)
    return head + ", ".join(fixed) + tail


def main(path: str) -> int:
    stub = Path(path)
    lines = stub.read_text().splitlines(keepends=True)
    stub.write_text("".join(fix_line(line.rstrip("\n")) + line[len(line.rstrip("\n")) :] for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
