"""Scoring new memes: ``MemeScorer`` (Python), ``memeguard score`` / ``serve`` / ``export`` (CLI),
``create_app`` (HTTP).

Names are imported lazily: the package must import without torch, fastapi or uvicorn being loaded.
"""

from __future__ import annotations

from memeguard.lazy import lazy_exports

_EXPORTS = {
    "scorer": ("MemeScorer", "Score", "load_image"),
    "bundle": ("load_scorer", "export_bundle"),
    "http": ("create_app", "ServiceLimits"),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__ = lazy_exports(__name__, _EXPORTS)
