"""Dataset validation and summary (``memeguard data check``): every error found, not just the first."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memeguard.data.hm import available_splits, image_path, read_split, split_path
from memeguard.data.images import image_size
from memeguard.data.meme import Meme
from memeguard.errors import DataError
from memeguard.names import OFFICIAL_SPLITS


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
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

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
        report.errors.append(f"{data_dir}: dataset directory not found")
        return report
    names = available_splits(data_dir)
    if not any(name in OFFICIAL_SPLITS for name in names):
        report.errors.append(f"{data_dir}: no split files found (expected e.g. train.jsonl, dev_seen.jsonl)")
        return report
    splits: dict[str, list[Meme]] = {}
    for name in names:
        try:
            memes = read_split(data_dir, name)
        except DataError as exc:
            report.errors.append(str(exc))
            continue
        splits[name] = memes
        labelled = [m for m in memes if m.label is not None]
        report.splits.append(
            SplitSummary(
                name,
                split_path(data_dir, name).name,
                len(memes),
                len(labelled),
                sum(m.label for m in labelled),
            )
        )
    official = [name for name in OFFICIAL_SPLITS if name in splits]
    for i, first in enumerate(official):
        for second in official[i + 1 :]:
            shared = {m.id for m in splits[first]} & {m.id for m in splits[second]}
            if shared:
                report.overlaps[f"{first} & {second}"] = len(shared)
    if check_images:
        seen: dict[str, tuple[int, int]] = {}
        for name, memes in splits.items():
            for meme in memes:
                if meme.img in seen:
                    continue
                context = f"{split_path(data_dir, name).name} (id {meme.id})"
                try:
                    seen[meme.img] = image_size(image_path(data_dir, meme), context)
                except DataError as exc:
                    report.errors.append(str(exc))
                    seen[meme.img] = (-1, -1)
        for height, width in seen.values():
            if height > 0:
                report.image_heights.append(height)
                report.image_widths.append(width)
    return report
