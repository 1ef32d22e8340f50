"""Issue #11, the data part, written as the attacks: each bad file or call, then the exact one-line error,
and that nothing outside the target folder changed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memeguard.cli import main
from memeguard.data import cleaning
from memeguard.data.check import MAX_REPORTED_ERRORS, check_dataset
from memeguard.data.hm import image_path, load_dataset, load_jsonl, read_split
from memeguard.data.meme import Meme
from memeguard.data.text import MAX_TEXT_CHARS, check_text
from memeguard.errors import DataError

OUTSIDE = "is outside the dataset folder (it must be a path relative to the folder, without '..')"


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` with its bytes (files), its target (links) or None (folders)."""
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_file():
            state[key] = path.read_bytes()
        else:
            state[key] = None
    return state


def record(meme_id: object, img: object = None, text: object = "meme", label: int | None = 0) -> str:
    line: dict[str, object] = {"id": meme_id, "img": img if img is not None else f"img/{meme_id:05d}.png"}
    line["text"] = text
    if label is not None:
        line["label"] = label
    return json.dumps(line)


def make_dataset(root: Path, splits: dict[str, list[str]] | None = None) -> Path:
    """train 1-4, dev_seen 11-12, test_unseen 21 (unless ``splits`` replaces some), all images present."""
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for meme_id in (1, 2, 3, 4, 9, 11, 12, 21):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{meme_id:05d}.png")
    lines = {
        "train": [record(i, label=i % 2) for i in (1, 2, 3, 4)],
        "dev_seen": [record(i, label=i % 2) for i in (11, 12)],
        "test_unseen": [record(21, label=None)],
    }
    lines.update(splits or {})
    for split, split_lines in lines.items():
        (root / f"{split}.jsonl").write_text("".join(line + "\n" for line in split_lines))
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return int(info.value.code or 0), captured.err


# -- paths stay inside the dataset folder -----------------------------------------------------------


