"""Reading and validating Hateful Memes splits (official layout: ``img/`` + ``<split>.jsonl``).

Every problem is reported with the file and line (or the meme id), as a :class:`DataError`. This is the
edge where dataset lines enter, so everything later stages rely on is checked here, once: ids fit the
feature store's int64 index, ``img`` stays inside the dataset folder, text is valid Unicode
(:func:`memeguard.data.text.check_text`). Blank lines are tolerated; phase-1 names (``dev.jsonl``,
``test.jsonl``) stand in for ``dev_seen``/``test_seen`` when the phase-2 files are absent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from memeguard.data.meme import Meme
from memeguard.data.text import check_text
from memeguard.errors import DataError
from memeguard.names import (
    DEV_SEEN,
    OFFICIAL_SPLITS,
    PHASE1_ALIASES,
    PRETRAIN,
    TRAIN,
    TRAIN_CLEAN,
    TRAINDEV,
    split_file,
)

# ``SPLITS`` is public (``memeguard.data.SPLITS``): kept as a name for ``names.OFFICIAL_SPLITS``.
SPLITS: tuple[str, ...] = OFFICIAL_SPLITS
DERIVED_SPLITS: tuple[str, ...] = (TRAIN_CLEAN, TRAINDEV, PRETRAIN)


# Ids become int64 keys of the feature store's index: anything outside [0, 2**63) cannot be stored.
MAX_ID = 2**63 - 1
# Splits nothing can run without: an empty one is an error; any other empty split gets a warning.
REQUIRED_SPLITS: tuple[str, ...] = (TRAIN, DEV_SEEN, TRAIN_CLEAN, TRAINDEV, PRETRAIN)

log = logging.getLogger(__name__)


def _parse_id(value: object, where: str) -> int:
    meme_id: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        meme_id = value
    elif isinstance(value, float) and value.is_integer():
        meme_id = int(value)
    elif isinstance(value, str) and value.strip().isdecimal():
        digits = value.strip().lstrip("0") or "0"
        # a 5,000-digit string would make int() itself fail; anything over 19 digits is out of range
        meme_id = int(digits) if len(digits) <= 19 else MAX_ID + 1
    if meme_id is None:
        raise DataError(f"{where}: 'id' must be an integer, got {value!r}")
    if not 0 <= meme_id <= MAX_ID:
        raise DataError(f"{where}: 'id' must be between 0 and 2**63-1, got {str(value)[:40]}")
    return meme_id


def _parse_label(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise DataError(f"{where}: 'label' must be 0 or 1, got {value!r}")
    return int(value)


def check_img(img: object, where: str) -> str:
    """``img`` if it names a file inside the dataset folder: relative, without ``..``, no NUL byte.

    The check is on the text, not the resolved path, so an ``img/`` folder that is a symlink (``data clean``
    makes one) stays allowed while ``../x.png``, ``img/../../x.png`` and ``/etc/passwd`` are refused.
    ``..`` is refused even when it would stay inside: through a symlinked folder it climbs the target.
    """
    if not isinstance(img, str) or not img:
        raise DataError(f"{where}: 'img' must be a non-empty string")
    check_text(img, where, field="img")
    # plain string tests: PurePosixPath costs more than parsing the whole line, on every line
    if img.startswith("/") or ".." in img.split("/") or "\0" in img:
        raise DataError(
            f"{where}: 'img' {img[:200]!r} is outside the dataset folder "
            "(it must be a path relative to the folder, without '..')"
        )
    return img


def parse_meme(record: object, where: str) -> Meme:
    """One decoded jsonl object -> Meme; ``where`` ("file:line") prefixes every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("id", "img", "text"):
        if key not in record:
            raise DataError(f"{where}: missing field {key!r}")
    meme_id = _parse_id(record["id"], where)
    where_id = f"{where} (id {meme_id})"
    img = check_img(record["img"], where_id)
    text = check_text(record["text"], where_id)
    label = _parse_label(record.get("label"), where_id)
    return Meme(id=meme_id, img=img, text=text, label=label)


def _decode_line(line: str, where: str) -> object:
    try:
        # the file is read with errors="surrogateescape": a raw surrogate here was an undecodable byte
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(line[exc.start]) - 0xDC00
        raise DataError(
            f"{where}: not valid UTF-8 (byte 0x{byte:02X} at character {exc.start + 1})"
        ) from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON ({exc.msg}; column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        # json raises these for numbers over Python's 4,300-digit limit and for absurd nesting
        raise DataError(f"{where}: malformed JSON ({str(exc)[:120]})") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line; an unreadable file is one DataError."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        # utf-8-sig drops a leading byte-order mark; surrogateescape lets _decode_line name a bad byte's line
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    yield line_no, line
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc.strerror or exc})") from None


def parse_jsonl(
    path: str | os.PathLike[str], on_error: Callable[[DataError], None] | None = None
) -> list[tuple[int, Meme]]:
    """(line number, meme) for every valid line of a split file.

    Without ``on_error`` the first bad line raises; with it every bad line is handed to ``on_error`` and
    skipped, so ``data check`` can report them all.
    """
    path = Path(path)
    numbered: list[tuple[int, Meme]] = []
    first_line: dict[int, int] = {}
    for line_no, line in _lines(path):
        where = f"{path}:{line_no}"
        try:
            meme = parse_meme(_decode_line(line, where), where)
            if meme.id in first_line:
                raise DataError(f"{where}: duplicate id {meme.id} (first seen on line {first_line[meme.id]})")
        except DataError as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        first_line[meme.id] = line_no
        numbered.append((line_no, meme))
    return numbered


def load_jsonl(path: str | os.PathLike[str]) -> list[Meme]:
    """Parse a split file; rejects malformed JSON, missing fields, bad ids, labels, text or image paths
    and duplicate ids, each with file:line."""
    return [meme for _, meme in parse_jsonl(path)]


def empty_split_message(path: Path, split: str) -> str:
    """What an empty split file means: nothing to train or tune on, or nothing to predict."""
    if split in REQUIRED_SPLITS:
        return f"{path}: split {split!r} has no memes (it is needed to train and tune)"
    return f"{path}: split {split!r} has no memes (nothing to predict for it)"


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
    """All memes of ``split`` (e.g. ``train``, ``dev_seen``, ``train_clean``) in file order.

    An empty split is refused when it is one of :data:`REQUIRED_SPLITS` and logged as a warning otherwise,
    so no stage silently runs on 0 rows.
    """
    path = split_path(data_dir, split)
    memes = load_jsonl(path)
    if not memes:
        if split in REQUIRED_SPLITS:
            raise DataError(empty_split_message(path, split))
        log.warning("%s", empty_split_message(path, split))
    return memes


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
    """Where the meme's image lives (``img`` is relative to the dataset folder).

    Parsing already refused paths that leave the folder; this checks again for memes built in code.
    """
    return Path(data_dir) / check_img(meme.img, f"meme id {meme.id}")


def format_jsonl(memes: list[Meme]) -> str:
    """Memes in the official line format, one JSON object a line."""
    return "".join(json.dumps(meme.to_json(), ensure_ascii=False) + "\n" for meme in memes)


def write_jsonl(path: str | os.PathLike[str], memes: list[Meme]) -> None:
    """Write memes in the official line format, atomically."""
    from memeguard.io import write_text_atomic

    write_text_atomic(path, format_jsonl(memes))
