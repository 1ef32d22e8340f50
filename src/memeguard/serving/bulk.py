"""Bulk scoring: ``memeguard score PATH... --model RUN --out scores.csv`` over folders of raw meme images.

The output streams ``id,proba,label,text,text_source`` (the DrivenData submission columns first, then the
text the models read and whether it was given or read by OCR). A run that is killed loses at most the
batch in flight: every batch is appended as complete rows and flushed to disk (``fsync``) before the next
one starts, and a rerun skips the ids already in the file after dropping a torn last line.

Ids: an image whose file name is a number gets that number (``01235.png`` -> ``1235``, as in Hateful
Memes); any other image gets its file name without the extension (``cat.jpg`` -> ``cat``). Two inputs with
one id are refused, naming both files, so no row is silently overwritten.

Large collections shard with ``torchrun`` (the process group comes from the environment): rank R of W
scores every W-th input of the id-sorted list into ``OUT.partRofW``; after a barrier rank 0 merges the
parts with anything already in OUT, sorted by id, into OUT (written atomically) and removes the parts.
Ranks on machines without a shared disk leave their parts behind; copy them next to OUT and run
``memeguard score --merge --out OUT``.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from memeguard.errors import DataError
from memeguard.io import atomic_write

SCORE_COLUMNS = ("id", "proba", "label", "text", "text_source")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
TEXT_SOURCES = frozenset({"given", "ocr"})
# A rank that finished its share waits this long at the barrier for the slowest one (gloo's default is
# 30 minutes, too short for a large share on a slow machine).
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class BulkInput:
    """One image to score and the id its row carries."""

    id: str
    path: Path


# ------------------------------------------------------------------------------------------ inputs


def _has_magic(pattern: str) -> bool:
    return glob.escape(pattern) != pattern


def collect_images(patterns: Sequence[str]) -> list[Path]:
    """Files as given, image files anywhere under folders, and glob matches; a pattern that names nothing
    is an error (a typo must not silently score an empty set)."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            matches = [path]
        elif _has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        else:
            raise DataError(f"{pattern}: no such file or folder")
        if not matches:
            raise DataError(f"{pattern}: no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        found.extend(matches)
    return sorted(set(found))


def image_id(path: Path) -> str:
    """The numeric stem as a number (``01235.png`` -> ``1235``), else the file name without its extension."""
    stem = path.stem
    return str(int(stem)) if stem.isascii() and stem.isdigit() else stem


def id_sort_key(meme_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order first, then the others by name."""
    if meme_id.isascii() and meme_id.isdigit():
        return (0, int(meme_id), "")
    return (1, 0, meme_id)


def assign_ids(paths: Sequence[Path]) -> list[BulkInput]:
    """One input per image sorted by id; two images with one id are refused with both paths."""
    by_id: dict[str, Path] = {}
    for path in paths:
        meme_id = image_id(path)
        if meme_id in by_id:
            raise DataError(f"{by_id[meme_id]} and {path} both get id {meme_id}; rename one of them")
        by_id[meme_id] = path
    return [BulkInput(meme_id, by_id[meme_id]) for meme_id in sorted(by_id, key=id_sort_key)]


# ------------------------------------------------------------------------------------ score files


def _check_row(row: list[str], where: str) -> None:
    if len(row) != len(SCORE_COLUMNS):
        raise DataError(f"{where}: expected {len(SCORE_COLUMNS)} columns, got {len(row)}")
    try:
        float(row[1])
        int(row[2])
    except ValueError as exc:
        raise DataError(f"{where}: bad proba or label ({exc})") from exc
    if row[4] not in TEXT_SOURCES:
        raise DataError(f"{where}: text_source must be given or ocr, got {row[4]!r}")


def read_score_rows(path: Path, repair: bool = False) -> dict[str, list[str]]:
    """The complete rows of a scores file by id ({} when it does not exist). A torn last row (a kill in the
    middle of a write) is dropped, and with ``repair`` the file is rewritten without it; a bad row
    elsewhere is an error naming the line."""
    if not path.is_file():
        return {}
    content = path.read_text(encoding="utf-8")
    header = ",".join(SCORE_COLUMNS) + "\n"
    if header.startswith(content):  # empty, or killed while writing the header
        return {}
    rows = list(csv.reader(io.StringIO(content, newline="")))
    if rows[0] != list(SCORE_COLUMNS):
        raise DataError(f"{path}: not a memeguard scores file (header {rows[0]}, expected {header.strip()})")
    torn = not content.endswith("\n")
    complete: dict[str, list[str]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        last = line_no == len(rows)
        if last and torn:
            break
        try:
            _check_row(row, f"{path}:{line_no}")
        except DataError:
            if last:  # a torn row that happened to end at a line break inside its quoted text
                torn = True
                break
            raise
        complete[row[0]] = row
    if torn and repair:
        _write_rows(path, complete.values())
    return complete


def _format_rows(rows: Sequence[Sequence[str]] | Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _write_rows(path: Path, rows: Any) -> None:
    """The whole file at once (temp file, then rename): used to repair a torn tail and to merge parts."""
    with atomic_write(path, "w") as handle:
        handle.write(_format_rows([SCORE_COLUMNS, *rows]))


class ScoreAppender:
    """Appends complete rows to a scores file, each batch flushed to disk before the next is scored."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        header = _format_rows([SCORE_COLUMNS])
        fresh = True
        if path.is_file():
            with open(path, encoding="utf-8", newline="") as existing:
                fresh = len(existing.read(len(header))) < len(header)  # empty, or a torn header
        if fresh:
            path.unlink(missing_ok=True)
        self.path = path
        self.handle = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        if fresh:
            self._write(header)

    def _write(self, text: str) -> None:
        self.handle.write(text)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def append(self, rows: Sequence[Sequence[str]]) -> None:
        if rows:
            self._write(_format_rows(rows))

    def close(self) -> None:
        self.handle.close()


# ---------------------------------------------------------------------------------------- parts


def part_path(out: Path, rank: int, world_size: int) -> Path:
    """Rank ``rank``'s part of ``out``, in the same folder (so nothing lands outside what the user named)."""
    return out.with_name(f"{out.name}.part{rank}of{world_size}")


def part_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{glob.escape(out.name)}.part*of*"))


def merge_parts(out: Path) -> int:
    """OUT's own rows plus every part's, one row per id sorted by id, written atomically; the parts are
    removed afterwards. Returns the number of rows."""
    rows = read_score_rows(out, repair=True)
    parts = part_files(out)
    for part in parts:
        for meme_id, row in read_score_rows(part).items():
            rows.setdefault(meme_id, row)
    _write_rows(out, [rows[meme_id] for meme_id in sorted(rows, key=id_sort_key)])
    for part in parts:
        part.unlink()
    return len(rows)


# -------------------------------------------------------------------------------------- scoring


def _batches(items: Sequence[BulkInput], size: int) -> Iterator[Sequence[BulkInput]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_inputs(
    scorer: Any,
    inputs: Sequence[BulkInput],
    out: Path,
    ocr: str = "auto",
    done: set[str] | frozenset[str] = frozenset(),
    advance: Callable[[int], None] = lambda n: None,
) -> int:
    """Score the inputs not in ``done`` into ``out`` (appending), ``scorer.batch_size`` at a time.

    Batches are cut from the whole input list before the done ones are dropped: a resumed run then puts
    the same memes in one model call as an uninterrupted one (a kill loses whole batches), and padding
    to the same text length gives the same bits."""
    from memeguard.serving.scorer import load_image

    scored = 0
    appender = ScoreAppender(out)
    try:
        for whole in _batches(inputs, scorer.batch_size):
            batch = [item for item in whole if item.id not in done]
            advance(len(whole) - len(batch))
            if not batch:
                continue
            names = [str(item.path) for item in batch]
            images = [load_image(item.path, name) for item, name in zip(batch, names, strict=True)]
            scores = scorer.score_images(images, None, ocr=ocr, contexts=names)
            appender.append(
                [
                    (item.id, repr(float(s.proba)), int(s.label), s.text, s.text_source)
                    for item, s in zip(batch, scores, strict=True)
                ]
            )
            advance(len(batch))
            scored += len(batch)
    finally:
        appender.close()
    return scored


@dataclass(frozen=True)
class _Group:
    rank: int = 0
    world_size: int = 1


def _join_group(device: Any) -> tuple[_Group, bool]:
    """This process's rank under torchrun (and whether we initialised the group), else rank 0 of 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Group(dist.get_rank(), dist.get_world_size()), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Group(), False
    backend = "nccl" if getattr(device, "type", "cpu") == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    return _Group(dist.get_rank(), dist.get_world_size()), True


def bulk_score(
    scorer: Any, patterns: Sequence[str], out: Path, ocr: str = "auto", progress: bool = True
) -> tuple[int, int]:
    """Score every image the patterns name into ``out``; returns (memes in out, memes scored now).

    Under torchrun every rank scores its stride of the id-sorted inputs into its own part file, and rank 0
    merges them into ``out`` once all ranks are done (rank 0 returns the merged count, others 0).
    """
    import torch.distributed as dist

    inputs = assign_ids(collect_images(patterns))
    group, owns_group = _join_group(getattr(scorer, "device", None))
    try:
        if group.world_size == 1:
            done = set(read_score_rows(out, repair=True))
            with progress_bar(progress, len(inputs)) as advance:
                scored = score_inputs(scorer, inputs, out, ocr, done, advance)
            return len(done) + scored, scored
        mine = inputs[group.rank :: group.world_size]
        own_part = part_path(out, group.rank, group.world_size)
        done = set(read_score_rows(out)) | set(read_score_rows(own_part, repair=True))
        for part in part_files(out):
            done |= set(read_score_rows(part))
        with progress_bar(progress and group.rank == 0, len(mine)) as advance:
            scored = score_inputs(scorer, mine, own_part, ocr, done, advance)
        dist.barrier()
        total = merge_parts(out) if group.rank == 0 else 0
        dist.barrier()  # no rank exits (and no rerun starts) before the merge is on disk
        return total, scored
    finally:
        if owns_group:
            dist.destroy_process_group()


class progress_bar:
    """A rich progress bar when asked for, else a no-op ``advance``: one place for the bulk and the
    jsonl scorers, so ``rich`` is imported only when a bar is shown."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress()
        self.bar.start()
        task = self.bar.add_task("scoring", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
