"""The MMF detectron.lmdb importer, value for value; and the one-line error when the lmdb extra is missing.

The fixtures are written here with pickle/lmdb directly (not with memeguard's writers), in exactly the
layout MMF's ``lmdb_conversion.py`` produces.
"""

from __future__ import annotations

import builtins
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from memeguard.errors import ConfigError, FeatureStoreError, UnsafePickleError
from memeguard.features.lmdb_import import import_lmdb, meme_id_from_key
from memeguard.features.store import FeatureStore

DIM = 24


def _lmdb():
    """The lmdb module; tests that write an LMDB skip when the optional extra is not installed."""
    return pytest.importorskip("lmdb")


def test_missing_lmdb_extra_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lmdb", None)  # what `import lmdb` sees without the extra
    with pytest.raises(ConfigError, match=r"needs the 'lmdb' extra: pip install 'memeguard\[lmdb\]'") as info:
        import_lmdb(tmp_path / "detectron.lmdb", tmp_path / "store")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "store").exists()  # refused before anything was written


def mmf_item(key: str, n: int, rng: np.random.Generator, classes: int = 1601) -> dict:
    h, w = int(rng.integers(200, 800)), int(rng.integers(200, 800))
    cls_prob = rng.dirichlet(np.ones(classes), n).astype(np.float32)
    return {
        "feature_path": key,
        "features": rng.gamma(1.0, 1.0, (n, DIM)).astype(np.float32),
        "image_height": h,
        "image_width": w,
        "num_boxes": n,
        "objects": cls_prob.argmax(axis=1),
        "cls_prob": cls_prob,
        "bbox": np.stack(
            [rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n), np.full(n, w - 1.0), np.full(n, h - 1.0)], 1
        ).astype(np.float32),
    }


def write_mmf_lmdb(path: Path, items: dict[bytes, bytes], keys_pickle: bytes | None = None) -> None:
    """Like ``lmdb_conversion.py convert``: each value pickled, then b"keys" -> pickled key list."""
    env = _lmdb().open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
        txn.put(b"keys", keys_pickle if keys_pickle is not None else pickle.dumps(list(items)))
    env.close()


def test_lmdb_round_trip_value_for_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    items = {
        b"01235": mmf_item("01235", 100, rng),
        b"42": mmf_item("42", 100, rng),
        b"81054": mmf_item("81054", 37, rng),
    }
    items[b"81054(1)"] = mmf_item("81054(1)", 100, rng)  # the id vilio's loader deletes
    no_objects = mmf_item("00009", 5, rng, classes=11)
    del no_objects["objects"]
    items[b"00009"] = no_objects
    # Values pickled as the 2020 release was (protocol 2, numpy.core paths) and as today.
    raw = {
        key: pickle.dumps(value, protocol=2 if i % 2 else 5) for i, (key, value) in enumerate(items.items())
    }
    path = tmp_path / "detectron.lmdb"
    write_mmf_lmdb(path, raw)
    report = import_lmdb(path, tmp_path / "store", dtype="float32")
    assert report.imported == 4
    assert [(where.endswith("key b'81054(1)'"), meme_id) for where, meme_id, _ in report.duplicates] == [
        (True, 81054)
    ]
    store = FeatureStore.open(tmp_path / "store")
    assert store.ids() == [1235, 42, 81054, 9]
    assert store.meta["source_format"] == "mmf-lmdb"
    for meme_id, key in ((1235, b"01235"), (42, b"42"), (81054, b"81054"), (9, b"00009")):
        item, record = items[key], store[meme_id]
        np.testing.assert_array_equal(record.features, item["features"])
        np.testing.assert_array_equal(record.boxes, item["bbox"])
        assert record.image_size == (item["image_height"], item["image_width"])
        # vilio's pred_objs / pred_conf: argmax / max of cls_prob
        np.testing.assert_array_equal(record.object_ids, item["cls_prob"].argmax(axis=1))
        np.testing.assert_array_equal(record.object_conf, item["cls_prob"].max(axis=1))
        assert record.attr_ids is None


def test_lmdb_single_file_layout_and_key_parsing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "feats.mdb"
    env = _lmdb().open(str(path), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"img/00077.npy", pickle.dumps(mmf_item("img/00077", 4, rng)))
        txn.put(b"keys", pickle.dumps([b"img/00077.npy"]))
    env.close()
    import_lmdb(path, tmp_path / "store")
    assert FeatureStore.open(tmp_path / "store").ids() == [77]
    assert meme_id_from_key(b"81054(1)") == 81054 and meme_id_from_key(b"abc") is None


class _Exploit:
    """Unpickling this would run open(target, "w") and create the file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (builtins.open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    target = tmp_path / "pwned.txt"
    good = pickle.dumps(mmf_item("00001", 3, rng))
    evil = pickle.dumps({"features": _Exploit(target)})
    path = tmp_path / "detectron.lmdb"
    write_mmf_lmdb(path, {b"00001": good, b"00002": evil})
    with pytest.raises(
        UnsafePickleError, match=r"key b'00002'.*refused to load pickle global (builtins|io)\.open"
    ):
        import_lmdb(path, tmp_path / "store")
    assert not target.exists()
    with pytest.raises(FeatureStoreError, match="never finalised"):
        FeatureStore.open(tmp_path / "store")
    # The key list itself is a pickle too.
    path2 = tmp_path / "evil_keys.lmdb"
    write_mmf_lmdb(path2, {b"00001": good}, keys_pickle=pickle.dumps(_Exploit(target)))
    with pytest.raises(UnsafePickleError, match=r"key b'keys'"):
        import_lmdb(path2, tmp_path / "store2")
    assert not target.exists()
    # Sanity check that the payload is real: the unrestricted unpickler would have created the file.
    pickle.loads(evil)
    assert target.exists()


def test_lmdb_structural_errors_name_the_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    item = mmf_item("00003", 6, rng)
    item["bbox"] = item["bbox"][:5]
    path = tmp_path / "a.lmdb"
    write_mmf_lmdb(path, {b"00003": pickle.dumps(item)})
    with pytest.raises(FeatureStoreError, match=r"key b'00003': features \(6, 24\) and bbox \(5, 4\)"):
        import_lmdb(path, tmp_path / "s1")
    path = tmp_path / "b.lmdb"
    write_mmf_lmdb(
        path,
        {b"00004": pickle.dumps(mmf_item("00004", 2, rng))},
        keys_pickle=pickle.dumps([b"00004", b"00005"]),
    )
    with pytest.raises(FeatureStoreError, match=r"key b'00005': listed in b'keys' but has no value"):
        import_lmdb(path, tmp_path / "s2")
    env = _lmdb().open(str(tmp_path / "c.lmdb"), map_size=1 << 20)
    env.close()
    with pytest.raises(FeatureStoreError, match="no b'keys' entry"):
        import_lmdb(tmp_path / "c.lmdb", tmp_path / "s3")
