"""Ensembling: vilio's seed averaging, mean/power/rank blends, simplex weight search and two-pass loop,
as pure functions over id-aligned predictions, plus ``ensemble_folder`` for a folder of CSVs.

Names are imported lazily: ``memeguard --help`` imports ``memeguard.ensemble.cli`` and should not pay
for scipy and scikit-learn.
"""

from __future__ import annotations

from memeguard.lazy import lazy_exports

_EXPORTS = {
    "method_names": ("METHODS", "METHOD_ALIASES", "TEST_LABEL_RULES", "canonical_method"),
    "folder": (
        "SPLITS",
        "EnsembleResult",
        "decision_threshold",
        "ensemble_folder",
        "resolve_families",
        "scan_folder",
    ),
    "methods": (
        "fast_auroc",
        "mean_average",
        "minmax_normalize",
        "power_average",
        "rank_average",
        "simple_average",
        "spearman_matrix",
        "weighted_average",
    ),
    "optimize": ("optimize_weights",),
    "simplex": ("SimplexTuner", "WeightSearch", "simplex_weights"),
    "table": ("ScoreTable", "ground_truth_labels", "stack_predictions"),
    "vilio_loop": ("LoopResult", "blend", "seed_average", "vilio_loop"),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__ = lazy_exports(__name__, _EXPORTS)
