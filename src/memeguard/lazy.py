"""Lazy package exports (PEP 562): ``memeguard --help`` imports every stage's CLI module, and a package
``__init__`` that imported its heavy modules eagerly would make that pay for torch, scipy or fastapi."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps a submodule (``"config"``) to the names it
    provides; a name's submodule is imported on the first access of that name."""
    module_of = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_of[name]), name)

    return __getattr__
