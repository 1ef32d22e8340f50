"""Split reading and validation: every bad input gets a one-line error naming file and line (or id)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memeguard.cli import main
from memeguard.data.check import check_dataset
from memeguard.data.hm import available_splits, load_jsonl, read_split
from memeguard.data.images import MAX_IMAGE_PIXELS, open_image
from memeguard.errors import DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def make_dataset(root: Path, n: int = 6) -> Path:
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {"train": range(1, n + 1), "dev_seen": range(101, 104), "test_unseen": range(201, 203)}
    for split, ids in splits.items():
        lines = []
        for meme_id in ids:
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                root / "img" / f"{meme_id:05d}.png"
            )
            record = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "text": f"meme {meme_id}"}
            if split != "test_unseen":
                record["label"] = meme_id % 2
            lines.append(json.dumps(record))
        write_lines(root / f"{split}.jsonl", lines)
    return root


def test_reads_official_layout_and_tolerates_blank_lines(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "hm")
    with open(root / "train.jsonl", "a") as handle:
        handle.write("\n   \n")
    memes = read_split(root, "train")
    assert [m.id for m in memes] == [1, 2, 3, 4, 5, 6]
    assert memes[0].img == "img/00001.png" and memes[0].label == 1
    assert all(m.label is None for m in read_split(root, "test_unseen"))
    assert available_splits(root) == ["train", "dev_seen", "test_unseen"]


def test_phase1_names_are_accepted(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "hm")
    (root / "dev_seen.jsonl").rename(root / "dev.jsonl")
    assert [m.id for m in read_split(root, "dev_seen")] == [101, 102, 103]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": 5, "img": "img/00005.png", "text": "x"', "malformed JSON"),
        ('{"id": 5, "text": "x", "label": 0}', "missing field 'img'"),
        ('{"id": 5, "img": "img/00005.png", "text": "x", "label": 2}', "'label' must be 0 or 1"),
        ('{"id": "abc", "img": "img/00005.png", "text": "x"}', "'id' must be an integer"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    good = '{"id": 1, "img": "img/00001.png", "text": "ok", "label": 0}'
    path = write_lines(tmp_path / "train.jsonl", [good, "", line])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert f"{path}:3" in str(info.value)
    assert expected in str(info.value)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    line = '{"id": 7, "img": "img/00007.png", "text": "x", "label": 0}'
    path = write_lines(tmp_path / "dev_seen.jsonl", [line, line])
    with pytest.raises(DataError, match=r"dev_seen.jsonl:2: duplicate id 7 \(first seen on line 1\)"):
        load_jsonl(path)


def test_missing_truncated_and_bomb_images_are_errors(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "hm")
    (root / "img" / "00002.png").unlink()
    data = (root / "img" / "00003.png").read_bytes()
    (root / "img" / "00003.png").write_bytes(data[: len(data) // 2])
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    Image.new("1", (side, side)).save(root / "img" / "00004.png")  # tiny file, huge canvas
    report = check_dataset(root)
    joined = "\n".join(report.errors)
    assert len(report.errors) == 3
    assert "train.jsonl (id 2): image" in joined and "does not exist" in joined
    assert "(id 3)" in joined and "truncated" in joined
    assert "(id 4)" in joined and "decompression bomb" in joined
    with pytest.raises(DataError, match="decompression bomb|too large"):
        open_image(root / "img" / "00004.png")


def test_check_summary_counts_and_overlaps(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "hm")
    write_lines(
        root / "dev_unseen.jsonl", [json.dumps({"id": 101, "img": "img/00101.png", "text": "a", "label": 1})]
    )
    report = check_dataset(root)
    assert report.ok, report.errors
    by_name = {s.name: s for s in report.splits}
    assert by_name["train"].count == 6 and by_name["train"].hateful == 3
    assert by_name["test_unseen"].labelled == 0
    assert report.overlaps == {"dev_seen & dev_unseen": 1}
    assert report.image_stats()["height_max"] == 20 and report.image_stats()["width_min"] == 30


def test_cli_check_exits_nonzero_with_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_dataset(tmp_path / "hm")
    write_lines(root / "dev_seen.jsonl", ['{"id": 1, "img": "img/00001.png", "text": "x", "label": "yes"}'])
    with pytest.raises(SystemExit) as info:
        main(["data", "check", str(root)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "dev_seen.jsonl:1 (id 1): 'label' must be 0 or 1" in err
    assert "Traceback" not in err


def test_cli_ok_dataset_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "hm")
    with pytest.raises(SystemExit) as info:
        main(["data", "check", str(root)])
    assert info.value.code == 0
    assert "train" in capsys.readouterr().out
