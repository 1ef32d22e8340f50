"""Reading weight files of other projects and loading them with strict key accounting.

Used by every stage that starts from someone else's weights: the region-feature detector
(``features.butd``) and the vision-language models (``models``). It knows files and key bookkeeping,
never a model's key names: those live beside each model (its ``original_layouts``), as timm keeps a
``checkpoint_filter_fn`` beside each model.

Only ``torch.load(weights_only=True)`` and safetensors are used, so a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memeguard.errors import CheckpointError

# File names a checkpoint folder may hold, in the order they are tried (MMF, Hugging Face, safetensors).
CHECKPOINT_FILE_NAMES = ("model.pth", "pytorch_model.bin", "model.safetensors")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

KeyRule = Iterable[str] | Callable[[str], bool]
# What torch's weights-only unpickler names when a file asks for more than tensors.
_REFUSED_GLOBAL = re.compile(r"Unsupported (?:global|operand):? (?:GLOBAL )?[\w.]+")


def torch_load_weights_only(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: a file that asks to import or call
    anything (``builtins.open``, ``os.system``) is refused without running it, and the message does not
    repeat torch's advice to retry with ``weights_only=False``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _REFUSED_GLOBAL.search(str(exc))
        detail = found.group(0).rstrip(". ") if found else "it holds more than tensors"
        raise CheckpointError(f"{path}: refused to unpickle ({detail}); only weights are loaded") from None
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise CheckpointError(f"{path}: not a loadable torch checkpoint ({lines[0][:200]})") from None


def read_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` -> {name: tensor}; unwraps {'model': ...}/{'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    obj = torch_load_weights_only(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            if not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: contains no tensors")
    return state


def read_safetensors_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file -> {name: tensor}, with a one-line error for a missing or broken file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def resolve_checkpoint_file(
    path: str | os.PathLike[str], known_names: Iterable[str] = CHECKPOINT_FILE_NAMES
) -> Path:
    """A checkpoint file, or a folder holding one of ``known_names`` (first found) or a single weight file."""
    path, known_names = Path(path), tuple(known_names)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    for name in known_names:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(
        f"{path}: expected one of {list(known_names)} or a single {'/'.join(WEIGHT_SUFFIXES)} file, "
        f"found {[p.name for p in candidates] or 'none'}"
    )


def read_any_checkpoint(
    path: str | os.PathLike[str], known_names: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """A torch file (``.pth``/``.bin``/``.pt``), a ``.safetensors`` file, or a folder holding one.

    In a folder, ``known_names`` (an architecture's usual file names) are tried first, then
    :data:`CHECKPOINT_FILE_NAMES`, then the folder's only weight file.
    """
    file = resolve_checkpoint_file(path, (*known_names, *CHECKPOINT_FILE_NAMES))
    if file.suffix == ".safetensors":
        return read_safetensors_checkpoint(file)
    return read_torch_checkpoint(file)


def _key_predicate(rule: KeyRule) -> Callable[[str], bool]:
    """Exact key names or a predicate -> a predicate."""
    if callable(rule):
        return rule
    names = set(rule)
    return lambda key: key in names


def _listing(keys: list[str], limit: int = 20) -> str:
    """The first ``limit`` keys, an ellipsis when there are more, and the count."""
    return f"{keys[:limit]}{' ...' if len(keys) > limit else ''} ({len(keys)})"


def load_mapped_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    allowed_missing: KeyRule = (),
    allowed_unexpected: KeyRule = (),
) -> tuple[list[str], list[str]]:
    """Load ``state`` (already renamed to our keys) and fail on any unexplained key or shape mismatch.

    ``allowed_*`` are exact key names or predicates: the documented differences (new heads,
    pretraining heads we do not use, buffers such as ``position_ids``). A silent partial load is the
    worst outcome of a conversion, so everything else is a :class:`CheckpointError` naming ``source``.
    Returns (missing, unexpected), sorted, so callers can report them.
    """
    own = model.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shape_errors:
        raise CheckpointError(f"{source}: shape mismatch: " + "; ".join(shape_errors))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_missing = [k for k in missing if not _key_predicate(allowed_missing)(k)]
    bad_unexpected = [k for k in unexpected if not _key_predicate(allowed_unexpected)(k)]
    if bad_missing or bad_unexpected:
        raise CheckpointError(
            f"{source}: unexplained keys: missing {_listing(bad_missing)}, "
            f"unexpected {_listing(bad_unexpected)}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected
