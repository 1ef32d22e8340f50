"""vilio's ``clean_data`` (``utils/pandas_scripts.py``), reproduced rule for rule but non-destructive.

vilio overwrote ``train.jsonl`` in place; we write new files to an output folder:

* ``train_clean.jsonl`` = train − removed ids + dev_unseen rows not in dev_seen ("dev_unseen_new");
* ``traindev.jsonl``    = train_clean + dev_seen;
* ``pretrain.jsonl``    = train + dev_seen + dev_unseen_new − the four ``dim_error`` ids, missing labels → 0;
* ``cleaning_report.json``: every removed / added / excluded id and the rule that did it.

Duplicate rule: rows of train, dev_seen, dev_unseen_new (in that order) are grouped by perceptual hash
(``imagehash.phash``, compared as strings). A group with at least one duplicated text *and* at least one
duplicated "crude hash" is a duplicate: with exactly two rows and equal labels the first row's id is
removed; other groups are left to the hard-coded ISIS (31) and ADD (3) id lists. Removal applies to train
only, as in vilio (ids matched outside train are reported, not removed).

Hashes are cached in ``OUT/.hash_cache.json`` keyed by image path, size and mtime.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np

from memeguard.data.hm import format_jsonl, image_path, read_split, split_path
from memeguard.data.images import open_image_raw
from memeguard.data.meme import Meme
from memeguard.errors import DataError
from memeguard.io import atomic_write, write_json_atomic, write_text_atomic
from memeguard.names import (
    CLEANING_REPORT_FILE,
    DEV_SEEN,
    DEV_UNSEEN,
    HASH_CACHE_FILE,
    IMAGE_DIR,
    OFFICIAL_SPLITS,
    PRETRAIN,
    TRAIN,
    TRAIN_CLEAN,
    TRAINDEV,
    split_file,
)

ISIS_DUPS: tuple[int, ...] = (
    35097,
    97542,
    91562,
    71368,
    29013,
    85173,
    15072,
    1348,
    70269,
    36804,
    68954,
    91270,
    64781,
    96078,
    97162,
    34518,
    17834,
    31408,
    56134,
    68231,
    98517,
    27156,
    10793,
    82169,
    25780,
    25913,
    95401,
    94850,
    50624,
    92845,
    58732,
)
ADD_DUPS: tuple[int, ...] = (54981, 71903, 69087)
DIM_ERROR_IDS: tuple[int, ...] = (63805, 73026, 16845, 27058)
HASH_CACHE_VERSION = 1
# Written first into every output folder: re-running into a folder with it is allowed, any other
# non-empty folder is refused (``data synth`` marks its folders the same way).
CLEAN_MARKER_FILE = ".memeguard_clean"


def crude_hash(pixels: np.ndarray) -> str:
    """vilio's "crude hash": image size + the first coloured pixel on the anti-diagonal from the top-right.

    Walk (row 0, col −1), (1, −2), ... until a pixel has 1 < R < 255 and R != G != B (a Python chained
    comparison: R != G and G != B). If the walk runs off the image (or the array has no channel axis),
    walk again requiring only 1 < R < 255 and hash the whole pixel's string form three times; failing that,
    treat the array as 2-D grey values. ``pixels`` is the raw ``np.asarray(Image.open(path), "int32")``.
    An image with no qualifying pixel at all made vilio crash; it gets ``"<h><w>none"`` here.
    """
    height, width = pixels.shape[0], pixels.shape[1]
    prefix = f"{height}{width}"

    def walk(accept) -> tuple[int, int]:
        row, col = 0, -1
        while not accept(row, col):
            row, col = row + 1, col - 1
        return row, col

    def coloured(row: int, col: int) -> bool:
        # Evaluated in vilio's short-circuit order: a channel is only read when the test needs it.
        red = pixels[row, col, 0]
        if not 255 > red > 1:
            return False
        green = pixels[row, col, 1]
        if red == green:
            return False
        return bool(green != pixels[row, col, 2])

    try:
        row, col = walk(coloured)
        return prefix + f"{pixels[row, col, 0]}{pixels[row, col, 1]}{pixels[row, col, 2]}"
    except IndexError:
        pass
    try:
        row, col = walk(lambda r, c: bool(255 > pixels[r, c, 0] > 1))
        return prefix + str(pixels[row, col]) * 3
    except IndexError:
        pass
    try:
        row, col = walk(lambda r, c: bool(255 > pixels[r, c] > 1))
        return prefix + str(pixels[row, col]) * 3
    except (IndexError, ValueError):
        return prefix + "none"


@dataclass
class ImageHashes:
    phash: str
    crude: str


def _hash_image(path: Path, context: str) -> ImageHashes:
    image = open_image_raw(path, context)
    return ImageHashes(phash=str(imagehash.phash(image)), crude=crude_hash(np.asarray(image, dtype="int32")))


class HashCache:
    """Hashes keyed by (path, size, mtime): a rerun does not rehash unchanged images."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, object]] = {}
        self.dirty = False
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("version") == HASH_CACHE_VERSION:
                    self.entries = data.get("entries", {})
            except (json.JSONDecodeError, AttributeError):
                self.entries = {}  # a corrupt cache is only a cache: rebuild it

    def get(self, image: Path, context: str) -> ImageHashes:
        stat = image.stat() if image.is_file() else None
        key = str(image.resolve())
        entry = self.entries.get(key)
        if (
            stat is not None
            and entry
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            return ImageHashes(str(entry["phash"]), str(entry["crude"]))
        hashes = _hash_image(image, context)
        assert stat is not None  # _hash_image raised otherwise
        self.entries[key] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "phash": hashes.phash,
            "crude": hashes.crude,
        }
        self.dirty = True
        return hashes

    def save(self) -> None:
        if self.dirty:
            write_json_atomic(
                self.path, {"version": HASH_CACHE_VERSION, "entries": self.entries}, indent=None
            )
            self.dirty = False


