"""Scoring new memes: ``MemeScorer`` (Python), ``memeguard score`` / ``serve`` / ``export`` (CLI),
``create_app`` (HTTP).

Names are imported lazily: the package must import without torch, fastapi or uvicorn being loaded.
"""

from __future__ import annotations

from memeguard.lazy import lazy_exports

_EXPORTS = {
    "MemeScorer": "memeguard.serving.scorer",
    "Score": "memeguard.serving.scorer",
    "load_image": "memeguard.serving.scorer",
    "load_scorer": "memeguard.serving.bundle",
    "export_bundle": "memeguard.serving.bundle",
    "create_app": "memeguard.serving.http",
    "ServiceLimits": "memeguard.serving.http",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
