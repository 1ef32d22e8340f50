"""vilio / py-bottom-up-attention TSV files: reading (import into a store) and writing.

Format (headerless, tab-separated, one image per line)::

    img_id  img_h  img_w  objects_id  objects_conf  attrs_id  attrs_conf  num_boxes  boxes  features

``img_id`` is the zero-padded file stem (``01235``; vilio converts it with ``int()``), the three counts
are decimal ints, the other six columns are base64 of raw little-endian arrays: int64 [N] ids,
float32 [N] confidences, float32 [N, 4] pixel boxes and float32 [N, D] features.

Quirks of the original we handle on purpose:

* vilio's ``load_obj_tsv`` retried a failed reshape with N+1 rows ("1 out of 10K" lines). We take the
  row count from the arrays themselves: N or N+1 rows agreed on by every column is accepted (and
  reported as repaired); anything else is a bad line, reported with its line number.
* The extraction script appended to the TSV on every re-run, duplicating lines: the first occurrence
  of an id wins, later ones are reported as duplicates.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memeguard.errors import FeatureStoreError
from memeguard.features.record import RegionRecord

TSV_FIELDS: tuple[str, ...] = (
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
)
# Base64 columns: name -> (little-endian dtype, values per box row or None for "feature dim").
_ARRAY_COLUMNS: dict[str, tuple[str, int | None]] = {
    "objects_id": ("<i8", 1),
    "objects_conf": ("<f4", 1),
    "attrs_id": ("<i8", 1),
    "attrs_conf": ("<f4", 1),
    "boxes": ("<f4", 4),
    "features": ("<f4", None),
}


@dataclass
class ImportReport:
    """What an import did; problems carry the line number (TSV) or key (LMDB) of the source."""

    source: str
    out: str
    imported: int = 0
    already_stored: int = 0
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)  # (where, meme id, first seen where)
    repaired: list[tuple[str, int, str]] = field(default_factory=list)  # (where, meme id, what was repaired)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)

    def summary_lines(self, limit: int = 10) -> list[str]:
        lines = [f"{self.source}: imported {self.imported} images into {self.out}"]
        if self.already_stored:
            lines.append(f"  {self.already_stored} already in the store (resumed run), skipped")
        for title, items in (("duplicates (first kept)", self.duplicates), ("repaired", self.repaired)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(
                    f"    {where}: id {meme_id} ({detail})" for where, meme_id, detail in items[:limit]
                )
        if self.bad:
            lines.append(f"  {len(self.bad)} bad lines/entries skipped:")
            lines.extend(f"    {where}: {reason}" for where, reason in self.bad[:limit])
        return lines


class TsvLineError(FeatureStoreError):
    """One TSV line that cannot be decoded; the message starts with ``file:line``."""


def _decode_array(text: bytes, dtype: str, column: str, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TsvLineError(f"{where}: column {column!r} is not valid base64 ({exc})") from None
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise TsvLineError(f"{where}: column {column!r} has {len(raw)} bytes, not a multiple of {itemsize}")
    return np.frombuffer(raw, dtype=dtype)


def _parse_int(text: bytes, column: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TsvLineError(f"{where}: column {column!r} is not an integer ({text[:20]!r})") from None


def _box_rows(arrays: dict[str, np.ndarray], num_boxes: int, where: str) -> tuple[int, bool]:
    """The row count every per-box column agrees on: num_boxes, or num_boxes+1 (vilio's retry)."""
    counts = {name: arrays[name].size // per_row for name, (_, per_row) in _ARRAY_COLUMNS.items() if per_row}
    exact = {
        name: arrays[name].size % per_row == 0 for name, (_, per_row) in _ARRAY_COLUMNS.items() if per_row
    }
    for rows in (num_boxes, num_boxes + 1):
        if all(exact.values()) and all(count == rows for count in counts.values()):
            return rows, rows != num_boxes
    sizes = ", ".join(f"{name}={arrays[name].size}" for name in counts)
    raise TsvLineError(f"{where}: num_boxes={num_boxes} does not match the array sizes ({sizes})")


def parse_tsv_line(line: bytes, where: str, feature_dim: int | None = None) -> tuple[RegionRecord, bool]:
    """Decode one TSV line -> (record, repaired); ``repaired`` means vilio's N+1 rows case."""
    columns = line.rstrip(b"\r\n").split(b"\t")
    if len(columns) != len(TSV_FIELDS):
        raise TsvLineError(f"{where}: expected {len(TSV_FIELDS)} tab-separated columns, found {len(columns)}")
    values = dict(zip(TSV_FIELDS, columns, strict=True))
    meme_id = _parse_int(values["img_id"], "img_id", where)
    height = _parse_int(values["img_h"], "img_h", where)
    width = _parse_int(values["img_w"], "img_w", where)
    num_boxes = _parse_int(values["num_boxes"], "num_boxes", where)
    if height <= 0 or width <= 0 or num_boxes < 0:
        raise TsvLineError(f"{where}: bad image size {height}x{width} or box count {num_boxes}")
    arrays = {
        name: _decode_array(values[name], dtype, name, where) for name, (dtype, _) in _ARRAY_COLUMNS.items()
    }
    rows, repaired = _box_rows(arrays, num_boxes, where)
    features = arrays["features"]
    if rows == 0 or features.size % rows:
        raise TsvLineError(f"{where}: {features.size} feature values cannot be split into {rows} box rows")
    dim = features.size // rows
    if feature_dim is not None and dim != feature_dim:
        raise TsvLineError(f"{where}: feature dim {dim} differs from the first line's {feature_dim}")
    record = RegionRecord(
        meme_id=meme_id,
        features=features.reshape(rows, dim),
        boxes=arrays["boxes"].reshape(rows, 4),
        image_size=(height, width),
        object_ids=arrays["objects_id"],
        object_conf=arrays["objects_conf"],
        attr_ids=arrays["attrs_id"],
        attr_conf=arrays["attrs_conf"],
    )
    return record, repaired


def iter_tsv(
    path: str | os.PathLike[str], report: ImportReport | None = None, skip_bad_lines: bool = False
) -> Iterator[RegionRecord]:
    """Stream records of a TSV in file order, first occurrence of each id only.

    A bad line raises :class:`TsvLineError` (``file:line: reason``) unless ``skip_bad_lines``, in
    which case it is recorded in ``report.bad`` and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"{path}: TSV file not found")
    report = report if report is not None else ImportReport(str(path), "")
    first_seen: dict[int, int] = {}
    feature_dim: int | None = None
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record, repaired = parse_tsv_line(line, where, feature_dim)
            except TsvLineError as exc:
                if not skip_bad_lines:
                    raise
                report.bad.append((where, str(exc).removeprefix(f"{where}: ")))
                continue
            if record.meme_id in first_seen:
                report.duplicates.append(
                    (where, record.meme_id, f"first on line {first_seen[record.meme_id]}")
                )
                continue
            first_seen[record.meme_id] = line_no
            feature_dim = record.feature_dim
            if repaired:
                detail = f"num_boxes says {record.num_boxes - 1}, arrays hold {record.num_boxes} rows"
                report.repaired.append((where, record.meme_id, detail))
            yield record


def import_tsv(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str = "float16",
    skip_bad_lines: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> ImportReport:
    """Import a vilio TSV into a feature store at ``out`` (resumable: ids already there are skipped)."""
    source = ImportSource(Path(path), extractor="import-tsv", source_format="vilio-tsv")
    return source.import_into(
        out, lambda report: iter_tsv(source.path, report, skip_bad_lines), dtype, meta, progress
    )


@dataclass(frozen=True)
class ImportSource:
    """A file or folder of features made elsewhere, and how its store's meta.json names it.

    The importers differ only in how they read records; building the report, the store's meta and the
    progress label is here once, so every imported store records its source the same way.
    """

    path: Path
    extractor: str  # meta.json's "extractor", e.g. "import-tsv"
    source_format: str  # meta.json's "source_format", e.g. "vilio-tsv"

    def import_into(
        self,
        out: str | os.PathLike[str],
        read: Callable[[ImportReport], Iterator[RegionRecord]],
        dtype: str,
        meta: dict[str, Any] | None,
        progress: bool,
    ) -> ImportReport:
        """Stream ``read(report)`` into the store at ``out``; ``meta`` adds to (or overrides) the source's."""
        report = ImportReport(str(self.path), str(out))
        store_meta = {
            "extractor": self.extractor,
            "source": str(self.path.resolve()),
            "source_format": self.source_format,
        }
        return store_records(
            read(report),
            out,
            dtype,
            {**store_meta, **(meta or {})},
            report,
            progress,
            f"importing {self.path.name}",
        )


def store_records(
    records: Iterator[RegionRecord],
    out: str | os.PathLike[str],
    dtype: str,
    meta: dict[str, Any],
    report: ImportReport,
    progress: bool,
    label: str,
) -> ImportReport:
    """Write streamed records into a (resumable) store and finalise it; shared by the importers."""
    from memeguard.features.store import FeatureStoreWriter

    writer = FeatureStoreWriter(out, dtype=dtype, meta=meta)
    try:
        for record in with_progress(records, progress, label):
            if writer.add(record):
                report.imported += 1
            else:
                report.already_stored += 1
    except BaseException:
        writer.close()
        raise
    writer.finalize()
    return report


def with_progress(records: Iterator[RegionRecord], enabled: bool, label: str) -> Iterator[RegionRecord]:
    """A rich spinner counting images; importers stream, so no total is known up front."""
    if not enabled:
        yield from records
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} images"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=None)
        for record in records:
            bar.advance(task)
            yield record


def _b64(array: np.ndarray, dtype: str) -> bytes:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes())


