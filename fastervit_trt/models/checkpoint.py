"""Reading official FasterViT checkpoints safely and loading them strictly.

Accepted: ``.pth`` / ``.pth.tar`` / ``.pt`` and ``.safetensors``. PyTorch files are read
with ``weights_only=True``: tensors, plain containers and the few inert classes a training
checkpoint pickles for its settings (``TRAINING_GLOBALS``), never a callable, so loading
cannot run code. Files in PyTorch's zip format are memory-mapped: the optimizer state and
the weights not chosen are never read into memory.

The official checkpoints were written by timm's ``CheckpointSaver``: ``state_dict``,
``state_dict_ema``, ``optimizer``, ``args`` (an ``argparse.Namespace``), ``arch``,
``epoch``, ``metric``, ``version``. ``weights`` picks ``state_dict`` ("model", the default,
as the official validation script does without ``--use-ema``) or ``state_dict_ema``
("ema"); plain state dicts and ``model`` containers load too. ``module.`` (DDP) and
``encoder.`` (detection backbones) prefixes are stripped. A fine-tuned checkpoint says the
rest of what a deployment needs: the number of classes (the head's rows; none: a headless
feature extractor) and, in timm's ``args``, the model name and the eval transform it was
trained with (mean, std, interpolation, crop_pct, crop_mode).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, OptionsError
from ..preprocess import TRANSFORM_SETTINGS, check_transform, recorded_transform
from .configs import REGISTRY

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("model", "ema")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # a model folder's weights, in the order looked for
_CONTAINER_KEYS = {"model": ("state_dict", "model"), "ema": ("state_dict_ema", "model_ema")}
# Inert classes that timm's CheckpointSaver pickles for plain settings (train.py's parsed
# arguments). Extend only with data holders, never with anything that can be called to act.
TRAINING_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
# Buffers the reference model stores but which are functions of the architecture alone;
# this implementation recomputes them, so stale or missing copies are harmless.
_DERIVED_SUFFIXES = ("relative_coords_table", "relative_position_index", "relative_bias", "num_batches_tracked")
# The reference tokenizer registers its depth-wise conv twice; the second name is an alias.
_ALIAS_MARKER = ".global_tokenizer.pos_embed."
_ALIAS_TWIN = ".global_tokenizer.to_global_feature.pos."  # the name this implementation loads


@dataclass(frozen=True)
class Checkpoint:
    """The weights of one checkpoint file and where in it they came from."""

    path: Path
    state: dict[str, Tensor]
    key: str | None  # container key the weights were read from; None: the top level
    arch: str | None = None  # model name the training run recorded (``arch`` or ``args.model``)
    epoch: int | None = None
    args: dict = field(default_factory=dict)  # the training run's plain settings (timm's ``args``)
    class_names: tuple[str, ...] | None = None  # a model folder's config.json ``label_names``
    stored: int | None = None  # tensors the file holds (``state`` adds the twins of aliases it lacked)
    config: dict | None = None  # a model folder's config.json, as timm's save_for_hf wrote it

    @property
    def transform_source(self) -> str:
        """Where the recorded transform comes from, as the export's preprocess line names it."""
        return "model folder's config.json" if self.config is not None else "checkpoint's training args"

    @property
    def num_classes(self) -> int:
        """The classifier width the weights were trained with: the head's rows; 0 for a
        headless checkpoint (a feature extractor, as timm saves ``num_classes=0``)."""
        head = self.state.get("head.weight")
        return int(head.shape[0]) if head is not None else 0

    def transform(self) -> dict:
        """The eval-transform settings the training run recorded (timm's data-config names,
        as ``timm.data.resolve_data_config`` reads them from ``args``) that this toolkit's
        preprocessing applies; ``refused_transform`` says why it cannot apply the others."""
        refused = self.refused_transform()
        return {name: value for name, value in recorded_transform(self.args).items() if name not in refused}

    def refused_transform(self) -> dict[str, str]:
        """Recorded settings the preprocessing cannot apply (e.g. timm's "border" crop), with why."""
        refused = {}
        for name, value in recorded_transform(self.args).items():
            try:
                check_transform({name: value})
            except OptionsError as exc:
                refused[name] = str(exc)
        return refused

    def describe(self) -> dict:
        """What the export report says about the weights it loaded."""
        return {
            "path": str(self.path),
            "key": self.key,
            "tensors": self.stored if self.stored is not None else len(self.state),
            "parameters": sum(v.numel() for v in self.state.values()),
            "arch": self.arch,
            "epoch": self.epoch,
            "num_classes": self.num_classes,
            "transform": self.transform() or None,
            **({"config": self.config} if self.config is not None else {}),
        }


