"""vilio's cleaning on a planted dataset: exactly which ids go where, computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from memeguard.cli import main
from memeguard.data.cleaning import crude_hash
from memeguard.data.hm import read_split

# --- crude hash, by hand -------------------------------------------------------------------------


def test_crude_hash_first_coloured_pixel_on_antidiagonal() -> None:
    img = np.full((4, 5, 3), 255, dtype=np.int32)  # white: never qualifies
    img[1, -2] = (10, 10, 30)  # R == G: not "coloured" under R != G != B
    img[2, -3] = (10, 20, 30)
    assert crude_hash(img) == "45" + "102030"


def test_crude_hash_chained_comparison_allows_r_equal_b() -> None:
    img = np.zeros((3, 3, 3), dtype=np.int32)
    img[0, -1] = (50, 60, 50)  # R != G and G != B although R == B: accepted, as in Python's chained !=
    assert crude_hash(img) == "33" + "506050"


def test_crude_hash_grey_fallback_repeats_pixel_string() -> None:
    img = np.full((3, 4, 3), 255, dtype=np.int32)
    img[1, -2] = (100, 100, 100)  # grey: fails the colour test, passes 1 < R < 255
    assert crude_hash(img) == "34" + "[100 100 100]" * 3


def test_crude_hash_two_dimensional_and_no_pixel() -> None:
    grey = np.full((2, 6), 255, dtype=np.int32)
    grey[1, -2] = 77
    assert crude_hash(grey) == "26" + "77" * 3
    assert crude_hash(np.zeros((2, 2, 3), dtype=np.int32)) == "22none"


# --- the planted dataset -------------------------------------------------------------------------


def pattern(seed: int, size: tuple[int, int] = (96, 128)) -> Image.Image:
    """A distinct low-frequency image (distinct perceptual hash per seed), with coloured pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size[1], size[0]), Image.NEAREST)


def build(root: Path) -> None:
    (root / "img").mkdir(parents=True)
    images: dict[int, Image.Image] = {}
    # identical image + text, same label (train 11, 12) -> remove 11, the first
    images[11] = images[12] = pattern(1)
    # same image, other text (13, 14) -> kept
    images[13] = images[14] = pattern(2)
    # near-duplicate: same picture re-saved larger (15, 16), same text -> same phash, other crude hash -> kept
    images[15] = pattern(3)
    images[16] = pattern(3, size=(192, 256))
    # identical image + text but conflicting labels (17, 18) -> kept, reported
    images[17] = images[18] = pattern(4)
    # three identical copies (19, 20, 21) -> no removal (groups > 2 are left to the hard-coded lists)
    images[19] = images[20] = images[21] = pattern(5)
    # a listed ISIS id and a dim_error id, otherwise ordinary
    images[35097] = pattern(6)
    images[63805] = pattern(7)
    # train/dev_seen identical pair (22 in train, 301 in dev_seen) -> remove 22
    images[22] = images[301] = pattern(8)
    images[302] = pattern(9)
    # dev_unseen: 302 overlaps dev_seen; 401 new; 402 new and identical to dev_seen 302 text+image
    # -> matched outside train
    images[401] = pattern(10)
    images[402] = pattern(9)
    images[501] = pattern(11)
    for meme_id, image in images.items():
        image.save(root / "img" / f"{meme_id:05d}.png")

    def row(meme_id: int, text: str, label: int | None) -> str:
        record = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "text": text}
        if label is not None:
            record["label"] = label
        return json.dumps(record)

    train = [
        row(11, "same text", 1),
        row(12, "same text", 1),
        row(13, "text a", 0),
        row(14, "text b", 0),
        row(15, "near dup", 1),
        row(16, "near dup", 1),
        row(17, "conflict", 0),
        row(18, "conflict", 1),
        row(19, "triple", 0),
        row(20, "triple", 0),
        row(21, "triple", 0),
        row(35097, "listed", 1),
        row(63805, "dim error", 0),
        row(22, "cross split", 1),
    ]
    (root / "train.jsonl").write_text("\n".join(train) + "\n")
    (root / "dev_seen.jsonl").write_text(row(301, "cross split", 1) + "\n" + row(302, "seen", 0) + "\n")
    (root / "dev_unseen.jsonl").write_text(
        row(302, "seen", 0) + "\n" + row(401, "new", 1) + "\n" + row(402, "seen", 0) + "\n"
    )
    (root / "test_unseen.jsonl").write_text(row(501, "test", None) + "\n")


@pytest.fixture()
def planted(tmp_path: Path) -> Path:
    root = tmp_path / "hm"
    build(root)
    return root


def test_planted_images_have_the_hashes_the_cases_assume(planted: Path) -> None:
    def ph(i: int) -> str:
        return str(imagehash.phash(Image.open(planted / "img" / f"{i:05d}.png")))

    assert ph(15) == ph(16)  # near duplicate keeps its perceptual hash
    assert len({ph(i) for i in (11, 13, 15, 17, 19, 35097, 63805, 22, 302, 401, 501)}) == 11


def test_clean_removes_and_adds_exactly_the_planted_ids(planted: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    original = {p.name: p.read_bytes() for p in planted.glob("*.jsonl")}
    with pytest.raises(SystemExit) as info:
        main(["data", "clean", str(planted), "--out", str(out)])
    assert info.value.code == 0

    train_clean = [m.id for m in read_split(out, "train_clean")]
    expected_train = [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 63805]
    assert train_clean == expected_train + [401, 402]
    assert [m.id for m in read_split(out, "traindev")] == expected_train + [401, 402, 301, 302]
    pretrain = [m.id for m in read_split(out, "pretrain")]
    assert pretrain == [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 35097, 22, 301, 302, 401, 402]

    report = json.loads((out / "cleaning_report.json").read_text())
    removed = {(r["id"], r["rule"]) for r in report["removed"]}
    assert removed == {(11, "duplicate_pair"), (22, "duplicate_pair"), (35097, "isis_list")}
    assert [a["id"] for a in report["added"]] == [401, 402]
    assert report["pretrain_excluded"] == [{"id": 63805, "rule": "dim_error"}]
    assert report["conflicting_label_pairs"][0]["ids"] == [17, 18]
    assert [m["id"] for m in report["matched_outside_train"]] == [302]
    # inputs untouched; the output folder is a complete dataset view
    assert {p.name: p.read_bytes() for p in planted.glob("*.jsonl")} == original
    assert (out / "img" / "00011.png").is_file()
    assert [m.id for m in read_split(out, "dev_seen")] == [301, 302]


def test_rerun_uses_the_hash_cache(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memeguard.data import cleaning

    out = tmp_path / "clean"
    first = cleaning.clean_dataset(planted, out, progress=False)
    calls: list[Path] = []
    original = cleaning._hash_image
    monkeypatch.setattr(cleaning, "_hash_image", lambda path, ctx: calls.append(path) or original(path, ctx))
    second = cleaning.clean_dataset(planted, out, progress=False)
    assert calls == []
    assert second.report == first.report
    # touching one image rehashes just that one
    (planted / "img" / "00013.png").write_bytes((planted / "img" / "00013.png").read_bytes())
    import os

    os.utime(planted / "img" / "00013.png", ns=(1, 1))
    cleaning.clean_dataset(planted, out, progress=False)
    assert [p.name for p in calls] == ["00013.png"]


def test_clean_refuses_to_write_into_the_input(planted: Path) -> None:
    from memeguard.data.cleaning import clean_dataset
    from memeguard.errors import DataError

    with pytest.raises(DataError, match="must differ"):
        clean_dataset(planted, planted, progress=False)