def format_tsv_line(record: RegionRecord) -> bytes:
    """One line in vilio's format; absent detector extras are written as zeros (as for ``vg`` weights)."""
    n = record.num_boxes
    zeros_i, zeros_f = np.zeros(n, dtype="<i8"), np.zeros(n, dtype="<f4")

    def pick(value: np.ndarray | None, default: np.ndarray) -> np.ndarray:
        return default if value is None else np.asarray(value)

    columns = [
        f"{record.meme_id:05d}".encode(),
        str(int(record.image_size[0])).encode(),
        str(int(record.image_size[1])).encode(),
        _b64(pick(record.object_ids, zeros_i), "<i8"),
        _b64(pick(record.object_conf, zeros_f), "<f4"),
        _b64(pick(record.attr_ids, zeros_i), "<i8"),
        _b64(pick(record.attr_conf, zeros_f), "<f4"),
        str(n).encode(),
        _b64(record.boxes, "<f4"),
        _b64(record.features, "<f4"),
    ]
    return b"\t".join(columns) + b"\n"


def write_tsv(path: str | os.PathLike[str], records: Iterable[RegionRecord], append: bool = False) -> Path:
    """Write records as a vilio TSV (for ERNIE-style consumers, tests and benchmarks).

    A fresh file is written atomically; ``append`` mimics the original extraction script.
    """
    from memeguard.io import atomic_write

    path = Path(path)
    if append:
        with open(path, "ab") as handle:
            for record in records:
                handle.write(format_tsv_line(record))
        return path
    with atomic_write(path, "wb") as handle:
        for record in records:
            handle.write(format_tsv_line(record))
    return path
