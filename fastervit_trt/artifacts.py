"""Writing artifacts atomically: a reader sees the old file or the whole new one, never half.

Each writer takes the final path and a function that writes to a temporary path in the
same folder; the temporary file is renamed over the final one only once complete. The
temporary folders carry the writer's process id, so one left by a killed process (out of
memory, say) is removed by the next writer of the same file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def paths_of(options: object, *fields: str) -> None:
    """Make the named fields of a frozen options dataclass ``Path`` objects (``str`` welcome)."""
    for name in fields:
        value = getattr(options, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(options, name, Path(value))


def check_writable(paths: list[Path], force: bool) -> None:
    """Fail before any work if an output exists (without ``force``) or its folder cannot be
    created or written; creates nothing (the writers make their folders when they write)."""
    for path in paths:
        if path.exists() and not force:
            raise OutputError(f"{path}: already exists; pass --force to overwrite it")
        folder = path.parent
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if existing == folder and folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(f"{folder}: output folder is not writable; choose another with --output-dir")
        elif not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            why = "is a file" if not existing.is_dir() else "is not writable"
            raise OutputError(
                f"{folder}: cannot create the output folder ({existing} {why}); choose another with --output-dir"
            )


def check_same_weights(record: Path, weights: str, made: Path) -> None:
    """Refuse to replace ``made`` (an export or engine) when its JSON ``record`` (report or
    sidecar) says it was made from other weights than ``weights`` (``weights_sha256``), even with
    --force: two models of one variant would otherwise overwrite each other. A record that
    predates the field, or is unreadable, leaves the decision to ``check_writable``."""
    try:
        recorded = json.loads(record.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if made.exists() and recorded and recorded != weights:
        raise OutputError(
            f"{made}: already holds a model made from other weights ({recorded[:19]}..., this export: "
            f"{weights[:19]}...); write this one beside it with --output-dir DIR or --name STEM "
            "(--force replaces only an export of the same weights)"
        )


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place."""
    tmp_dir = private_folder(path.parent, f".{path.name}.")
    tmp = tmp_dir / path.name
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def private_folder(parent: Path, prefix: str) -> Path:
    """A new hidden folder named ``<prefix><pid>-<random suffix>`` in ``parent``; folders with
    that prefix left by processes that no longer run are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f"{glob.escape(prefix)}*-*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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