@dataclass
class CleaningResult:
    train_clean: list[Meme]
    traindev: list[Meme]
    pretrain: list[Meme]
    report: dict[str, object] = field(default_factory=dict)


def find_duplicate_removals(
    rows: list[tuple[str, Meme]], hashes: dict[tuple[str, int], ImageHashes]
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Apply vilio's exactly-two-rows rule. Returns (matched removals, conflicting-label pairs)."""
    groups: dict[str, list[tuple[str, Meme]]] = defaultdict(list)
    for source, meme in rows:
        groups[hashes[(source, meme.id)].phash].append((source, meme))
    removals: list[dict[str, object]] = []
    conflicts: list[dict[str, object]] = []
    for phash, group in groups.items():
        if len(group) < 2:
            continue
        text_counts = Counter(meme.text for _, meme in group)
        crude_counts = Counter(hashes[(source, meme.id)].crude for source, meme in group)
        has_text_dup = any(count > 1 for count in text_counts.values())
        has_crude_dup = any(count > 1 for count in crude_counts.values())
        if not (has_text_dup and has_crude_dup) or len(group) != 2:
            continue
        (first_source, first), (_, second) = group
        ids = [first.id, second.id]
        if first.label == second.label:
            removals.append(
                {
                    "id": first.id,
                    "split": first_source,
                    "rule": "duplicate_pair",
                    "group": ids,
                    "phash": phash,
                }
            )
        else:
            conflicts.append({"ids": ids, "labels": [first.label, second.label], "phash": phash})
    return removals, conflicts


def clean_dataset(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    remove_duplicates: bool = True,
) -> CleaningResult:
    """Run vilio's cleaning on ``data_dir`` and write the derived splits and report to ``out_dir``.

    ``remove_duplicates=False`` writes the same derived splits without removing anything (a recipe's
    ``clean: false``), so later stages always find train_clean / traindev / pretrain.
    """
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    _check_out_dir(data_dir, out_dir)
    train = read_split(data_dir, TRAIN)
    dev_seen = read_split(data_dir, DEV_SEEN)
    dev_unseen = read_split(data_dir, DEV_UNSEEN) if split_path(data_dir, DEV_UNSEEN).is_file() else []
    seen_ids = {meme.id for meme in dev_seen}
    dev_unseen_new = [meme for meme in dev_unseen if meme.id not in seen_ids]
    for split_name, memes in ((TRAIN, train), (DEV_SEEN, dev_seen), (DEV_UNSEEN, dev_unseen_new)):
        unlabeled = [meme.id for meme in memes if meme.label is None]
        if unlabeled:
            raise DataError(f"{split_path(data_dir, split_name)}: ids without a label: {unlabeled[:10]}")

    sources = ((TRAIN, train), (DEV_SEEN, dev_seen), (DEV_UNSEEN, dev_unseen_new))
    rows = [(split, meme) for split, memes in sources for meme in memes]
    _claim_out_dir(out_dir)
    cache = HashCache(out_dir / HASH_CACHE_FILE)
    hashes: dict[tuple[str, int], ImageHashes] = {}
    if not remove_duplicates:
        rows = []
    try:
        iterator = _progress(rows, "hashing images") if progress else rows
        for source, meme in iterator:
            context = f"{split_path(data_dir, source).name} (id {meme.id})"
            hashes[(source, meme.id)] = cache.get(image_path(data_dir, meme), context)
    finally:
        cache.save()

    matched, conflicts = find_duplicate_removals(rows, hashes)
    listed = [{"id": i, "rule": "isis_list"} for i in ISIS_DUPS] + [
        {"id": i, "rule": "add_list"} for i in ADD_DUPS
    ]
    if not remove_duplicates:
        listed = []
    train_ids = {meme.id for meme in train}
    candidates = matched + listed
    removed = [c for c in candidates if c["id"] in train_ids]
    remove_ids = {int(c["id"]) for c in removed}
    not_in_train = [c for c in matched if c["id"] not in train_ids]

    kept_train = [meme for meme in train if meme.id not in remove_ids]
    train_clean = kept_train + dev_unseen_new
    traindev = train_clean + dev_seen
    pretrain = [
        Meme(m.id, m.img, m.text, 0 if m.label is None else m.label)
        for m in train + dev_seen + dev_unseen_new
        if m.id not in DIM_ERROR_IDS
    ]
    excluded = [
        {"id": i, "rule": "dim_error"}
        for i in DIM_ERROR_IDS
        if i in {m.id for m in train + dev_seen + dev_unseen_new}
    ]

    report: dict[str, object] = {
        "data_dir": str(data_dir),
        "counts": {
            TRAIN: len(train),
            DEV_SEEN: len(dev_seen),
            DEV_UNSEEN: len(dev_unseen),
            "dev_unseen_new": len(dev_unseen_new),
            "removed": len(remove_ids),
            TRAIN_CLEAN: len(train_clean),
            TRAINDEV: len(traindev),
            PRETRAIN: len(pretrain),
        },
        "removed": sorted(removed, key=lambda c: (str(c["rule"]), int(c["id"]))),
        "added": [
            {"id": m.id, "rule": "dev_unseen_new", "to": [TRAIN_CLEAN, TRAINDEV, PRETRAIN]}
            for m in dev_unseen_new
        ],
        "pretrain_excluded": excluded,
        "matched_outside_train": not_in_train,
        "conflicting_label_pairs": conflicts,
        "listed_ids_absent": sorted(int(c["id"]) for c in listed if c["id"] not in train_ids),
    }
    outputs = {split_file(split): source for split, source in _official_split_files(data_dir).items()}
    for split, memes in ((TRAIN_CLEAN, train_clean), (TRAINDEV, traindev), (PRETRAIN, pretrain)):
        outputs[split_file(split)] = format_jsonl(memes).encode("utf-8")
    outputs[CLEANING_REPORT_FILE] = (json.dumps(report, indent=2) + "\n").encode("utf-8")
    _publish(data_dir, out_dir, outputs)
    return CleaningResult(train_clean=train_clean, traindev=traindev, pretrain=pretrain, report=report)


def _check_out_dir(data_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder that is the input, not a folder, or holds files this command did not write.

    A folder is ours when it carries :data:`CLEAN_MARKER_FILE` (written before anything else) or a
    ``cleaning_report.json`` (folders cleaned before the marker existed): re-running into it is allowed.
    """
    if out_dir.resolve() == data_dir.resolve():
        raise DataError(
            f"{out_dir}: the output folder must differ from the dataset folder (inputs are never overwritten)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: the output path exists and is not a folder")
    ours = (out_dir / CLEAN_MARKER_FILE).is_file() or (out_dir / CLEANING_REPORT_FILE).is_file()
    if out_dir.is_dir() and not ours and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir}: the output folder is not empty and was not written by 'data clean'; "
            "give a new or empty folder"
        )


def _claim_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and mark it as a cleaning output before the hash cache or any output lands in it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / CLEAN_MARKER_FILE
    if not marker.is_file():
        write_text_atomic(marker, "written by memeguard data clean\n")


def _official_split_files(data_dir: Path) -> dict[str, bytes]:
    """The official split files' bytes, copied so that the output folder is a complete dataset."""
    files: dict[str, bytes] = {}
    for split in OFFICIAL_SPLITS:
        source = split_path(data_dir, split)
        if source.is_file():
            files[split] = source.read_bytes()
    return files


def _publish(data_dir: Path, out_dir: Path, outputs: dict[str, bytes]) -> None:
    """Write ``outputs`` (file name -> bytes, the report last) into ``out_dir`` so that a crash never leaves
    a half-written set: every file is first written in full as a temporary file, and only then are they
    renamed into place, the report last. The old report is removed before the first rename, so a folder
    with a report always holds the outputs that report describes.

    ``atomic_write`` renames its temporary file when its block exits; the blocks are nested in reverse
    order, so the innermost (the first file) is renamed first and the outermost (the report) last. Any
    failure before that point removes every temporary file and leaves ``out_dir`` as it was.
    """
    with contextlib.ExitStack() as stack:
        staged = [
            (stack.enter_context(atomic_write(out_dir / name, "wb")), data)
            for name, data in reversed(list(outputs.items()))
        ]
        for handle, data in staged:
            handle.write(data)
        _link_images(data_dir, out_dir)
        (out_dir / CLEANING_REPORT_FILE).unlink(missing_ok=True)


def _link_images(data_dir: Path, out_dir: Path) -> None:
    """An ``img`` link to the dataset's images, so later stages take one ``--data`` folder holding both
    official and cleaned splits."""
    link = out_dir / IMAGE_DIR
    if not link.exists() and (data_dir / IMAGE_DIR).is_dir():
        if link.is_symlink():
            link.unlink()  # dangling link from a moved dataset
        link.symlink_to((data_dir / IMAGE_DIR).resolve(), target_is_directory=True)


def _progress(items: list, description: str):
    from rich.progress import track

    return track(items, description=description, transient=True)
