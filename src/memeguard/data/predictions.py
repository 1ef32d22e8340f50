"""Submission CSVs (``id,proba,label``): validated reading, atomic writing, alignment by id.

``proba`` is a probability in [0, 1] (vilio's PyTorch CSVs held log-probabilities and ERNIE's raw
logits; ours never do). Rows are always matched by ``id``, never by position.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memeguard.errors import DataError
from memeguard.io import atomic_write

HEADER = ("id", "proba", "label")


@dataclass
class Predictions:
    ids: np.ndarray  # int64 [n]
    proba: np.ndarray  # float64 [n], in [0, 1]
    label: np.ndarray  # int64 [n], 0/1

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def as_dict(self) -> dict[int, float]:
        return {int(i): float(p) for i, p in zip(self.ids, self.proba, strict=True)}


def _validate(ids: np.ndarray, proba: np.ndarray, label: np.ndarray, source: str) -> None:
    if not (len(ids) == len(proba) == len(label)):
        raise DataError(f"{source}: ids, proba and label have different lengths")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{source}: duplicate ids {unique[counts > 1][:10].tolist()}")
    bad = ~np.isfinite(proba) | (proba < 0) | (proba > 1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: id {int(ids[index])}: proba {proba[index]!r} is not a probability in [0, 1]"
        )
    if not np.isin(label, (0, 1)).all():
        index = int(np.flatnonzero(~np.isin(label, (0, 1)))[0])
        raise DataError(f"{source}: id {int(ids[index])}: label {label[index]!r} is not 0 or 1")


def make_predictions(
    ids: Sequence[int], proba: Sequence[float], label: Sequence[int] | None = None, threshold: float = 0.5
) -> Predictions:
    ids_arr = np.asarray(ids, dtype=np.int64)
    proba_arr = np.asarray(proba, dtype=np.float64)
    label_arr = (
        (proba_arr >= threshold).astype(np.int64) if label is None else np.asarray(label, dtype=np.int64)
    )
    _validate(ids_arr, proba_arr, label_arr, "predictions")
    return Predictions(ids_arr, proba_arr, label_arr)


def write_predictions(
    path: str | os.PathLike[str],
    ids: Sequence[int] | Predictions,
    proba: Sequence[float] | None = None,
    label: Sequence[int] | None = None,
    threshold: float = 0.5,
) -> Path:
    """Write ``id,proba,label`` atomically; labels default to ``proba >= threshold``."""
    if isinstance(ids, Predictions):
        preds = ids
    else:
        if proba is None:
            raise ValueError("proba is required")
        preds = make_predictions(ids, proba, label, threshold)
    _validate(preds.ids, preds.proba, preds.label, str(path))
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for meme_id, p, lab in zip(preds.ids, preds.proba, preds.label, strict=True):
            writer.writerow((int(meme_id), repr(float(p)), int(lab)))
    return Path(path)


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read and validate a submission CSV; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prediction file not found")
    _refuse_utf16(path)
    ids: list[int] = []
    probas: list[float] = []
    labels: list[int] = []
    # utf-8-sig: a UTF-8 BOM (spreadsheet exports) is read as no character, not as part of "id".
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        line_no = 1
        try:
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header[:3]) != HEADER:
                raise DataError(f"{path}:1: expected header 'id,proba,label', got {header!r}")
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                meme_id, proba, label = _parse_row(row, f"{path}:{line_no}")
                ids.append(meme_id)
                probas.append(proba)
                labels.append(label)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: not UTF-8 text (byte {exc.start} of a block); save it as UTF-8"
            ) from None
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not a readable CSV line ({exc})") from None
    preds = Predictions(
        np.asarray(ids, np.int64), np.asarray(probas, np.float64), np.asarray(labels, np.int64)
    )
    _validate(preds.ids, preds.proba, preds.label, str(path))
    return preds


def _refuse_utf16(path: Path) -> None:
    """A UTF-16 file (Excel's "Unicode text") would fail to decode on its first byte: say what it is."""
    with open(path, "rb") as handle:
        start = handle.read(2)
    if start in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path}: UTF-16 text; save it as UTF-8")


_INT64 = np.iinfo(np.int64)


def _parse_row(row: list[str], where: str) -> tuple[int, float, int]:
    """One ``id,proba,label`` row -> typed values; ``where`` is ``file:line``."""
    if len(row) < 3:
        raise DataError(f"{where}: expected 3 columns, got {len(row)}")
    try:
        meme_id = int(row[0])
        proba = float(row[1])
        label = int(float(row[2]))
    except (ValueError, OverflowError):
        raise DataError(f"{where}: cannot parse {row!r}") from None
    if not _INT64.min <= meme_id <= _INT64.max:
        raise DataError(f"{where}: id {row[0]!r} is outside the 64-bit integer range")
    if not math.isfinite(proba) or not 0.0 <= proba <= 1.0:
        raise DataError(f"{where}: id {meme_id}: proba {row[1]!r} is not a probability in [0, 1]")
    if label not in (0, 1):
        raise DataError(f"{where}: id {meme_id}: label {row[2]!r} is not 0 or 1")
    return meme_id, proba, label


def align_predictions(preds: Predictions, ids: Sequence[int], source: str = "predictions") -> Predictions:
    """Reorder ``preds`` to ``ids``; a missing or extra id is an error that lists them."""
    wanted = np.asarray(ids, dtype=np.int64)
    position = {int(i): k for k, i in enumerate(preds.ids)}
    missing = [int(i) for i in wanted if int(i) not in position]
    extra = sorted(set(position) - {int(i) for i in wanted})
    if missing or extra:

        def show(values: list[int]) -> str:
            return ", ".join(map(str, values[:20])) + (
                f" ... ({len(values)} in all)" if len(values) > 20 else ""
            )

        parts = []
        if missing:
            parts.append(f"missing ids: {show(missing)}")
        if extra:
            parts.append(f"extra ids: {show(extra)}")
        raise DataError(f"{source}: predictions do not match the split ({'; '.join(parts)})")
    order = np.asarray([position[int(i)] for i in wanted], dtype=np.int64)
    return Predictions(preds.ids[order], preds.proba[order], preds.label[order])
