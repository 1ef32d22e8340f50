"""A restricted unpickler: numpy arrays and builtin containers/scalars only.

Detectron2 weight pickles and MMF LMDB values are pickles. A pickle can import and call anything;
this loader admits only the globals needed to rebuild numpy arrays, so a hostile file is refused
before any of its code runs.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from memeguard.errors import UnsafePickleError

_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` refuses everything outside ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._source}: refused to load pickle global {module}.{name} "
                "(only numpy arrays and builtin containers are allowed)"
            )
        return super().find_class(module, name)


def safe_loads(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in errors."""
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or corrupt data
        raise UnsafePickleError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def safe_load(path: str, source: str | None = None) -> Any:
    """Unpickle a file with the restricted unpickler."""
    with open(path, "rb") as handle:
        return safe_loads(handle.read(), source or str(path))
