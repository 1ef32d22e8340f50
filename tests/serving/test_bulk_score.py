"""``memeguard score PATH... --out scores.csv``: ids from file names, files/folders/globs, a streamed CSV
that survives a kill (resume skips what is done, a torn last line is dropped), and torchrun shards whose
merged CSV equals the single-process one."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ocr_helpers import CAPTIONS, render_meme, word_recall
from PIL import Image
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.errors import ConfigError, DataError
from memeguard.serving.bulk import (
    SCORE_COLUMNS,
    assign_ids,
    bulk_score,
    collect_images,
    image_id,
    merge_parts,
    part_path,
    read_score_rows,
)
from memeguard.serving.scorer import Score


def run_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


class StubScorer:
    """Scores from the pixels alone (mean red / 255), with a text that needs CSV quoting; counts memes."""

    def __init__(self, batch_size: int = 2) -> None:
        self.batch_size, self.threshold, self.scored = batch_size, 0.5, []

    def score_images(self, images, texts, ocr="auto", contexts=None):
        self.scored.extend(contexts)
        probas = [float(np.asarray(image)[..., 0].mean() / 255) for image in images]
        return [
            Score(p, int(p >= 0.5), {}, text=f'read, "{Path(c).stem}"\nline two', text_source="ocr")
            for p, c in zip(probas, contexts, strict=True)
        ]


def flat_images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        Image.new("RGB", (16, 16), (20 * k + 10, 90, 200)).save(folder / name)
        paths.append(folder / name)
    return paths


def test_ids_come_from_file_names_and_must_be_unique(tmp_path):
    assert image_id(Path("img/01235.png")) == "1235"
    assert image_id(Path("cat pic.jpg")) == "cat pic"
    inputs = assign_ids([Path("b/cat.png"), Path("a/10.png"), Path("a/9.png")])
    assert [(i.id, i.path.name) for i in inputs] == [("9", "9.png"), ("10", "10.png"), ("cat", "cat.png")]
    with pytest.raises(DataError, match=r"a/01235.png and b/1235.jpg both get id 1235"):
        assign_ids([Path("a/01235.png"), Path("b/1235.jpg")])


def test_files_folders_and_globs(tmp_path):
    flat_images(tmp_path / "a" / "deep", ["1.png", "2.jpg"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    flat_images(tmp_path / "b", ["3.png", "4.png"])
    found = collect_images(
        [str(tmp_path / "a"), str(tmp_path / "b" / "*.png"), str(tmp_path / "b" / "3.png")]
    )
    assert [p.name for p in found] == ["1.png", "2.jpg", "3.png", "4.png"]
    with pytest.raises(DataError, match="nope: no such file or folder"):
        collect_images([str(tmp_path / "nope")])
    with pytest.raises(DataError, match=r"\*.gif: no image files"):
        collect_images([str(tmp_path / "b" / "*.gif")])


def test_a_killed_run_resumes_to_the_same_file(tmp_path):
    paths = flat_images(tmp_path / "img", [f"{k:05d}.png" for k in range(1, 8)])
    full = tmp_path / "full.csv"
    assert bulk_score(StubScorer(), [str(tmp_path / "img")], full, progress=False) == (7, 7)
    rows = list(csv.reader(full.open(newline="")))
    assert rows[0] == list(SCORE_COLUMNS) and [r[0] for r in rows[1:]] == [str(k) for k in range(1, 8)]
    assert rows[3][3] == 'read, "00003"\nline two' and rows[3][4] == "ocr"
    assert float(rows[1][1]) == pytest.approx(np.asarray(Image.open(paths[0]))[..., 0].mean() / 255)

    # killed in the middle of writing the fourth row: three complete rows and half of the next
    content = full.read_bytes()
    cut = content.index(b"\n4,")
    killed = tmp_path / "killed.csv"
    killed.write_bytes(content[: cut + 12])
    assert list(read_score_rows(killed)) == ["1", "2", "3"]
    stub = StubScorer()
    assert bulk_score(stub, [str(tmp_path / "img")], killed, progress=False) == (7, 4)
    assert [Path(c).name for c in stub.scored] == [f"{k:05d}.png" for k in range(4, 8)]
    assert killed.read_bytes() == content
    # done: a rerun scores nothing and leaves the file as it is
    assert bulk_score(StubScorer(), [str(tmp_path / "img")], killed, progress=False) == (7, 0)
    assert killed.read_bytes() == content


def test_a_foreign_or_damaged_output_is_refused(tmp_path):
    flat_images(tmp_path / "img", ["1.png"])
    other = tmp_path / "other.csv"
    other.write_text("id,proba,label\n1,0.5,1\n")
    with pytest.raises(DataError, match=r"other.csv: not a memeguard scores file"):
        bulk_score(StubScorer(), [str(tmp_path / "img")], other, progress=False)
    assert other.read_text() == "id,proba,label\n1,0.5,1\n"
    damaged = tmp_path / "damaged.csv"
    damaged.write_text("id,proba,label,text,text_source\n1,high,1,x,ocr\n2,0.5,1,y,ocr\n")
    with pytest.raises(DataError, match=r"damaged.csv:2: bad proba or label"):
        bulk_score(StubScorer(), [str(tmp_path / "img")], damaged, progress=False)


def test_merge_joins_parts_by_id(tmp_path):
    out = tmp_path / "scores.csv"
    header = ",".join(SCORE_COLUMNS) + "\n"
    part_path(out, 0, 2).write_text(header + "1,0.25,0,a,ocr\n10,0.75,1,b,ocr\n")
    part_path(out, 1, 2).write_text(header + "2,0.5,1,c,given\ncat,0.1,0,d,ocr\n3,0.9,1,e,o")  # torn
    result = run_cli("score", "--merge", "--out", out)
    assert result.exit_code == 0, result.output
    assert "merged 2 parts: 4 memes" in result.output
    assert [r[0] for r in csv.reader(out.open(newline=""))] == ["id", "1", "2", "10", "cat"]
    assert not list(tmp_path.glob("scores.csv.part*"))
    assert merge_parts(out) == 4  # nothing left to merge: the file stays
    result = run_cli("score", "--merge", "--out", tmp_path / "none.csv")
    assert isinstance(result.exception, ConfigError) and "no part files" in str(result.exception)


def test_bulk_cli_errors(served, tmp_path):
    image = served.image(served.ids[0])
    result = run_cli("score", image, image, "-m", served.runs[0])
    assert isinstance(result.exception, ConfigError) and "needs --out" in str(result.exception)
    result = run_cli("score", served.data_dir / "img", "-m", served.runs[0])
    assert isinstance(result.exception, ConfigError) and "a folder, a glob" in str(result.exception)
    result = run_cli("score", image, "--out", tmp_path / "o.csv", "--text", "x", "-m", served.runs[0])
    assert isinstance(result.exception, ConfigError) and "--text goes with one IMAGE" in str(result.exception)
    result = run_cli("score", image, "--out", tmp_path / "o.csv")
    assert isinstance(result.exception, ConfigError) and "--model" in str(result.exception)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_cli_bulk_scores_and_two_torchrun_ranks_merge_to_the_same_csv(served, scorer, tmp_path):
    folder = tmp_path / "memes"
    folder.mkdir()
    for k, caption in enumerate(CAPTIONS[:4]):
        render_meme(caption, seed=20 + k, flat=k % 2 == 1, size=(300, 240)).save(folder / f"{k + 7:05d}.png")
    single = tmp_path / "single.csv"
    common = ["-m", served.runs[0], "-m", served.runs[1], "--device", "cpu", "--batch-size", "2"]
    result = run_cli("score", folder, "--out", single, *common)
    assert result.exit_code == 0, result.output
    assert "scored 4 new memes; 4 in" in result.output
    rows = list(csv.reader(single.open(newline="")))
    assert [r[0] for r in rows[1:]] == ["7", "8", "9", "10"] and {r[4] for r in rows[1:]} == {"ocr"}
    assert np.mean([word_recall(c, r[3]) for c, r in zip(CAPTIONS, rows[1:], strict=False)]) >= 0.9
    # each row is the scorer's result for the text it read (no second OCR pass: that is test_ocr_scoring's)
    expected = scorer.score_batch([(folder / f"{int(r[0]):05d}.png", r[3]) for r in rows[1:]])
    assert [float(r[1]) for r in rows[1:]] == pytest.approx([s.proba for s in expected], abs=1e-6)
    assert [int(r[2]) for r in rows[1:]] == [s.label for s in expected]

    merged = tmp_path / "merged.csv"
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    command += ["-m", "memeguard", "score", str(folder / "*.png"), "--out", str(merged), "--no-progress"]
    proc = subprocess.run(
        command + [str(a) for a in common], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged_rows = list(csv.reader(merged.open(newline="")))
    # Same ids, order, labels and texts; probabilities agree to float32 rounding (a rank batches other
    # memes together than one process does, and padding to another text length moves the last bits).
    assert [r[:1] + r[2:] for r in merged_rows] == [r[:1] + r[2:] for r in rows]
    assert [float(r[1]) for r in merged_rows[1:]] == pytest.approx([float(r[1]) for r in rows[1:]], abs=1e-6)
    assert not list(tmp_path.glob("merged.csv.part*"))
