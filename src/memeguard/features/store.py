"""The feature store: one directory of flat, memory-mapped arrays per feature set.

Why this shape: vilio re-parsed multi-GB base64 TSVs for every split of every run. Here every array
is a raw little-endian file that ``numpy.memmap`` maps without parsing, so opening a store costs
milliseconds and reading an image costs one slice. Images keep their own box count (10–100) because
rows are concatenated and an index gives each image its (row_start, n_rows); nothing is padded.

Directory layout::

    layout.json          feature dim, dtype, which optional fields/extras exist (written at the 1st record)
    index.bin            int64 records (meme_id, row_start, n_rows, height, width), append-only journal
    features.bin         [rows, D] float16|float32
    boxes.bin            [rows, 4] float32, pixel x1, y1, x2, y2 of the original image
    object_ids.bin ...   [rows] int64 / float32, only when the extractor has them
    extra.<name>.bin     [images, dim] float32 (or float16: layout ``extras_dtype``), fixed-size per-image
                         vectors (CLIP embeddings)
    meta.json            written LAST by ``finalize`` (atomically): counts, file sizes, user meta

Extras are float32 unless the layout says ``"extras_dtype": "float16"``: the key is written only for
float16 extras, so a float32 store's files and JSON are exactly what earlier versions wrote and read.

Crash safety: a record's data is appended and flushed before its index entry, so after a kill the
index is a prefix of complete records; the writer cuts any partial tail on resume. Readers only
accept a store whose ``meta.json`` exists and whose file sizes match it exactly.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from filelock import FileLock, Timeout

from memeguard.errors import FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.io import write_json_atomic
from memeguard.names import (
    STORE_BOXES_FILE,
    STORE_FEATURES_FILE,
    STORE_INDEX_FILE,
    STORE_LAYOUT_FILE,
    STORE_LOCK_FILE,
    STORE_META_FILE,
)
from memeguard.records import StoreLayout, StoreMeta, load_json, read_record, validate_record

FORMAT_NAME = "memeguard-feature-store"
FORMAT_VERSION = 1

# (meme_id, row_start, n_rows, height, width) per image.
INDEX_COLUMNS = ("meme_id", "row_start", "n_rows", "height", "width")
INDEX_RECORD_BYTES = 8 * len(INDEX_COLUMNS)

FEATURE_DTYPES = ("float16", "float32")

# Optional per-box fields: attribute of RegionRecord -> on-disk dtype.
OPTIONAL_FIELDS: dict[str, str] = {
    "object_ids": "<i8",
    "object_conf": "<f4",
    "attr_ids": "<i8",
    "attr_conf": "<f4",
}
# An extra's name becomes part of a file name (extra.<name>.bin): no path separators or dots.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
BOXES_DTYPE = "<f4"
# Rows of one file that ``verify`` checks at a time: 16k rows of 2048 float16 features are 64 MiB read.
VERIFY_CHUNK_ROWS = 16384
EXTRA_DTYPE = "<f4"  # the extras' dtype when the layout names none (every store before float16 extras)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _extra_file(name: str) -> str:
    return f"extra.{name}.bin"


def _row_files(layout: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Files with one entry per box row: name -> (numpy dtype, bytes per row)."""
    feature_dtype = np.dtype(layout["dtype"]).newbyteorder("<")
    files = {
        STORE_FEATURES_FILE: (feature_dtype.str, feature_dtype.itemsize * int(layout["feature_dim"])),
        STORE_BOXES_FILE: (BOXES_DTYPE, 4 * 4),
    }
    for field in layout["fields"]:
        dtype = np.dtype(OPTIONAL_FIELDS[field])
        files[f"{field}.bin"] = (dtype.str, dtype.itemsize)
    return files


def layout_extras_dtype(layout: dict[str, Any]) -> str:
    """The extras' on-disk dtype name: the layout's ``extras_dtype``, float32 when absent (older stores)."""
    return str(layout.get("extras_dtype", "float32"))


