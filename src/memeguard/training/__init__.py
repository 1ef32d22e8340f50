"""Fine-tuning, task pretraining and prediction with vilio's recipe.

Names are imported lazily so that ``memeguard --help`` (which imports ``memeguard.training.cli``) stays
free of torch.
"""

from __future__ import annotations

from memeguard.lazy import lazy_exports

_EXPORTS = {
    "config": ("TrainConfig", "PretrainConfig", "TINY_DEFAULTS"),
    "loop": ("finetune", "RunResult"),
    "pretraining": ("pretrain",),
    "inference": ("predict",),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__ = lazy_exports(__name__, _EXPORTS)
