"""Decode ahead: many encoded images through a model, the next batch decoding while the
engine runs this one, one result or error per image. ``InferenceModel.logits`` and
``fastervit-infer`` both run their image lists through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..errors import FasterViTTRTError
from .inputs import decoders


def _attempt(decode: Callable[[Any], np.ndarray], item: Any) -> np.ndarray | FasterViTTRTError:
    try:
        return decode(item)
    except FasterViTTRTError as exc:  # an unreadable image is that item's answer, not the run's end
        return exc


def decode_ahead(
    items: Sequence[Any], decode: Callable[[Any], np.ndarray], run: Callable[[np.ndarray], np.ndarray], step: int
) -> Iterator[np.ndarray | FasterViTTRTError]:
    """Per item of ``items``, in order: its row of ``run``'s output, or the error ``decode``
    raised for it. Items are decoded on the process's decode threads, ``step`` at a time
    (the model's largest batch); the decodable ones of each batch go to ``run`` together
    while the next batch decodes."""
    pool = decoders()

    def submit(chunk: Sequence[Any]) -> list[Future]:
        return [pool.submit(_attempt, decode, item) for item in chunk]

    pending = submit(items[:step])
    for start in range(0, len(items), step):
        decoded = [future.result() for future in pending]
        if start + step < len(items):
            pending = submit(items[start + step : start + 2 * step])
        good = [x for x in decoded if not isinstance(x, FasterViTTRTError)]
        rows = iter(run(np.stack(good))) if good else iter(())
        for x in decoded:
            yield x if isinstance(x, FasterViTTRTError) else next(rows)