def _image_files(layout: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Files with one entry per image (the extras): name -> (dtype, bytes per image)."""
    dtype = np.dtype(layout_extras_dtype(layout)).newbyteorder("<")
    return {
        _extra_file(name): (dtype.str, dtype.itemsize * int(dim)) for name, dim in layout["extras"].items()
    }


def _read_layout(path: Path) -> dict[str, Any]:
    """``layout.json``, validated (types by the schema, supported values here), as a plain dict."""
    layout = read_record(path, StoreLayout, FeatureStoreError)
    return _check_layout(layout.model_dump(), path)


def _read_info(meta_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the whole ``meta.json``, its validated ``store`` section)."""
    meta = load_json(meta_path, FeatureStoreError)
    info = validate_record(meta, StoreMeta, meta_path, FeatureStoreError).store.model_dump()
    return {**meta, "store": info}, _check_layout(info, meta_path)


def _check_layout(layout: dict[str, Any], path: Path) -> dict[str, Any]:
    if layout["format"] != FORMAT_NAME:
        raise FeatureStoreError(f"{path}: not a memeguard feature store layout (format={layout['format']!r})")
    if layout["version"] != FORMAT_VERSION:
        raise FeatureStoreError(
            f"{path}: unsupported store version {layout['version']!r} (expected {FORMAT_VERSION})"
        )
    if layout["dtype"] not in FEATURE_DTYPES:
        raise FeatureStoreError(f"{path}: unsupported feature dtype {layout['dtype']!r}")
    if layout_extras_dtype(layout) not in FEATURE_DTYPES:
        raise FeatureStoreError(f"{path}: unsupported extras dtype {layout_extras_dtype(layout)!r}")
    unknown = set(layout["fields"]) - set(OPTIONAL_FIELDS)
    if unknown:
        raise FeatureStoreError(f"{path}: unknown per-box fields {sorted(unknown)}")
    bad_extras = [name for name, dim in layout["extras"].items() if dim <= 0 or not _SAFE_NAME.match(name)]
    if bad_extras:
        raise FeatureStoreError(f"{path}: bad extra vector {bad_extras[0]!r}")
    return layout


def _read_index(path: Path, n_records: int | None = None) -> np.ndarray:
    raw = np.fromfile(path, dtype="<i8") if path.exists() else np.zeros(0, dtype="<i8")
    usable = (raw.size // len(INDEX_COLUMNS)) * len(INDEX_COLUMNS)
    index = raw[:usable].reshape(-1, len(INDEX_COLUMNS))
    return index if n_records is None else index[:n_records]


# --------------------------------------------------------------------------------------------- reader


class FeatureStore:
    """Read-only view of a finalised store. ``store[meme_id]`` -> :class:`RegionRecord` (float32)."""

    def __init__(self, path: Path, meta: dict[str, Any], index: np.ndarray) -> None:
        self.path = path
        self._meta = meta
        info = meta["store"]
        self._layout = info
        self._index = index
        self._ids = index[:, 0]
        self._ordinal: dict[int, int] = {int(meme_id): i for i, meme_id in enumerate(self._ids.tolist())}
        self._arrays: dict[str, np.ndarray] = {}
        num_rows, num_images = int(info["num_rows"]), int(info["num_images"])
        for name, (dtype, row_bytes) in _row_files(info).items():
            width = row_bytes // np.dtype(dtype).itemsize
            self._arrays[name] = self._map(name, dtype, (num_rows, width))
        for name, (dtype, row_bytes) in _image_files(info).items():
            self._arrays[name] = self._map(name, dtype, (num_images, row_bytes // np.dtype(dtype).itemsize))

    def _map(self, name: str, dtype: str, shape: tuple[int, int]) -> np.ndarray:
        if shape[0] == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(self.path / name, dtype=dtype, mode="r", shape=shape)

    # -- opening and validation

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FeatureStore:
        """Open and validate a store; a missing, unfinished, truncated or inconsistent one raises."""
        path = Path(path)
        if not path.is_dir():
            raise FeatureStoreError(f"{path}: feature store not found (expected a directory)")
        meta_path = path / STORE_META_FILE
        if not meta_path.is_file():
            if (path / STORE_INDEX_FILE).exists() or (path / STORE_LAYOUT_FILE).exists():
                raise FeatureStoreError(
                    f"{path}: feature store was never finalised (extraction or import interrupted?); "
                    "re-run the same extract/import command to resume and finalise it"
                )
            raise FeatureStoreError(f"{path}: not a feature store (no {STORE_META_FILE})")
        meta, info = _read_info(meta_path)
        cls._check_file_sizes(path, info)
        index = _read_index(path / STORE_INDEX_FILE)
        cls._check_index(path, info, index)
        return cls(path, meta, index)

    @staticmethod
    def _check_file_sizes(path: Path, info: dict[str, Any]) -> None:
        num_rows, num_images = int(info["num_rows"]), int(info["num_images"])
        expected = {STORE_INDEX_FILE: num_images * INDEX_RECORD_BYTES}
        expected.update({name: num_rows * row for name, (_, row) in _row_files(info).items()})
        expected.update({name: num_images * size for name, (_, size) in _image_files(info).items()})
        recorded = info["files"]
        for name, size in expected.items():
            if recorded.get(name) != size:
                raise FeatureStoreError(
                    f"{path}: meta.json is inconsistent: {name} should be {size} bytes, "
                    f"meta says {recorded.get(name)}"
                )
            file_path = path / name
            actual = file_path.stat().st_size if file_path.exists() else None
            if actual != size:
                state = "missing" if actual is None else f"{actual} bytes"
                raise FeatureStoreError(
                    f"{file_path}: truncated or overwritten feature store file "
                    f"({state}, expected {size} bytes)"
                )

    @staticmethod
    def _check_index(path: Path, info: dict[str, Any], index: np.ndarray) -> None:
        where = path / STORE_INDEX_FILE
        if len(index) != int(info["num_images"]):
            raise FeatureStoreError(
                f"{where}: {len(index)} index entries, meta.json says {info['num_images']}"
            )
        if len(index) == 0:
            return
        counts = index[:, 2]
        if (counts < 0).any() or (index[:, 3:] <= 0).any():
            bad = int(np.flatnonzero((counts < 0) | (index[:, 3:] <= 0).any(axis=1))[0])
            raise FeatureStoreError(f"{where}: corrupt entry {bad} (meme id {int(index[bad, 0])})")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if not np.array_equal(starts, index[:, 1]) or int(counts.sum()) != int(info["num_rows"]):
            raise FeatureStoreError(f"{where}: row offsets are inconsistent with the box counts")
        unique, first = np.unique(index[:, 0], return_counts=True)
        if len(unique) != len(index):
            raise FeatureStoreError(f"{where}: meme id {int(unique[first > 1][0])} is stored more than once")

    # -- the mapping interface

    def __len__(self) -> int:
        return len(self._ordinal)

    def __contains__(self, meme_id: object) -> bool:
        try:
            return int(meme_id) in self._ordinal  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def __getitem__(self, meme_id: int) -> RegionRecord:
        return self._record(self._lookup(meme_id))

    def __iter__(self) -> Iterator[RegionRecord]:
        """Records in storage order (the order they were written)."""
        for ordinal in range(len(self._index)):
            yield self._record(ordinal)

    def get(self, meme_id: int, default: RegionRecord | None = None) -> RegionRecord | None:
        return self[meme_id] if meme_id in self else default

    def ids(self) -> list[int]:
        """Stored meme ids in storage order."""
        return [int(meme_id) for meme_id in self._ids.tolist()]

    def records(self, meme_ids: Iterable[int]) -> list[RegionRecord]:
        return [self[meme_id] for meme_id in meme_ids]

    def batches(
        self, meme_ids: Sequence[int] | None = None, batch_size: int = 8
    ) -> Iterator[list[RegionRecord]]:
        """Records in batches of ``batch_size`` (all ids in storage order when none are given)."""
        ids = self.ids() if meme_ids is None else list(meme_ids)
        for start in range(0, len(ids), batch_size):
            yield self.records(ids[start : start + batch_size])

    # -- verification

    def verify(self, meme_ids: Iterable[int] | None = None, chunk_rows: int = VERIFY_CHUNK_ROWS) -> None:
        """Raise naming the store, the meme id and the file when a float value of these memes (all when
        ``meme_ids`` is None) is NaN or inf.

        Why: a flipped bit or a bad write turns into NaN that trains silently for a whole epoch. Opening
        checks sizes only (milliseconds); this reads every float file once, in chunks of the memory map
        (vectorised, memory bounded by ``chunk_rows``), so training calls it once before the first update.
        """
        wanted = np.ones(len(self._index), dtype=bool)
        if meme_ids is not None:
            wanted[:] = False
            wanted[[self._lookup(meme_id) for meme_id in meme_ids]] = True
        starts = self._index[:, 1]
        for name, (dtype, _) in _row_files(self._layout).items():
            if np.dtype(dtype).kind == "f":
                self._verify_rows(name, starts, wanted, chunk_rows)
        for name in _image_files(self._layout):
            finite = np.isfinite(self._arrays[name]).all(axis=1)
            bad = np.flatnonzero(~finite & wanted)
            if len(bad):
                self._non_finite(name, int(bad[0]))

    def _verify_rows(self, name: str, starts: np.ndarray, wanted: np.ndarray, chunk_rows: int) -> None:
        array = self._arrays[name]
        for first in range(0, array.shape[0], chunk_rows):
            finite = np.isfinite(array[first : first + chunk_rows]).all(axis=1)
            if finite.all():
                continue
            owners = np.searchsorted(starts, first + np.flatnonzero(~finite), side="right") - 1
            owners = owners[wanted[owners]]
            if len(owners):
                self._non_finite(name, int(owners[0]))

    def _non_finite(self, name: str, ordinal: int) -> None:
        meme_id = int(self._index[ordinal, 0])
        raise FeatureStoreError(
            f"{self.path / name}: meme id {meme_id} holds NaN or inf; "
            "the store is corrupt (re-extract it, or re-import it, into a new folder)"
        )

    # -- cheap metadata

    @property
    def feature_dim(self) -> int:
        return int(self._layout["feature_dim"])

    @property
    def dtype(self) -> str:
        """On-disk dtype of the features (reads are always float32)."""
        return str(self._layout["dtype"])

    @property
    def meta(self) -> dict[str, Any]:
        """The whole ``meta.json``: extractor, weights sha256, parameters, created, and a ``store``
        section."""
        return self._meta

    @property
    def fields(self) -> list[str]:
        """Optional per-box fields present (object_ids, object_conf, attr_ids, attr_conf)."""
        return list(self._layout["fields"])

    @property
    def extras(self) -> dict[str, int]:
        """Per-image extra vectors: name -> dimension."""
        return dict(self._layout["extras"])

    @property
    def extras_dtype(self) -> str:
        """On-disk dtype of the extras (reads are always float32)."""
        return layout_extras_dtype(self._layout)

    def num_boxes(self, meme_id: int) -> int:
        return int(self._index[self._lookup(meme_id), 2])

    def box_counts(self) -> np.ndarray:
        """Box count of every image, in storage order (no feature reads)."""
        return self._index[:, 2].copy()

    def image_size(self, meme_id: int) -> tuple[int, int]:
        row = self._index[self._lookup(meme_id)]
        return int(row[3]), int(row[4])

    # -- internals

    def _lookup(self, meme_id: object) -> int:
        try:
            return self._ordinal[int(meme_id)]  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError):
            raise KeyError(f"meme id {meme_id!r} is not in feature store {self.path}") from None

    def _record(self, ordinal: int) -> RegionRecord:
        meme_id, start, count, height, width = (int(v) for v in self._index[ordinal])
        rows = slice(start, start + count)
        arrays = self._arrays

        def optional(field: str, dtype: type) -> np.ndarray | None:
            name = f"{field}.bin"
            return np.array(arrays[name][rows, 0], dtype=dtype) if name in arrays else None

        extras = {
            name: np.array(arrays[_extra_file(name)][ordinal], dtype=np.float32)
            for name in self._layout["extras"]
        }
        return RegionRecord(
            meme_id=meme_id,
            features=np.array(arrays[STORE_FEATURES_FILE][rows], dtype=np.float32),
            boxes=np.array(arrays[STORE_BOXES_FILE][rows], dtype=np.float32),
            image_size=(height, width),
            object_ids=optional("object_ids", np.int64),
            object_conf=optional("object_conf", np.float32),
            attr_ids=optional("attr_ids", np.int64),
            attr_conf=optional("attr_conf", np.float32),
            extras=extras,
        )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # DataLoader workers (spawn) get the path and re-map the files, instead of a pickled copy
        # of every memmap's contents.
        return (FeatureStore.open, (str(self.path),))

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, images={len(self)}, "
            f"feature_dim={self.feature_dim}, dtype={self.dtype})"
        )


# --------------------------------------------------------------------------------------------- writer


class FeatureStoreWriter:
    """Appends records to a store directory; resumable, never stores an id twice.

    ``feature_dim`` may be None: it is then taken from an existing store or the first record.
    ``extras_dtype`` (float32 or float16) may be None: then an existing store's, or float16 when every
    extra of the first record is a float16 array (an extractor that rounds its extras to float16 says so
    by their dtype), else float32.
    Re-opening a store (finalised or interrupted) continues it; ``add`` skips ids already stored and
    returns False for them. Only ``finalize`` makes the store readable, by writing ``meta.json`` last.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        feature_dim: int | None = None,
        dtype: str = "float16",
        meta: dict[str, Any] | None = None,
        extras_dtype: str | None = None,
    ) -> None:
        for kind, value in (("feature", dtype), ("extras", extras_dtype or "float32")):
            if value not in FEATURE_DTYPES:
                raise FeatureStoreError(
                    f"{path}: unsupported {kind} dtype {value!r}; choose one of {FEATURE_DTYPES}"
                )
        self._extras_dtype = extras_dtype
        if meta is not None and "store" in meta:
            raise FeatureStoreError(f"{path}: 'store' is a reserved meta.json key")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / STORE_LAYOUT_FILE).exists():
            self._refuse_foreign_directory()  # before the lock: a refused folder gets no .lock file
        self._lock = self._acquire_lock()
        self._handles: dict[str, IO[bytes]] = {}
        self._finalised_on_disk = (self.path / STORE_META_FILE).exists()
        self._closed = False
        self._layout: dict[str, Any] | None = None
        self._ids: dict[int, int] = {}
        self._num_rows = 0
        try:
            self._open_existing(feature_dim, dtype, meta)
        except BaseException:
            self.close()  # a refused store is not kept locked
            raise

    def _open_existing(self, feature_dim: int | None, dtype: str, meta: dict[str, Any] | None) -> None:
        layout_path = self.path / STORE_LAYOUT_FILE
        if layout_path.exists():
            self._resume(layout_path, feature_dim, dtype, meta)
        else:
            self._feature_dim, self._dtype = feature_dim, dtype
            self._user_meta = dict(meta or {})
            self._created = _now()

    # -- setup

    def _acquire_lock(self) -> FileLock:
        """One writer per store: a second one (another process, or another writer here) is refused at once.

        ``filelock`` takes an OS lock on ``.lock`` (flock on POSIX, msvcrt on Windows) that the OS drops
        when the holder dies, so a killed extraction never leaves a stale lock behind.
        """
        lock = FileLock(self.path / STORE_LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FeatureStoreError(
                f"{self.path}: feature store is being written by another process"
            ) from None
        return lock

    def _refuse_foreign_directory(self) -> None:
        others = [p.name for p in self.path.iterdir() if not p.name.startswith(".")]  # hidden: the lock, ...
        if others:
            raise FeatureStoreError(
                f"{self.path}: directory is not empty and is not a feature store (found {sorted(others)[:5]})"
            )

    def _resume(
        self, layout_path: Path, feature_dim: int | None, dtype: str, meta: dict[str, Any] | None
    ) -> None:
        layout = _read_layout(layout_path)
        if feature_dim is not None and feature_dim != layout["feature_dim"]:
            raise FeatureStoreError(
                f"{self.path}: existing store has feature dim {layout['feature_dim']}, "
                f"asked to write {feature_dim}"
            )
        if dtype != layout["dtype"]:
            raise FeatureStoreError(
                f"{self.path}: existing store holds {layout['dtype']} features, asked for {dtype}"
            )
        if (
            self._extras_dtype is not None
            and layout["extras"]
            and self._extras_dtype != layout_extras_dtype(layout)
        ):
            raise FeatureStoreError(
                f"{self.path}: existing store holds {layout_extras_dtype(layout)} extras, "
                f"asked for {self._extras_dtype}"
            )
        self._layout = layout
        self._feature_dim, self._dtype = int(layout["feature_dim"]), str(layout["dtype"])
        self._user_meta = dict(meta) if meta is not None else dict(layout.get("meta", {}))
        self._created = str(layout.get("created", _now()))
        self._recover()

    def _recover(self) -> None:
        """Keep the longest prefix of index entries whose data is fully on disk; cut everything after it."""
        assert self._layout is not None
        index = _read_index(self.path / STORE_INDEX_FILE)
        row_files, image_files = _row_files(self._layout), _image_files(self._layout)
        sizes = {name: self._size(name) for name in (*row_files, *image_files)}
        ends = index[:, 1] + index[:, 2] if len(index) else np.zeros(0, dtype=np.int64)
        keep = 0
        for i in range(len(index)):
            rows_ok = all(ends[i] * row <= sizes[name] for name, (_, row) in row_files.items())
            images_ok = all((i + 1) * size <= sizes[name] for name, (_, size) in image_files.items())
            if not (rows_ok and images_ok) or (i > 0 and index[i, 1] != ends[i - 1]):
                break
            keep = i + 1
        num_rows = int(ends[keep - 1]) if keep else 0
        self._truncate(STORE_INDEX_FILE, keep * INDEX_RECORD_BYTES)
        for name, (_, row) in row_files.items():
            self._truncate(name, num_rows * row)
        for name, (_, size) in image_files.items():
            self._truncate(name, keep * size)
        self._ids = {int(meme_id): i for i, meme_id in enumerate(index[:keep, 0].tolist())}
        self._num_rows = num_rows

    def _size(self, name: str) -> int:
        file_path = self.path / name
        return file_path.stat().st_size if file_path.exists() else 0

    def _truncate(self, name: str, size: int) -> None:
        file_path = self.path / name
        if file_path.exists() and file_path.stat().st_size != size:
            os.truncate(file_path, size)
        elif not file_path.exists() and size == 0:
            file_path.touch()

    def _start_layout(self, record: RegionRecord) -> None:
        dim = self._feature_dim if self._feature_dim is not None else record.feature_dim
        fields = [field for field in OPTIONAL_FIELDS if getattr(record, field) is not None]
        extras = {name: int(np.asarray(value).size) for name, value in sorted(record.extras.items())}
        half = bool(record.extras) and all(np.asarray(v).dtype == np.float16 for v in record.extras.values())
        chosen = self._extras_dtype or ("float16" if half else "float32")
        self._write_layout(int(dim), fields, extras, chosen if extras else "float32")

    def _write_layout(
        self, feature_dim: int, fields: list[str], extras: dict[str, int], extras_type: str = "float32"
    ) -> None:
        self._feature_dim = feature_dim
        self._layout = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "feature_dim": feature_dim,
            "dtype": self._dtype,
            "fields": fields,
            "extras": extras,
            "created": self._created,
            "meta": self._user_meta,
        }
        if extras_type != "float32":  # absent means float32: such stores stay byte-identical to older ones
            self._layout["extras_dtype"] = extras_type
        write_json_atomic(self.path / STORE_LAYOUT_FILE, self._layout)

    # -- writing

    def __contains__(self, meme_id: object) -> bool:
        try:
            return int(meme_id) in self._ids  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def feature_dim(self) -> int | None:
        return self._feature_dim

    def add(self, record: RegionRecord) -> bool:
        """Append one image; returns False (and writes nothing) if its id is already stored."""
        if self._closed:
            raise FeatureStoreError(f"{self.path}: writer is closed")
        meme_id = int(record.meme_id)
        if meme_id in self._ids:
            return False
        if self._layout is None:
            self._start_layout(record)
        arrays = self._validate(record)
        if self._finalised_on_disk:
            # The store changes: it stops being readable until finalize() describes the new contents.
            (self.path / STORE_META_FILE).unlink(missing_ok=True)
            self._finalised_on_disk = False
        for name, array in arrays.items():
            self._handle(name).write(array.tobytes())
        for handle in self._handles.values():
            handle.flush()
        n_rows = arrays[STORE_FEATURES_FILE].shape[0]
        height, width = record.image_size
        entry = np.array([meme_id, self._num_rows, n_rows, int(height), int(width)], dtype="<i8")
        index = self._handle(STORE_INDEX_FILE)
        index.write(entry.tobytes())
        index.flush()
        self._ids[meme_id] = len(self._ids)
        self._num_rows += n_rows
        return True

    def _handle(self, name: str) -> IO[bytes]:
        if name not in self._handles:
            self._handles[name] = open(self.path / name, "ab")
        return self._handles[name]

    def _validate(self, record: RegionRecord) -> dict[str, np.ndarray]:
        """Check one record against the layout; returns file name -> bytes-ready array."""
        assert self._layout is not None
        where = f"{self.path}: meme id {record.meme_id}"
        features = np.asarray(record.features)
        if features.ndim != 2 or features.shape[1] != self._layout["feature_dim"]:
            raise FeatureStoreError(
                f"{where}: features have shape {features.shape}, expected [n, {self._layout['feature_dim']}]"
            )
        n = features.shape[0]
        boxes = np.asarray(record.boxes, dtype=np.float32)
        if boxes.shape != (n, 4):
            raise FeatureStoreError(f"{where}: boxes have shape {boxes.shape}, expected ({n}, 4)")
        height, width = record.image_size
        if int(height) <= 0 or int(width) <= 0:
            raise FeatureStoreError(f"{where}: bad image size {record.image_size}")
        if not np.isfinite(features).all() or not np.isfinite(boxes).all():
            raise FeatureStoreError(f"{where}: features or boxes contain NaN/inf")
        with np.errstate(over="ignore"):  # overflow is reported below, with the meme id
            stored = features.astype(np.dtype(self._dtype).newbyteorder("<"))
        if not np.isfinite(stored).all():
            raise FeatureStoreError(
                f"{where}: feature values overflow {self._dtype} "
                f"(max |x| = {float(np.abs(features).max()):.3g}); "
                "write this store with dtype float32"
            )
        arrays = {STORE_FEATURES_FILE: stored, STORE_BOXES_FILE: boxes.astype(BOXES_DTYPE)}
        for field, dtype in OPTIONAL_FIELDS.items():
            value = getattr(record, field)
            present = field in self._layout["fields"]
            if (value is not None) != present:
                state = "has" if value is not None else "lacks"
                raise FeatureStoreError(
                    f"{where}: record {state} {field}, unlike the first record of this store"
                )
            if value is not None:
                value = np.asarray(value).reshape(-1)
                if value.shape != (n,):
                    raise FeatureStoreError(f"{where}: {field} has {value.size} entries, expected {n}")
                arrays[f"{field}.bin"] = value.astype(dtype)
        if set(record.extras) != set(self._layout["extras"]):
            raise FeatureStoreError(
                f"{where}: extras {sorted(record.extras)} differ from this store's "
                f"{sorted(self._layout['extras'])}"
            )
        extra_type = np.dtype(layout_extras_dtype(self._layout)).newbyteorder("<")
        for name, dim in self._layout["extras"].items():
            value = np.asarray(record.extras[name]).reshape(-1)
            if value.size != dim:
                raise FeatureStoreError(f"{where}: extra {name!r} has {value.size} values, expected {dim}")
            with np.errstate(over="ignore"):  # overflow is reported below, with the meme id
                stored = value.astype(extra_type)
            if not np.isfinite(stored).all():
                raise FeatureStoreError(
                    f"{where}: extra {name!r} holds NaN/inf or overflows {extra_type.name}"
                )
            arrays[_extra_file(name)] = stored
        return arrays

    def finalize(self) -> Path:
        """Sync the data and write ``meta.json`` atomically; after this the store opens for reading."""
        if self._closed:
            raise FeatureStoreError(f"{self.path}: writer is closed")
        if self._layout is None:
            if self._feature_dim is None:
                raise FeatureStoreError(
                    f"{self.path}: cannot finalise an empty store whose feature dim is unknown"
                )
            self._write_layout(int(self._feature_dim), [], {})
        assert self._layout is not None
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
        names = [STORE_INDEX_FILE, *_row_files(self._layout), *_image_files(self._layout)]
        for name in names:
            if not (self.path / name).exists():
                (self.path / name).touch()
        if not self._finalised_on_disk:
            info = {
                key: self._layout[key]
                for key in ("format", "version", "feature_dim", "dtype", "fields", "extras", "extras_dtype")
                if key in self._layout
            }
            info.update(
                num_images=len(self._ids),
                num_rows=self._num_rows,
                files={name: self._size(name) for name in names},
                finalized=_now(),
            )
            meta = {"created": self._created, **self._user_meta, "store": info}
            write_json_atomic(self.path / STORE_META_FILE, meta)
            self._finalised_on_disk = True
        self.close()
        return self.path

    def close(self) -> None:
        """Release files and the lock without finalising (the store stays resumable)."""
        if self._closed:
            return
        for handle in self._handles.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._handles.clear()
        with contextlib.suppress(OSError):
            self._lock.release()
        self._closed = True

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Finalise only on success: an exception leaves a resumable, unreadable store.
        if exc_type is None:
            self.finalize()
        else:
            self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def feature_statistics(
    source: Any, ids: Sequence[int] | None = None, max_images: int = 2000
) -> tuple[list[float], list[float]]:
    """Per-dimension mean and standard deviation of region features over (up to ``max_images``) images.

    Used to standardise weak, hand-made features (grid) for models trained from scratch: their raw
    offsets (colour means around 0.5) otherwise dominate the projected input after LayerNorm. ``source``
    is a FeatureStore or any Mapping of id -> RegionRecord; the first ``max_images`` ids are used, so the
    result is deterministic. A floor of 1e-3 on the deviation keeps constant dimensions finite.
    """
    chosen = list(ids if ids is not None else (source.ids() if hasattr(source, "ids") else source.keys()))
    chosen = chosen[:max_images]
    if not chosen:
        raise FeatureStoreError("feature statistics need at least one image")
    total = None
    total_sq = None
    count = 0
    for meme_id in chosen:
        features = np.asarray(source[meme_id].features, dtype=np.float64)
        if not np.isfinite(features).all():  # one NaN would make every image's standardised input NaN
            raise FeatureStoreError(
                f"meme id {meme_id}: region features hold NaN or inf (feature statistics)"
            )
        total = features.sum(0) if total is None else total + features.sum(0)
        total_sq = (features**2).sum(0) if total_sq is None else total_sq + (features**2).sum(0)
        count += features.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32).tolist(), np.maximum(std, 1e-3).astype(np.float32).tolist()