@pytest.mark.parametrize(
    "img", ["../outside.png", "img/../../outside.png", "../../../../etc/passwd", "ABSOLUTE", "img/\u0000.png"]
)
def test_img_outside_the_dataset_is_refused_before_any_read(
    tmp_path: Path, img: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    img = str(tmp_path / "outside.png") if img == "ABSOLUTE" else img
    root = make_dataset(tmp_path / "hm", {"train": [record(1), record(2, img=img)]})
    opened: list[Path] = []
    from memeguard.data import check

    monkeypatch.setattr(check, "image_size", lambda path, ctx: opened.append(Path(path)) or (16, 16))
    before = snapshot(tmp_path)

    code, err = run_cli(["data", "check", str(root)], capsys)

    assert code == 1
    assert err.splitlines() == [f"error: {root / 'train.jsonl'}:2 (id 2): 'img' {img!r} {OUTSIDE}"]
    assert all(path.parent == root / "img" for path in opened) and len(opened) == 4  # ids 1, 11, 12, 21
    assert snapshot(tmp_path) == before
    # every reader of a split (extraction's load_dataset, training's read_split) goes through the same parse
    with pytest.raises(DataError, match="outside the dataset folder"):
        load_dataset(root)
    with pytest.raises(DataError, match=r"train.jsonl:2 \(id 2\)"):
        read_split(root, "train")


def test_image_path_refuses_memes_built_in_code(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        image_path(tmp_path, Meme(id=7, img="../x.png", text="t"))
    assert str(info.value) == f"meme id 7: 'img' '../x.png' {OUTSIDE}"
    assert image_path(tmp_path, Meme(id=7, img="img/00007.png", text="t")) == tmp_path / "img/00007.png"


def test_a_symlinked_image_folder_stays_allowed(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "elsewhere")
    root = tmp_path / "hm"
    root.mkdir()
    for jsonl in source.glob("*.jsonl"):
        (root / jsonl.name).write_bytes(jsonl.read_bytes())
    (root / "img").symlink_to(source / "img", target_is_directory=True)
    report = check_dataset(root)
    assert report.ok, report.errors
    assert len(report.image_heights) == 7


# -- text is valid Unicode, everywhere it enters ------------------------------------------------------


def test_lone_surrogate_is_refused_by_check_and_by_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    surrogate = '{"id": 3, "img": "img/00003.png", "text": "a\\ud800b", "label": 1}'
    root = make_dataset(tmp_path / "hm", {"train": [record(1), record(2), surrogate]})
    before = snapshot(tmp_path)
    expected = (
        f"error: {root / 'train.jsonl'}:3 (id 3): 'text' holds a lone surrogate U+D800 at character 2; "
        "text must be valid Unicode"
    )

    assert run_cli(["data", "check", str(root), "--no-images"], capsys) == (1, expected + "\n")
    assert run_cli(["data", "clean", str(root), "--out", str(tmp_path / "out")], capsys) == (
        1,
        expected + "\n",
    )
    assert snapshot(tmp_path) == before  # clean refused before creating OUT


def test_check_text_is_the_one_gate() -> None:
    assert check_text("ok \u00e9 \U0001f600", "x") == "ok \u00e9 \U0001f600"
    with pytest.raises(DataError) as info:
        check_text(12345, "request body")
    assert str(info.value) == "request body: 'text' must be a string, got int"
    with pytest.raises(DataError) as info:
        check_text("\udfff", "memes.csv:4", field="caption")
    assert str(info.value) == (
        "memes.csv:4: 'caption' holds a lone surrogate U+DFFF at character 1; text must be valid Unicode"
    )
    with pytest.raises(DataError) as info:
        check_text("a" * (MAX_TEXT_CHARS + 1), "recipe.yaml:3")
    assert str(info.value) == "recipe.yaml:3: 'text' has 10,001 characters, more than the 10,000 allowed"


def test_check_text_imports_nothing_heavy() -> None:
    code = (
        "import sys, memeguard.data.text\n"
        "heavy = [m for m in ('numpy', 'torch', 'PIL', 'pydantic') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"


def test_bytes_that_are_not_utf8_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(record(1).encode() + b"\n" + b'{"id": 2, "img": "img/00002.png", "text": "caf\xe9"}\n')
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}:2: not valid UTF-8 (byte 0xE9 at character 47)"


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + record(1).encode() + b"\n")
    assert [m.id for m in load_jsonl(path)] == [1]


# -- ids: one meme per id, inside int64 ------------------------------------------------------------


def test_an_id_with_two_images_across_splits_names_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_dataset(tmp_path / "hm", {"dev_seen": [record(11), record(1, img="img/00009.png")]})
    code, err = run_cli(["data", "check", str(root)], capsys)
    assert code == 1
    assert err.splitlines() == [
        f"error: {root / 'dev_seen.jsonl'}:2 (id 1): image 'img/00009.png' differs from 'img/00001.png' "
        f"given for the same id at {root / 'train.jsonl'}:1"
    ]


def test_the_same_meme_in_two_splits_is_only_an_overlap(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "hm", {"dev_seen": [record(11), record(1, label=1)]})
    report = check_dataset(root, check_images=False)
    assert report.ok, report.errors
    assert report.overlaps == {"train & dev_seen": 1}


@pytest.mark.parametrize(
    ("raw_id", "shown"),
    [
        ("9223372036854775808", "9223372036854775808"),
        ("-1", "-1"),
        ("1e300", "1e+300"),
        ('"99999999999999999999999"', "99999999999999999999999"),
    ],
)
def test_ids_outside_int64_are_refused_at_parse(tmp_path: Path, raw_id: str, shown: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(record(1) + "\n" + f'{{"id": {raw_id}, "img": "img/00002.png", "text": "x"}}\n')
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}:2: 'id' must be between 0 and 2**63-1, got {shown}"


def test_the_largest_int64_id_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(f'{{"id": {2**63 - 1}, "img": "img/x.png", "text": "x"}}\n')
    assert load_jsonl(path)[0].id == 2**63 - 1


def test_json_that_python_cannot_even_decode_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": ' + "9" * 5000 + ', "img": "a.png", "text": "x"}\n' + "[" * 100_000 + "\n")
    report_lines: list[str] = []
    from memeguard.data.hm import parse_jsonl

    assert parse_jsonl(path, on_error=lambda exc: report_lines.append(str(exc))) == []
    assert len(report_lines) == 2
    assert report_lines[0].startswith(f"{path}:1: malformed JSON (Exceeds the limit (4300 digits)")
    assert report_lines[1].startswith(f"{path}:2: malformed JSON (maximum recursion depth exceeded")


# -- every error, capped --------------------------------------------------------------------------


def test_check_reports_every_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [record(1), record(2, text=None), record(3), record(4, text=12345)]
    root = make_dataset(tmp_path / "hm", {"train": lines})
    train = root / "train.jsonl"
    code, err = run_cli(["data", "check", str(root)], capsys)
    assert code == 1
    assert err.splitlines() == [
        f"error: {train}:2 (id 2): 'text' must be a string, got NoneType",
        f"error: {train}:4 (id 4): 'text' must be a string, got int",
    ]


def test_check_caps_the_errors_it_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = [f'{{"id": {i}, "img": "img/00001.png", "text": "x", "label": 7}}' for i in range(100, 125)]
    root = make_dataset(tmp_path / "hm", {"train": [record(1), *bad]})
    report = check_dataset(root, check_images=False)
    assert len(report.errors) == MAX_REPORTED_ERRORS and report.errors_left_off == 5
    assert report.errors[-1] == f"{root / 'train.jsonl'}:21 (id 119): 'label' must be 0 or 1, got 7"
    code, err = run_cli(["data", "check", str(root), "--no-images"], capsys)
    assert code == 1
    assert err.splitlines()[-1] == "error: ... and 5 more errors"
    assert len(err.splitlines()) == MAX_REPORTED_ERRORS + 1


# -- empty splits ---------------------------------------------------------------------------------


def test_an_empty_train_split_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "hm", {"train": []})
    message = f"{root / 'train.jsonl'}: split 'train' has no memes (it is needed to train and tune)"
    assert run_cli(["data", "check", str(root)], capsys) == (1, f"error: {message}\n")
    with pytest.raises(DataError) as info:
        read_split(root, "train")
    assert str(info.value) == message
    before = snapshot(tmp_path)
    assert run_cli(["data", "clean", str(root), "--out", str(tmp_path / "out")], capsys) == (
        1,
        f"error: {message}\n",
    )
    assert snapshot(tmp_path) == before


def test_an_empty_test_split_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = make_dataset(tmp_path / "hm", {"test_unseen": ["", "  "]})
    message = f"{root / 'test_unseen.jsonl'}: split 'test_unseen' has no memes (nothing to predict for it)"
    assert run_cli(["data", "check", str(root)], capsys) == (0, f"warning: {message}\n")
    with caplog.at_level(logging.WARNING, logger="memeguard.data.hm"):
        assert read_split(root, "test_unseen") == []
    assert caplog.messages == [message]


# -- data clean --out -----------------------------------------------------------------------------


def test_clean_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "hm")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.jsonl").write_text("precious\n")
    before = snapshot(tmp_path)
    code, err = run_cli(["data", "clean", str(root), "--out", str(out)], capsys)
    assert code == 1
    assert err == (
        f"error: {out}: the output folder is not empty and was not written by 'data clean'; "
        "give a new or empty folder\n"
    )
    assert snapshot(tmp_path) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        cleaning.clean_dataset(root, tmp_path / "file", progress=False)


