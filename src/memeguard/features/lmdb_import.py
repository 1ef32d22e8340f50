"""MMF ``detectron.lmdb`` features (vilio's V model): import into a feature store.

Format (``mmf/tools/scripts/features/lmdb_conversion.py``): the key ``b"keys"`` holds a pickled
list of byte-string image keys (the feature file path without ``.npy``, e.g. ``b"01235"``); each
key's value is a pickled dict with ``features`` [N, 2048] float32, ``bbox`` [N, 4] pixel boxes,
``num_boxes``, ``image_width``, ``image_height``, ``objects`` [N] class ids, ``cls_prob`` [N, C]
and ``feature_path``. Every pickle goes through :mod:`memeguard.features.safe_pickle`, so an LMDB
that tries to import anything but numpy arrays is refused before any of its code runs.

What we keep, as vilio's ``fts_lmdb/hm_data.py`` uses it: all N rows of ``features``/``bbox``
(vilio takes the first 100; MMF files hold exactly 100), image size, ``objects`` as object ids
(``argmax(cls_prob)`` when absent) and ``max(cls_prob)`` as object confidence, like vilio's
``pred_conf``. The full ``cls_prob`` matrix is not stored. The id is the leading digits of the
key's file stem; a second key with the same id (vilio deletes ``81054(1)``) is reported and skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from memeguard.errors import ConfigError, FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.features.safe_pickle import safe_loads
from memeguard.features.tsv import ImportReport, ImportSource

_LEADING_DIGITS = re.compile(rb"^(\d+)")
REQUIRED_KEYS = ("features", "bbox", "image_height", "image_width")


def _lmdb() -> Any:
    """The ``lmdb`` module: an optional extra, as only this importer (vilio's V model features) needs it."""
    try:
        import lmdb
    except ImportError:
        raise ConfigError(
            "importing MMF LMDB features needs the 'lmdb' extra: pip install 'memeguard[lmdb]'"
        ) from None
    return lmdb


def _open_env(path: Path) -> Any:
    lmdb = _lmdb()
    if not path.exists():
        raise FeatureStoreError(f"{path}: LMDB not found")
    try:
        return lmdb.open(
            str(path),
            subdir=path.is_dir(),
            readonly=True,
            lock=False,
            readahead=False,
            meminit=False,
            max_readers=4,
        )
    except lmdb.Error as exc:
        raise FeatureStoreError(f"{path}: cannot open as LMDB ({exc})") from None


def meme_id_from_key(key: bytes) -> int | None:
    """``b"01235"``, ``b"img/01235.npy"``, ``b"81054(1)"`` -> 1235, 1235, 81054; None if no digits lead."""
    stem = key.replace(b"\\", b"/").rsplit(b"/", 1)[-1]
    if stem.endswith(b".npy"):
        stem = stem[: -len(b".npy")]
    match = _LEADING_DIGITS.match(stem)
    return int(match.group(1)) if match else None


def _read_keys(txn: Any, path: Path) -> list[bytes]:
    raw = txn.get(b"keys")
    if raw is None:
        raise FeatureStoreError(f"{path}: LMDB has no b'keys' entry (not an MMF feature LMDB)")
    keys = safe_loads(bytes(raw), source=f"{path} key b'keys'")
    if not isinstance(keys, (list, tuple)):
        raise FeatureStoreError(
            f"{path} key b'keys': expected a list of image keys, got {type(keys).__name__}"
        )
    out = []
    for key in keys:
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, bytes):
            raise FeatureStoreError(f"{path} key b'keys': image key {key!r} is not a byte string")
        out.append(key)
    return out


def record_from_item(item: object, meme_id: int, where: str) -> RegionRecord:
    """One unpickled MMF info dict -> RegionRecord; ``where`` names the LMDB and key in errors."""
    if not isinstance(item, dict):
        raise FeatureStoreError(f"{where}: expected a pickled dict, got {type(item).__name__}")
    missing = [key for key in REQUIRED_KEYS if item.get(key) is None]
    if missing:
        raise FeatureStoreError(f"{where}: entry lacks {missing}")
    features = np.asarray(item["features"], dtype=np.float32)
    if features.ndim > 2:  # MMF's reader flattens grid-shaped features the same way
        features = features.reshape(-1, features.shape[-1])
    boxes = np.asarray(item["bbox"], dtype=np.float32)
    if features.ndim != 2 or boxes.ndim != 2 or boxes.shape != (features.shape[0], 4):
        raise FeatureStoreError(f"{where}: features {features.shape} and bbox {boxes.shape} do not match")
    n = features.shape[0]
    cls_prob = item.get("cls_prob")
    objects = item.get("objects")
    object_ids = object_conf = None
    if cls_prob is not None:
        cls_prob = np.asarray(cls_prob, dtype=np.float32)
        if cls_prob.ndim != 2 or cls_prob.shape[0] != n:
            raise FeatureStoreError(f"{where}: cls_prob has shape {cls_prob.shape}, expected ({n}, classes)")
        object_conf = cls_prob.max(axis=1)
        object_ids = cls_prob.argmax(axis=1).astype(np.int64)
    if objects is not None:
        object_ids = np.asarray(objects, dtype=np.int64).reshape(-1)
        if object_ids.shape != (n,):
            raise FeatureStoreError(f"{where}: objects has {object_ids.size} entries, expected {n}")
    try:
        height, width = int(item["image_height"]), int(item["image_width"])
    except (TypeError, ValueError):
        raise FeatureStoreError(f"{where}: image_height/image_width are not integers") from None
    return RegionRecord(
        meme_id=meme_id,
        features=features,
        boxes=boxes,
        image_size=(height, width),
        object_ids=object_ids,
        object_conf=object_conf if object_ids is not None else None,
    )


def iter_lmdb(path: str | os.PathLike[str], report: ImportReport | None = None) -> Iterator[RegionRecord]:
    """Records of an MMF LMDB in ``keys`` order, first key of each id only."""
    path = Path(path)
    report = report if report is not None else ImportReport(str(path), "")
    env = _open_env(path)
    try:
        with env.begin(write=False) as txn:
            keys = _read_keys(txn, path)
            first_key: dict[int, bytes] = {}
            for key in keys:
                where = f"{path} key {key!r}"
                meme_id = meme_id_from_key(key)
                if meme_id is None:
                    raise FeatureStoreError(
                        f"{where}: cannot read a meme id from the key (expected e.g. b'01235')"
                    )
                if meme_id in first_key:
                    report.duplicates.append((where, meme_id, f"first as key {first_key[meme_id]!r}"))
                    continue
                raw = txn.get(key)
                if raw is None:
                    raise FeatureStoreError(f"{where}: listed in b'keys' but has no value")
                first_key[meme_id] = key
                yield record_from_item(safe_loads(bytes(raw), source=where), meme_id, where)
    finally:
        env.close()


def import_lmdb(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str = "float16",
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> ImportReport:
    """Import an MMF ``detectron.lmdb`` into a feature store at ``out`` (resumable)."""
    _lmdb()  # a missing extra fails before the store folder is made
    source = ImportSource(Path(path), extractor="import-lmdb", source_format="mmf-lmdb")
    return source.import_into(out, lambda report: iter_lmdb(source.path, report), dtype, meta, progress)