def read_checkpoint(path: str | Path, weights: str = "model") -> Checkpoint:
    """The weights in ``path`` (``weights``: "model" or "ema"), unwrapped and prefix-stripped;
    ``path`` may be a model folder (``read_model_folder``)."""
    path = Path(path)
    if weights not in WEIGHT_CHOICES:
        raise OptionsError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, not {weights!r}")
    if path.is_dir():
        return read_model_folder(path, weights)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return _unwrap(raw, path, weights)


def read_model_folder(folder: Path, weights: str = "model") -> Checkpoint:
    """A timm / Hugging Face model folder, as ``timm.models.save_for_hf`` and ``push_to_hf_hub``
    write it (a local copy of a hub repository): ``config.json`` (``architecture``,
    ``num_classes``, ``label_names``, ``pretrained_cfg`` with mean, std, interpolation,
    crop_pct, crop_mode) beside ``model.safetensors`` or ``pytorch_model.bin``. The variant,
    class names and eval transform come from the config, the weights from the file."""
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder}: a folder but no config.json in it; --checkpoint takes a weights file or a timm / Hugging "
            f"Face model folder ({' or '.join(HF_WEIGHTS)} beside config.json)"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({exc}); re-save the model folder") from None
    weights_path = next((folder / name for name in HF_WEIGHTS if (folder / name).is_file()), None)
    if weights_path is None or not isinstance(config, dict):
        raise CheckpointError(f"{folder}: no {' or '.join(HF_WEIGHTS)} beside config.json; re-save the model folder")
    read = _read_safetensors if weights_path.suffix == ".safetensors" else _read_torch
    loaded = _unwrap(read(weights_path), weights_path, weights)
    pretrained = config.get("pretrained_cfg")
    recorded: dict = pretrained if isinstance(pretrained, dict) else {}
    names = config.get("label_names")
    return replace(
        loaded,
        path=folder,
        arch=config.get("architecture") if isinstance(config.get("architecture"), str) else loaded.arch,
        args={k: v for k, v in recorded.items() if k in TRANSFORM_SETTINGS},
        class_names=tuple(map(str, names)) if isinstance(names, list) and names else None,
        config=config,
    )


def read_state_dict(path: str | Path, weights: str = "model") -> dict[str, Tensor]:
    """The flat name -> tensor dict of ``read_checkpoint``."""
    return read_checkpoint(path, weights).state


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); re-download or re-save the checkpoint"
        ) from None


def _read_torch(path: Path) -> dict:
    mmap = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be mapped
    try:
        with torch.serialization.safe_globals(list(TRAINING_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unpickling failed"
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: {_unsafe_globals(path)}; re-save the weights "
                "alone from a trusted environment (torch.save(torch.load(f, "
                "weights_only=False)['state_dict'], 'weights.pth')) or convert "
                "them to .safetensors"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); re-download it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({reason}); re-download it") from None


def _unsafe_globals(path: Path) -> str:
    """Which pickled globals make ``path`` unsafe, listed without loading (zip format only)."""
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in TRAINING_GLOBALS}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
    except Exception:  # noqa: BLE001 - legacy format: the names cannot be listed
        names = []
    if not names:
        return "the file pickles objects other than tensors and settings, which could run code"
    return (
        f"the file pickles {', '.join(names)}, which loading would have to call (only tensors, "
        "containers and argparse.Namespace settings are read)"
    )


