"""Options dataclasses back to the command-line flags that make them: the other direction of
``cli/common.add_options`` / ``options_from``, from the same field metadata.

An export records ``to_argv(options)`` in its metadata, and every re-export command the toolkit
prints (``sidecar.export_command``: DeepStream's, the builder's) starts from it, so advice keeps
every setting of the export it follows and changes only the flags it names.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

# what to do with existing outputs is the next command's choice; where the export went is where its
# file is (an export is byte-identical in any folder; advice names the folder the file is in)
NOT_RECORDED = ("--force", "--output-dir")


def to_argv(options: Any) -> list[str]:
    """The flags that give a fresh parse ``options``' values where they differ from the
    defaults (a nested options group's too); fields without a flag are left out."""
    argv: list[str] = []
    for option in fields(options):
        value, meta = getattr(options, option.name), option.metadata
        if "group" in meta and is_dataclass(value):
            argv += to_argv(value)
            continue
        if "flag" not in meta or value == option.default or meta["flag"] in NOT_RECORDED:
            continue
        argv += [meta["flag"], *_values(value, meta, option.default)]
    return argv


def _values(value: Any, meta: Any, default: Any) -> list[str]:
    """``value`` as the words after its flag: none for a switch, ``on``/``off`` for a boolean
    that defaults on, ``1,8,32`` for a parsed tuple, one word per value for ``nargs``."""
    if isinstance(value, bool):
        return [] if default is False else ["on" if value else "off"]
    if "parse" in meta:
        return [",".join(map(str, value))]
    if isinstance(value, (tuple, list)):
        return [_word(v) for v in value]
    return [_word(value)]


def _word(value: Any) -> str:
    return str(value) if not isinstance(value, float) else f"{value:g}" if float(f"{value:g}") == value else repr(value)


def replace_flags(argv: list[str], changes: dict[str, list[str] | None]) -> list[str]:
    """``argv`` with each flag of ``changes`` given the new words in its place (appended where
    absent; ``None`` drops the flag)."""
    groups: list[list[str]] = []
    for word in argv:
        if word.startswith("--"):
            groups.append([word])
        elif groups:
            groups[-1].append(word)
    out = []
    for group in groups:  # a changed flag keeps its place
        words = changes.get(group[0], group[1:])
        out += [group[0], *words] if words is not None else []
    present = {group[0] for group in groups}
    for flag, words in changes.items():
        if flag not in present and words is not None:
            out += [flag, *words]
    return out
