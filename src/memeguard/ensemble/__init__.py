"""Ensembling: vilio's seed averaging, mean/power/rank blends, simplex weight search and two-pass loop,
as pure functions over id-aligned predictions, plus ``ensemble_folder`` for a folder of CSVs.

Names are imported lazily: ``memeguard --help`` imports ``memeguard.ensemble.cli`` and should not pay
for scipy and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "METHODS": "method_names",
    "METHOD_ALIASES": "method_names",
    "TEST_LABEL_RULES": "method_names",
    "canonical_method": "method_names",
    "SPLITS": "folder",
    "EnsembleResult": "folder",
    "decision_threshold": "folder",
    "ensemble_folder": "folder",
    "resolve_families": "folder",
    "scan_folder": "folder",
    "fast_auroc": "methods",
    "mean_average": "methods",
    "minmax_normalize": "methods",
    "power_average": "methods",
    "rank_average": "methods",
    "simple_average": "methods",
    "spearman_matrix": "methods",
    "weighted_average": "methods",
    "optimize_weights": "optimize",
    "SimplexTuner": "simplex",
    "WeightSearch": "simplex",
    "simplex_weights": "simplex",
    "ScoreTable": "table",
    "ground_truth_labels": "table",
    "stack_predictions": "table",
    "LoopResult": "vilio_loop",
    "blend": "vilio_loop",
    "seed_average": "vilio_loop",
    "vilio_loop": "vilio_loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memeguard.ensemble' has no attribute {name!r}")
    return getattr(importlib.import_module(f"memeguard.ensemble.{_EXPORTS[name]}"), name)
