"""Which files a batch run reads: folders (recursively), globs and files, on one file system
that pyarrow opens (``pyarrow.fs.FileSystem.from_uri``: s3://, gs://, hdfs://, ...; plain
paths are local)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..preprocess import IMAGE_SUFFIXES

GLOB_CHARACTERS = "*?"


@dataclass(frozen=True)
class ImageFile:
    """One input: ``path`` as written in the output (with its URI scheme), ``location`` as
    its file system names it."""

    path: str
    location: str


def open_uri(uri: str) -> tuple[Any, str]:
    """(file system, path on it) of a URI or local path."""
    from pyarrow import fs

    if "://" not in uri:
        return fs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{uri}: cannot open its file system ({exc})") from None


def glob_pattern(pattern: str) -> re.Pattern:
    """A glob as a regular expression over whole paths: ``*`` and ``?`` within one folder
    name, ``**/`` any folders (none included)."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def _is_image(location: str) -> bool:
    return os.path.splitext(location)[1].lower() in IMAGE_SUFFIXES


def _list(filesystem: Any, uri: str, location: str) -> list[str]:
    """Locations ``uri`` names: the image files under a folder or matching a glob, or the file."""
    from pyarrow import fs

    if any(c in location for c in GLOB_CHARACTERS):
        wild = min(location.index(c) for c in GLOB_CHARACTERS if c in location)
        base = location[: location.rfind("/", 0, wild) + 1] or "/"
        matches = glob_pattern(location).fullmatch
        found = [
            info.path
            for info in filesystem.get_file_info(fs.FileSelector(base.rstrip("/") or "/", recursive=True))
            if info.type == fs.FileType.File and matches(info.path) and _is_image(info.path)
        ]
        if not found:
            raise InputError(f"{uri}: no image files match ({', '.join(IMAGE_SUFFIXES)})")
        return found
    info = filesystem.get_file_info(location)
    if info.type == fs.FileType.File:
        return [location]
    if info.type == fs.FileType.Directory:
        selector = fs.FileSelector(location, recursive=True)
        return [i.path for i in filesystem.get_file_info(selector) if i.type == fs.FileType.File and _is_image(i.path)]
    raise InputError(f"{uri}: no such file or folder")


def list_images(inputs: Sequence[str]) -> tuple[Any, list[ImageFile]]:
    """The file system of ``inputs`` and their image files, sorted, each once."""
    filesystem, found = None, dict[str, ImageFile]()
    for uri in inputs:
        here, location = open_uri(uri)
        if filesystem is None:
            filesystem = here
        elif not filesystem.equals(here):
            raise InputError(f"{uri}: on another file system than {inputs[0]}; run each file system apart")
        start = uri.find(location) if "://" in uri else 0
        prefix = uri[:start] if start > 0 else ""  # s3://bucket/key is bucket/key on its file system
        for path in _list(here, uri, location):
            found.setdefault(prefix + path, ImageFile(prefix + path, path))
    return filesystem, [found[path] for path in sorted(found)]
