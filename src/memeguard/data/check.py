"""Dataset validation and summary (``memeguard data check``): every error found, not just the first."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memeguard.data.hm import (
    REQUIRED_SPLITS,
    available_splits,
    empty_split_message,
    image_path,
    parse_jsonl,
    split_path,
)
from memeguard.data.images import image_size
from memeguard.data.meme import Meme
from memeguard.errors import DataError
from memeguard.names import OFFICIAL_SPLITS

# Errors kept in a report; the rest are only counted, so a broken million-line file stays a short report.
MAX_REPORTED_ERRORS = 20


@dataclass
class SplitSummary:
    name: str
    file: str
    count: int
    labelled: int
    hateful: int


@dataclass
class CheckReport:
    data_dir: str
    splits: list[SplitSummary] = field(default_factory=list)
    overlaps: dict[str, int] = field(default_factory=dict)  # "a & b" -> shared ids
    image_heights: list[int] = field(default_factory=list)
    image_widths: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS
    errors_left_off: int = 0  # errors found beyond those
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add_error(self, message: str) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(message)
        else:
            self.errors_left_off += 1

    def image_stats(self) -> dict[str, float]:
        if not self.image_heights:
            return {}
        h = np.asarray(self.image_heights)
        w = np.asarray(self.image_widths)
        return {
            "images": float(len(h)),
            "height_min": float(h.min()),
            "height_mean": float(h.mean()),
            "height_max": float(h.max()),
            "width_min": float(w.min()),
            "width_mean": float(w.mean()),
            "width_max": float(w.max()),
        }


def check_dataset(data_dir: str | os.PathLike[str], check_images: bool = True) -> CheckReport:
    """Validate every split file and (optionally) every image; collect all problems in ``errors``."""
    data_dir = Path(data_dir)
    report = CheckReport(data_dir=str(data_dir))
    if not data_dir.is_dir():
        report.add_error(f"{data_dir}: dataset directory not found")
        return report
    names = available_splits(data_dir)
    if not any(name in OFFICIAL_SPLITS for name in names):
        report.add_error(f"{data_dir}: no split files found (expected e.g. train.jsonl, dev_seen.jsonl)")
        return report
    splits = {name: _check_split(data_dir, name, report) for name in names}
    _check_ids_across_splits(data_dir, splits, report)
    official = [name for name in OFFICIAL_SPLITS if name in splits]
    for i, first in enumerate(official):
        for second in official[i + 1 :]:
            shared = {m.id for _, m in splits[first]} & {m.id for _, m in splits[second]}
            if shared:
                report.overlaps[f"{first} & {second}"] = len(shared)
    if check_images:
        _check_images(data_dir, splits, report)
    return report


def _check_split(data_dir: Path, name: str, report: CheckReport) -> list[tuple[int, Meme]]:
    """The valid (line, meme) pairs of one split; every bad line, and an empty split, goes to ``report``."""
    path = split_path(data_dir, name)
    bad_lines = 0

    def record(exc: DataError) -> None:
        nonlocal bad_lines
        bad_lines += 1
        report.add_error(str(exc))

    numbered = parse_jsonl(path, on_error=record)
    if not numbered and not bad_lines:
        message = empty_split_message(path, name)
        if name in REQUIRED_SPLITS:
            report.add_error(message)
        else:
            report.warnings.append(message)
    labelled = [meme for _, meme in numbered if meme.label is not None]
    hateful = sum(meme.label for meme in labelled if meme.label is not None)
    report.splits.append(SplitSummary(name, path.name, len(numbered), len(labelled), hateful))
    return numbered


def _check_ids_across_splits(
    data_dir: Path, splits: dict[str, list[tuple[int, Meme]]], report: CheckReport
) -> None:
    """One id is one meme: feature stores key images by id, so two images under one id cannot both be
    extracted. Each clash names both lines."""
    first_use: dict[int, tuple[str, str]] = {}  # id -> (file:line, img)
    for name, numbered in splits.items():
        file_name = split_path(data_dir, name)
        for line_no, meme in numbered:
            where = f"{file_name}:{line_no}"
            if meme.id not in first_use:
                first_use[meme.id] = (where, meme.img)
                continue
            first_where, first_img = first_use[meme.id]
            if first_img != meme.img:
                report.add_error(
                    f"{where} (id {meme.id}): image {meme.img!r} differs from {first_img!r} "
                    f"given for the same id at {first_where}"
                )


def _check_images(data_dir: Path, splits: dict[str, list[tuple[int, Meme]]], report: CheckReport) -> None:
    """Decode every image once (bombs, truncation, missing files) and collect the sizes. PIL decodes without
    the GIL, so the images are decoded on every core; the errors are reported in file order all the same."""
    from memeguard.threads import map_in_threads

    first: dict[str, tuple[str, Meme]] = {}  # img -> (split, its first meme)
    for name, numbered in splits.items():
        for _, meme in numbered:
            first.setdefault(meme.img, (name, meme))

    def size_or_error(item: tuple[str, Meme]) -> tuple[int, int] | DataError:
        name, meme = item
        try:
            return image_size(image_path(data_dir, meme), f"{split_path(data_dir, name).name} (id {meme.id})")
        except DataError as exc:
            return exc

    seen: dict[str, tuple[int, int]] = {}
    for img, result in zip(first, map_in_threads(size_or_error, list(first.values()), "decode"), strict=True):
        if isinstance(result, DataError):
            report.add_error(str(result))
            result = (-1, -1)
        seen[img] = result
    for height, width in seen.values():
        if height > 0:
            report.image_heights.append(height)
            report.image_widths.append(width)
