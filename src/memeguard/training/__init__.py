"""Fine-tuning, task pretraining and prediction with vilio's recipe.

Names are imported lazily so that ``memeguard --help`` (which imports ``memeguard.training.cli``) stays
free of torch.
"""

from __future__ import annotations

from memeguard.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
