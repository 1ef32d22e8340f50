"""Scoring new memes: ``MemeScorer`` (Python), ``memeguard score`` / ``memeguard serve`` (CLI), ``create_app`` (HTTP).

Names are imported lazily: the package must import without torch, fastapi or uvicorn being loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MemeScorer": "memeguard.serving.scorer",
    "Score": "memeguard.serving.scorer",
    "load_image": "memeguard.serving.scorer",
    "create_app": "memeguard.serving.http",
    "ServiceLimits": "memeguard.serving.http",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'memeguard.serving' has no attribute {name!r}")
