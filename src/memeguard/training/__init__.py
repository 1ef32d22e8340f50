"""Fine-tuning, task pretraining and prediction with vilio's recipe.

Names are imported lazily so that ``memeguard --help`` (which imports ``memeguard.training.cli``) stays
free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "memeguard.training.config",
    "PretrainConfig": "memeguard.training.config",
    "TINY_DEFAULTS": "memeguard.training.config",
    "finetune": "memeguard.training.loop",
    "RunResult": "memeguard.training.loop",
    "pretrain": "memeguard.training.pretraining",
    "predict": "memeguard.training.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'memeguard.training' has no attribute {name!r}")
