"""Ensembling: vilio's seed averaging, mean/power/rank blends, simplex weight search and two-pass loop,
as pure functions over id-aligned predictions, plus ``ensemble_folder`` for a folder of CSVs.

Names are imported lazily: ``memeguard --help`` imports ``memeguard.ensemble.cli`` and should not pay
for scipy and scikit-learn.
"""

from __future__ import annotations

from memeguard.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "METHODS": "memeguard.ensemble.method_names",
    "METHOD_ALIASES": "memeguard.ensemble.method_names",
    "TEST_LABEL_RULES": "memeguard.ensemble.method_names",
    "canonical_method": "memeguard.ensemble.method_names",
    "SPLITS": "memeguard.ensemble.folder",
    "EnsembleResult": "memeguard.ensemble.folder",
    "decision_threshold": "memeguard.ensemble.folder",
    "ensemble_folder": "memeguard.ensemble.folder",
    "resolve_families": "memeguard.ensemble.folder",
    "scan_folder": "memeguard.ensemble.folder",
    "fast_auroc": "memeguard.ensemble.methods",
    "mean_average": "memeguard.ensemble.methods",
    "minmax_normalize": "memeguard.ensemble.methods",
    "power_average": "memeguard.ensemble.methods",
    "rank_average": "memeguard.ensemble.methods",
    "simple_average": "memeguard.ensemble.methods",
    "spearman_matrix": "memeguard.ensemble.methods",
    "weighted_average": "memeguard.ensemble.methods",
    "optimize_weights": "memeguard.ensemble.optimize",
    "SimplexTuner": "memeguard.ensemble.simplex",
    "WeightSearch": "memeguard.ensemble.simplex",
    "simplex_weights": "memeguard.ensemble.simplex",
    "ScoreTable": "memeguard.ensemble.table",
    "ground_truth_labels": "memeguard.ensemble.table",
    "stack_predictions": "memeguard.ensemble.table",
    "LoopResult": "memeguard.ensemble.vilio_loop",
    "blend": "memeguard.ensemble.vilio_loop",
    "seed_average": "memeguard.ensemble.vilio_loop",
    "vilio_loop": "memeguard.ensemble.vilio_loop",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
