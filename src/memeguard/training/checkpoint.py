"""Resume state: everything a killed run needs to end with exactly the weights of an uninterrupted one.

One file, ``RUN_DIR/checkpoints/last.pt``, written atomically and read with ``weights_only=True``: model,
optimizer, scheduler, SWA, GradScaler, the python/numpy/torch(/cuda) RNG states, and the data position
(epoch, batch within the epoch, update count). The data order itself is a function of (seed, epoch), so the
position is all that is needed to continue it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memeguard.checkpoint_io import torch_load_weights_only
from memeguard.errors import CheckpointError
from memeguard.io import write_bytes_atomic
from memeguard.names import LAST_CHECKPOINT_FILE


@dataclass
class Position:
    """Where training stands: the next batch to run is batch ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0
    update: int = 0  # optimizer updates taken so far


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``weights_only`` loading accepts (tensors, ints, lists)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """vilio seeded torch, random and numpy at import; we do it at the start of each run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(directory: str | Path, position: Position, objects: dict[str, Any]) -> Path:
    """``objects``: name -> anything with ``state_dict()`` (or a plain state dict / None)."""
    states = {
        name: (obj.state_dict() if hasattr(obj, "state_dict") else obj) for name, obj in objects.items()
    }
    payload = {
        "format": 1,
        "position": {"epoch": position.epoch, "batch": position.batch, "update": position.update},
        "rng": rng_state(),
        "states": states,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(directory) / LAST_CHECKPOINT_FILE
    write_bytes_atomic(path, buffer.getvalue())
    return path


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The saved payload, or None when there is no checkpoint yet."""
    path = Path(directory) / LAST_CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        payload = torch_load_weights_only(path, map_location)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; delete it to start over") from None
    if not isinstance(payload, dict) or payload.get("format") != 1:
        raise CheckpointError(f"{path}: not a memeguard resume checkpoint")
    return payload


def restore(payload: dict[str, Any], objects: dict[str, Any]) -> Position:
    """Load every state into its object (skipping None objects), restore RNGs, return the position."""
    states = payload["states"]
    for name, obj in objects.items():
        if obj is None:
            continue
        if name not in states:
            raise CheckpointError(f"resume checkpoint has no state for {name!r}")
        obj.load_state_dict(states[name])
    set_rng_state(payload["rng"])
    return Position(**payload["position"])
