"""The restricted unpickler rebuilds what LMDB values and detectron pickles hold, nothing more.

Written as the attacks of issue #11: tiny pickles that would allocate gigabytes or call something are
refused before any allocation, as one line naming the source.
"""

from __future__ import annotations

import collections
import pickle
import resource

import numpy as np
import pytest

from memeguard.errors import UnsafePickleError
from memeguard.features.safe_pickle import safe_loads


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_lmdb_and_detectron_values_round_trip(protocol: int) -> None:
    rng = np.random.default_rng(0)
    value = {
        "feature_path": "01235",
        "features": rng.normal(size=(3, 5)).astype(np.float32),
        "bbox": rng.uniform(size=(3, 4)).astype(np.float32),
        "objects": np.arange(3),
        "num_boxes": np.int64(3),
        "image_height": 480,
        "keys": [b"01235", "x"],
        "model": collections.OrderedDict(w=np.ones((2, 2), np.float64), b=np.float32(0.5)),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    }
    loaded = safe_loads(pickle.dumps(value, protocol=protocol))
    assert loaded.keys() == value.keys()
    for key in ("features", "bbox", "objects", "fortran"):
        assert loaded[key].dtype == value[key].dtype and np.array_equal(loaded[key], value[key])
    assert loaded["num_boxes"] == 3 and type(loaded["num_boxes"]) is np.int64
    assert loaded["keys"] == [b"01235", "x"] and loaded["feature_path"] == "01235"
    assert isinstance(loaded["model"], collections.OrderedDict)
    assert np.array_equal(loaded["model"]["w"], np.ones((2, 2)))


ATTACKS = [
    # bytearray(10**9): 1 GB from a 36-byte pickle
    (
        b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\tbytearray\x93J\x00\xca\x9a;\x85R.",
        "refused to load pickle global builtins.bytearray",
    ),
    # numpy.ndarray((10**9,)) called directly
    (
        b"\x80\x04cnumpy\nndarray\nJ\x00\xca\x9a;\x85\x85R.",
        "refused pickle contents: numpy.ndarray may only be rebuilt through numpy's own _reconstruct",
    ),
    # _reconstruct(ndarray, (10**9,), b'f')
    (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85C\x01f\x87R.",
        "refused pickle contents: _reconstruct with shape (1000000000,) "
        "(numpy pickles start from an empty array)",
    ),
    # an object array: its elements could be anything
    (
        b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.",
        "refused pickle contents: object arrays (dtype object) are not allowed",
    ),
    # a codec other than latin-1 is looked up by name (an import)
    (
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
        "refused pickle contents: _codecs.encode with encoding 'rot13'",
    ),
    (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.", "refused to load pickle global os.system"),
    (b"\x80\x02cbuiltins\nset\n)R.", "refused to load pickle global builtins.set"),
]


@pytest.mark.parametrize(("data", "expected"), ATTACKS)
def test_attacks_are_one_line_and_allocate_nothing(data: bytes, expected: str) -> None:
    before = _max_rss_mb()
    with pytest.raises(UnsafePickleError) as info:
        safe_loads(data, source="x.lmdb key b'1'")
    message = str(info.value)
    assert message.startswith("x.lmdb key b'1': ") and expected in message and "\n" not in message
    assert _max_rss_mb() - before < 100  # nothing near the 1 GB the pickle asks for


def test_array_state_larger_than_its_bytes_is_refused() -> None:
    """BUILD with a claimed shape of 10**9 but 4 bytes of data: numpy refuses before allocating."""
    good = pickle.dumps(np.zeros(1, np.float32), protocol=2)
    forged = good.replace(b"K\x01\x85", b"J\x00\xca\x9a;\x85", 1)
    assert forged != good
    with pytest.raises(UnsafePickleError, match="not a readable pickle"):
        safe_loads(forged)