def _unwrap(raw: object, path: Path, weights: str) -> Checkpoint:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    key = _container(raw, weights)
    if key is None and weights == "ema":
        raise CheckpointError(f"{path}: holds no EMA weights (keys: {', '.join(map(str, raw))}); use --weights model")
    if key is None and not any(isinstance(v, Tensor) for v in raw.values()):
        key = _container(raw, "ema")  # only EMA weights were saved: they are the model
        if key is not None:
            log.warning("%s: no model weights, using the EMA weights under %r", path, key)
    tensors = raw[key] if key is not None else raw
    state = {k.removeprefix("module."): v for k, v in tensors.items() if isinstance(v, Tensor)}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not state:
        raise CheckpointError(f"{path}: no tensors found; is this a model checkpoint?")
    stored, state = len(state), fill_aliases(state)
    args = _plain_args(raw.get("args")) if key is not None else {}
    # timm's CheckpointSaver records the class ("fastervit") as ``arch``, the run's model name in args
    names = [n for n in (raw.get("arch"), args.get("model")) if key is not None and isinstance(n, str)]
    arch = next((n for n in names if n in REGISTRY), names[0] if names else None)
    epoch = raw.get("epoch") if key is not None and isinstance(raw.get("epoch"), int) else None
    return Checkpoint(path, state, key, arch, epoch, args, stored=stored)


def fill_aliases(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with each missing twin of an aliased tensor taken from the other name: the
    reference tokenizer's depth-wise conv is registered as ``...global_tokenizer.pos_embed.*``
    and ``...global_tokenizer.to_global_feature.pos.*``, one tensor under two names, and
    safetensors' ``save_model`` keeps only one of them (``save_file`` refuses shared tensors)."""
    twins = (_ALIAS_MARKER, _ALIAS_TWIN)
    filled = dict(state)
    for name, tensor in state.items():
        for mine, other in (twins, twins[::-1]):
            if mine in name and name.replace(mine, other) not in state:
                filled[name.replace(mine, other)] = tensor
    return filled


def _plain_args(args: object) -> dict:
    """A training run's ``args`` (timm saves an ``argparse.Namespace``; some runs a dict) as a
    dict of its plain values."""
    values = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    plain = (str, int, float, bool, type(None), list, tuple)
    return {str(k): v for k, v in values.items() if isinstance(v, plain)}


def _container(raw: dict, weights: str) -> str | None:
    return next((k for k in _CONTAINER_KEYS[weights] if isinstance(raw.get(k), dict)), None)


def _comparable(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Names and shapes that must match: learned weights and BN statistics."""
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith(_DERIVED_SUFFIXES) and _ALIAS_MARKER not in k}


def mismatch(
    model: nn.Module, state: dict[str, Tensor], unused: frozenset[str] = frozenset()
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) parameter names of ``state`` against ``model``.

    ``unused`` names weights a checkpoint may carry that this model does not use by design
    (see ``create_model``); they are not counted as unexpected.
    """
    expected = _comparable(model.state_dict())
    given = _comparable(state)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected and k not in unused]
    wrong = [f"{k} {given[k]} vs {expected[k]}" for k in expected if k in given and given[k] != expected[k]]
    return missing, unexpected, wrong


def load_into(
    model: nn.Module,
    state: dict[str, Tensor],
    source: str | Path,
    suggest: Callable[[], str | None] = lambda: None,
    unused: frozenset[str] = frozenset(),
    name: str = "the model",
) -> None:
    """Copy ``state`` into ``model`` (the variant ``name``), refusing any mismatch (derived
    buffers excepted). ``suggest`` is asked, only on a mismatch, for the variant the
    checkpoint would fit: the refusal then names it in one short line.
    """
    missing, unexpected, wrong = mismatch(model, state, unused)
    if missing or unexpected or wrong:
        fit = suggest()
        if fit and fit != name:
            raise CheckpointError(f"{source}: these weights are {fit}'s, not {name}'s; pass --variant {fit}")
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
                parts.append(f"{len(names)} {label}: {', '.join(names[:5])}{more}")
        hint = f"; it fits {fit}" if fit else "; no registered variant fits it"
        raise CheckpointError(f"{source}: checkpoint does not match the model ({'; '.join(parts)}){hint}")
    ignored = sorted(unused & state.keys())
    if ignored:
        log.info("%s: %d weights unused at this resolution (e.g. %s)", source, len(ignored), ignored[0])
    # assign: the model takes the checkpoint's (memory-mapped) tensors instead of a second copy
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own}, strict=False, assign=True)
