"""Step-by-step progress for long commands: one line per step with its wall time."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Steps:
    """Prints ``[2/5] tracing to ONNX ... 1.9 s`` lines and keeps each step's time."""

    def __init__(self, total: int, stream: TextIO | None = sys.stderr) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        self._write(f"[{self.done}/{self.total}] {title} ...")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._write(" failed\n")
            raise
        self.seconds[title] = time.perf_counter() - start
        self._write(f" {self.seconds[title]:.1f} s\n")

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()
