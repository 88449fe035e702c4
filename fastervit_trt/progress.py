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


class Bar:
    """A progress bar on a terminal (tqdm, when installed); plain lines elsewhere, about every
    tenth of the work, so logs and CI output hold no carriage returns."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None = sys.stderr) -> None:
        self.total, self.desc, self.unit, self.stream, self.count = total, desc, unit, stream, 0
        self._next, self._bar = 0, None
        if stream is not None and getattr(stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit=unit, desc=desc, file=stream, dynamic_ncols=True, mininterval=1.0)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.stream is not None and (self.count >= self._next or self.count == self.total):
            self.stream.write(f"  {self.desc}: {self.count}/{self.total} {self.unit}\n")
            self.stream.flush()
            self._next = self.count + max(1, self.total // 10)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
