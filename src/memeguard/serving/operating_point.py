"""The operating point a bundle stores: re-exported from :mod:`memeguard.ensemble.operating_point`.

The threshold choice is a pure function of dev scores and labels, so it lives in ``ensemble`` where the
pipeline's report can use it too (``pipeline`` sits below ``serving`` and may not import from it); this
module keeps the serving-side import path that bundles and the scorer use.
"""

from __future__ import annotations

from memeguard.ensemble.operating_point import (
    RULES,
    DevMetrics,
    OperatingPoint,
    Rule,
    choose_operating_point,
    dev_metrics,
)

__all__ = ["RULES", "DevMetrics", "OperatingPoint", "Rule", "choose_operating_point", "dev_metrics"]