def test_clean_reruns_into_its_own_output(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "hm")
    out = tmp_path / "out"
    first = cleaning.clean_dataset(root, out, progress=False)
    written = snapshot(out)
    assert ".memeguard_clean" in written and "cleaning_report.json" in written
    second = cleaning.clean_dataset(root, out, progress=False)
    assert second.report == first.report and snapshot(out) == written
    # a folder cleaned before the marker existed is recognised by its report
    (out / ".memeguard_clean").unlink()
    cleaning.clean_dataset(root, out, progress=False)


def test_a_crash_before_publishing_leaves_no_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_dataset(tmp_path / "hm")
    out = tmp_path / "out"

    def crash(*args: object) -> None:
        raise RuntimeError("killed mid-clean")

    monkeypatch.setattr(cleaning, "_link_images", crash)
    with pytest.raises(RuntimeError):
        cleaning.clean_dataset(root, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".hash_cache.json", ".memeguard_clean"]
    monkeypatch.undo()
    cleaning.clean_dataset(root, out, progress=False)  # the crashed folder is still ours
    assert (out / "train_clean.jsonl").is_file() and (out / "cleaning_report.json").is_file()


def test_a_crash_while_rerunning_keeps_the_previous_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_dataset(tmp_path / "hm")
    out = tmp_path / "out"
    cleaning.clean_dataset(root, out, progress=False)
    before = snapshot(tmp_path)
    (root / "train.jsonl").write_text(record(1) + "\n" + record(2) + "\n")

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cleaning, "_link_images", crash)
    with pytest.raises(OSError):
        cleaning.clean_dataset(root, out, progress=False)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("out")} == {
        k: v for k, v in before.items() if k.startswith("out")
    }


def test_an_unreadable_split_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memeguard.data import hm

    path = tmp_path / "train.jsonl"
    path.write_text(record(1) + "\n")

    def failing_open(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(hm, "open", failing_open, raising=False)
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}: cannot read the split file (Input/output error)"
