"""Reading and validating Hateful Memes splits (official layout: ``img/`` + ``<split>.jsonl``).

Every problem is reported with the file and line (or the meme id), as a :class:`DataError`.
Blank lines are tolerated; phase-1 names (``dev.jsonl``, ``test.jsonl``) stand in for
``dev_seen``/``test_seen`` when the phase-2 files are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from memeguard.data.meme import Meme
from memeguard.errors import DataError
from memeguard.names import OFFICIAL_SPLITS, PHASE1_ALIASES, PRETRAIN, TRAIN_CLEAN, TRAINDEV, split_file

# ``SPLITS`` is public (``memeguard.data.SPLITS``): kept as a name for ``names.OFFICIAL_SPLITS``.
SPLITS: tuple[str, ...] = OFFICIAL_SPLITS
DERIVED_SPLITS: tuple[str, ...] = (TRAIN_CLEAN, TRAINDEV, PRETRAIN)


def _parse_id(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: 'id' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise DataError(f"{where}: 'id' must be an integer, got {value!r}")


def _parse_label(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise DataError(f"{where}: 'label' must be 0 or 1, got {value!r}")
    return int(value)


def parse_meme(record: object, where: str) -> Meme:
    """One decoded jsonl object -> Meme; ``where`` ("file:line") prefixes every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("id", "img", "text"):
        if key not in record:
            raise DataError(f"{where}: missing field {key!r}")
    meme_id = _parse_id(record["id"], where)
    if not isinstance(record["img"], str) or not record["img"]:
        raise DataError(f"{where} (id {meme_id}): 'img' must be a non-empty string")
    if not isinstance(record["text"], str):
        raise DataError(
            f"{where} (id {meme_id}): 'text' must be a string, got {type(record['text']).__name__}"
        )
    label = _parse_label(record.get("label"), f"{where} (id {meme_id})")
    return Meme(id=meme_id, img=record["img"], text=record["text"], label=label)


def load_jsonl(path: str | os.PathLike[str]) -> list[Meme]:
    """Parse a split file; rejects malformed JSON, missing fields, bad labels and duplicate ids."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    memes: list[Meme] = []
    first_line: dict[int, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            meme = parse_meme(record, where)
            if meme.id in first_line:
                raise DataError(f"{where}: duplicate id {meme.id} (first seen on line {first_line[meme.id]})")
            first_line[meme.id] = line_no
            memes.append(meme)
    return memes


def split_path(data_dir: str | os.PathLike[str], split: str) -> Path:
    """The jsonl file of ``split``, honouring the phase-1 names."""
    data_dir = Path(data_dir)
    path = data_dir / split_file(split)
    if not path.is_file() and split in PHASE1_ALIASES:
        alias = data_dir / split_file(PHASE1_ALIASES[split])
        if alias.is_file():
            return alias
    return path


def read_split(data_dir: str | os.PathLike[str], split: str) -> list[Meme]:
    """All memes of ``split`` (e.g. ``train``, ``dev_seen``, ``train_clean``) in file order."""
    return load_jsonl(split_path(data_dir, split))


def available_splits(data_dir: str | os.PathLike[str]) -> list[str]:
    """Official and derived splits present in ``data_dir``, in canonical order."""
    return [split for split in (*SPLITS, *DERIVED_SPLITS) if split_path(data_dir, split).is_file()]


def load_dataset(
    data_dir: str | os.PathLike[str], splits: tuple[str, ...] | None = None
) -> dict[str, list[Meme]]:
    """{split: memes} for the official splits present (or the given ones, which must exist)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: dataset directory not found")
    names = splits if splits is not None else tuple(s for s in SPLITS if split_path(data_dir, s).is_file())
    if not names:
        raise DataError(f"{data_dir}: no split files found (expected {', '.join(map(split_file, SPLITS))})")
    return {split: read_split(data_dir, split) for split in names}


def image_path(data_dir: str | os.PathLike[str], meme: Meme) -> Path:
    """Where the meme's image lives (``img`` is relative to the dataset folder)."""
    return Path(data_dir) / meme.img


def write_jsonl(path: str | os.PathLike[str], memes: list[Meme]) -> None:
    """Write memes in the official line format, atomically."""
    from memeguard.io import atomic_write

    with atomic_write(path) as handle:
        for meme in memes:
            handle.write(json.dumps(meme.to_json(), ensure_ascii=False) + "\n")
