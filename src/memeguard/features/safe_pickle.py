"""A restricted unpickler: numpy arrays, numpy scalars and builtin containers/scalars only.

Detectron2 weight pickles and MMF LMDB values are pickles: dicts (or ``OrderedDict``s) of numpy arrays,
strings and ints. A pickle can import and call anything; this loader admits only the few globals that
rebuild those values, each wrapped so that it can neither run code nor allocate memory the pickle does
not itself hold: a 36-byte ``bytearray(10**9)`` or ``ndarray((10**9,))`` is refused before anything is
allocated. What is left (strings, lists, array bytes) is at most a small multiple of the pickle's size.
"""

from __future__ import annotations

import _codecs
import collections
import io
import pickle
from typing import Any, NoReturn

import numpy as np

try:  # numpy 2 moved numpy.core to numpy._core
    from numpy._core.multiarray import scalar as _numpy_scalar  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import scalar as _numpy_scalar  # type: ignore[no-redef]

from memeguard.errors import UnsafePickleError

# Encodings numpy arrays and bytes pickled by Python 2 or protocol 2 use (``_codecs.encode(text, "latin1")``).
_BYTE_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1"})


class _RefusedCall(Exception):
    """Raised inside the unpickler by a guarded global; ``safe_loads`` turns it into one line."""


def _refuse(message: str) -> NoReturn:
    raise _RefusedCall(message)


def _checked_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` as pickles call it; object dtypes (arrays of arbitrary objects) are refused."""
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        _refuse(f"object arrays (dtype {dtype}) are not allowed")
    return dtype


class _NdarrayToken:
    """What ``numpy.ndarray`` resolves to: only ``_reconstruct`` may use it; calling it is refused.

    ``ndarray(shape)`` (a REDUCE or NEWOBJ of the class) would allocate ``shape`` without the pickle
    holding the data.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("numpy.ndarray may only be rebuilt through numpy's own _reconstruct")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct``: an *empty* array that BUILD then fills with the pickle's own bytes.

    numpy always pickles shape ``(0,)`` here; any other size would allocate memory the pickle does not
    hold, so it is refused before the array is made.
    """
    if subtype is not _NdarrayToken:
        _refuse("_reconstruct of anything but numpy.ndarray")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(dim, int) and dim >= 0 for dim in dims) or any(dim != 0 for dim in dims):
        _refuse(f"_reconstruct with shape {shape!r} (numpy pickles start from an empty array)")
    return np.ndarray.__new__(np.ndarray, dims, _checked_dtype(typecode))


def _scalar(dtype: Any, *data: Any) -> Any:
    """numpy's ``scalar`` (how ``np.int64(3)`` pickles): the value's bytes are in the pickle."""
    return _numpy_scalar(_checked_dtype(dtype), *data)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer``: a view of bytes the pickle holds, reshaped (no allocation)."""
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        _refuse(f"_frombuffer of a {type(buffer).__name__}")
    array = np.frombuffer(buffer, dtype=_checked_dtype(dtype))
    return array.reshape(shape, order=order)


def _encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to latin-1 (how protocol 2 writes bytes): no other codec is looked up."""
    if not isinstance(text, str) or encoding.lower() not in _BYTE_ENCODINGS:
        _refuse(f"_codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding, errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        (module, "_reconstruct"): _reconstruct
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): _checked_dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` refuses everything outside ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self._source}: refused to load pickle global {module}.{name} "
                "(only numpy arrays and builtin containers are allowed)"
            )
        return allowed


def safe_loads(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in errors."""
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except _RefusedCall as exc:
        raise UnsafePickleError(f"{source}: refused pickle contents: {exc}") from None
    except Exception as exc:  # truncated or corrupt data
        raise UnsafePickleError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def safe_load(path: str, source: str | None = None) -> Any:
    """Unpickle a file with the restricted unpickler."""
    with open(path, "rb") as handle:
        return safe_loads(handle.read(), source or str(path))
