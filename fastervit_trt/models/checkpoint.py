"""Reading official FasterViT checkpoints safely and loading them strictly.

Accepted: ``.pth`` / ``.pth.tar`` / ``.pt`` (read with ``weights_only=True``: tensors and
plain containers only, never pickled code) and ``.safetensors``. The weights may sit at
top level or under ``state_dict`` / ``model`` / ``state_dict_ema``; ``module.`` (DDP) and
``encoder.`` (detection backbones) prefixes are stripped.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema")
# Buffers the reference model stores but which are functions of the architecture alone;
# this implementation recomputes them, so stale or missing copies are harmless.
_DERIVED_SUFFIXES = ("relative_coords_table", "relative_position_index", "relative_bias",
                     "num_batches_tracked")
# The reference tokenizer registers its depth-wise conv twice; the second name is an alias.
_ALIAS_MARKER = ".global_tokenizer.pos_embed."


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights in ``path`` as a flat name -> tensor dict, unwrapped and prefix-stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return _unwrap(raw, path)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); "
                              "re-download or re-save the checkpoint") from None


def _read_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unpickling failed"
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors, which "
                "could run code when loaded; re-save it with torch.save(model.state_dict()) "
                "from a trusted environment, or convert it to .safetensors") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); "
                              "re-download it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({reason}); "
                              "re-download it") from None


def _unwrap(raw: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    for key in _CONTAINER_KEYS:
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    state = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, Tensor)}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not state:
        raise CheckpointError(f"{path}: no tensors found; is this a model checkpoint?")
    return state


def _comparable(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Names and shapes that must match: learned weights and BN statistics."""
    return {k: tuple(v.shape) for k, v in state.items()
            if not k.endswith(_DERIVED_SUFFIXES) and _ALIAS_MARKER not in k}


def mismatch(model: nn.Module, state: dict[str, Tensor], unused: frozenset[str] = frozenset()
             ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) parameter names of ``state`` against ``model``.

    ``unused`` names weights a checkpoint may carry that this model does not use by design
    (see ``create_model``); they are not counted as unexpected.
    """
    expected = _comparable(model.state_dict())
    given = _comparable(state)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected and k not in unused]
    wrong = [f"{k} {given[k]} vs {expected[k]}" for k in expected
             if k in given and given[k] != expected[k]]
    return missing, unexpected, wrong


def load_into(model: nn.Module, state: dict[str, Tensor], source: str | Path,
              suggest: Callable[[], str | None] = lambda: None,
              unused: frozenset[str] = frozenset()) -> None:
    """Copy ``state`` into ``model``, refusing any mismatch (derived buffers excepted).

    ``suggest`` is asked, only on a mismatch, for the variant the checkpoint would fit.
    """
    missing, unexpected, wrong = mismatch(model, state, unused)
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
                parts.append(f"{len(names)} {label}: {', '.join(names[:5])}{more}")
        fit = suggest()
        hint = f"; it fits {fit}" if fit else "; no registered variant fits it"
        raise CheckpointError(f"{source}: checkpoint does not match the model ({'; '.join(parts)})"
                              f"{hint}")
    ignored = sorted(unused & state.keys())
    if ignored:
        log.info("%s: %d weights unused at this resolution (e.g. %s)", source, len(ignored), ignored[0])
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=False)
