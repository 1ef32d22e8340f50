"""Shared helpers for loading original checkpoints: safe reading, prefix handling, strict key accounting.

Per-architecture converters (beside each model) map original key names onto ours and call
:func:`load_mapped_state_dict`, which fails unless the missing/unexpected keys are exactly the
documented ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from memeguard.errors import CheckpointError


def read_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` -> flat {name: tensor}; unwraps {'model': ...}/{'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a loadable weights-only torch checkpoint ({exc})") from exc
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


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that starts with it; other keys are kept as they are."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def unwrap_vilio_finetuned(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vilio's ``LASTtrain.pth``: drop SWA's ``n_averaged`` and strip ``module.`` (``HM.load``)."""
    return {k.replace("module.", "", 1) if k.startswith("module.") else k: v
            for k, v in state.items() if k != "n_averaged"}


def load_mapped_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    allowed_missing: Iterable[str] | Callable[[str], bool] = (),
    allowed_unexpected: Iterable[str] | Callable[[str], bool] = (),
) -> tuple[list[str], list[str]]:
    """Load ``state`` (already renamed to our keys) and fail on any unexplained key or shape mismatch.

    ``allowed_*`` are exact key names or predicates: the documented differences (new heads,
    pretraining heads we do not use, buffers such as ``position_ids``).
    Returns (missing, unexpected) so callers can report them.
    """

    def allow(rule: Iterable[str] | Callable[[str], bool]) -> Callable[[str], bool]:
        if callable(rule):
            return rule
        names = set(rule)
        return lambda key: key in names

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
    bad_missing = [k for k in missing if not allow(allowed_missing)(k)]
    bad_unexpected = [k for k in unexpected if not allow(allowed_unexpected)(k)]
    if bad_missing or bad_unexpected:
        raise CheckpointError(
            f"{source}: unexplained keys: missing {bad_missing[:20]}{' ...' if len(bad_missing) > 20 else ''}"
            f" ({len(bad_missing)}), unexpected {bad_unexpected[:20]}"
            f"{' ...' if len(bad_unexpected) > 20 else ''} ({len(bad_unexpected)})"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


def resolve_checkpoint_file(path: str | Path, known_names: tuple[str, ...]) -> Path:
    """A checkpoint file, or a folder holding one of ``known_names`` (first found) or a single .pt/.pth/.bin."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    for name in known_names:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.suffix in {".pt", ".pth", ".bin"} and p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(
        f"{path}: expected one of {list(known_names)} or a single .pt/.pth/.bin file, "
        f"found {[p.name for p in candidates] or 'none'}"
    )


def read_any_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A torch file (``.pth``/``.bin``/``.pt``), a ``.safetensors`` file, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.pth", "pytorch_model.bin", "model.safetensors"):
            if (path / name).is_file():
                return read_any_checkpoint(path / name)
        raise CheckpointError(f"{path}: no model.pth, pytorch_model.bin or model.safetensors in this folder")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file not found")
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    return read_torch_checkpoint(path)
