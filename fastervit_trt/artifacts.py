"""Writing artifacts atomically: a reader sees the old file or the whole new one, never half.

Each writer takes the final path and a function that writes to a temporary path in the
same folder; the temporary file is renamed over the final one only once complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FasterViTTRTError


class OutputError(FasterViTTRTError):
    """An output that cannot be written (folder not writable, file exists without --force)."""


def check_writable(paths: list[Path], force: bool) -> None:
    """Fail before any work if an output exists (without ``force``) or its folder is unusable."""
    for path in paths:
        if path.exists() and not force:
            raise OutputError(f"{path}: already exists; pass --force to overwrite it")
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror}); "
                              "choose another with --output-dir") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{folder}: output folder is not writable; choose another with "
                              "--output-dir")


@contextmanager
def staged(path: Path, extra_suffixes: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it (and siblings) into place.

    ``extra_suffixes`` names companion files written next to the temporary one (e.g.
    ``.data`` for ONNX external weights), moved along with it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        mode = 0o666 & ~_umask()
        for suffix in extra_suffixes:
            companion = tmp_dir / (path.name + suffix)
            if companion.exists():
                os.chmod(companion, mode)
                os.replace(companion, path.parent / companion.name)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(path: Path, data: bytes) -> None:
    with staged(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, payload: dict) -> None:
    write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()

