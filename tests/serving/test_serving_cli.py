"""``memeguard score``: one meme as JSON, a jsonl of memes as a submission CSV, clear one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.data.predictions import read_predictions
from memeguard.errors import ConfigError, DataError


def run_cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_score_one_meme_prints_the_scorer_result(served, scorer):
    meme_id, text = served.ids[1], served.texts[1]
    args = ["score", served.image(meme_id), "--text", text, "--device", "cpu"]
    for run in served.runs:
        args += ["--model", run]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    expected = scorer.score(served.image(meme_id), text)
    assert printed["proba"] == pytest.approx(expected.proba, abs=1e-9)
    assert printed["label"] == expected.label
    assert printed["per_model"] == pytest.approx(expected.per_model, abs=1e-9)


def test_score_jsonl_writes_a_submission(served, scorer, tmp_path):
    out = tmp_path / "sub" / "test.csv"
    result = run_cli(
        "score",
        "--jsonl",
        served.data_dir / "dev_seen.jsonl",
        "--out",
        out,
        "--threshold",
        "0.45",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "-m",
        served.runs[0],
        "-m",
        served.runs[1],
    )
    assert result.exit_code == 0, result.output
    assert "scored 6 memes" in result.output
    preds = read_predictions(out)
    assert preds.ids.tolist() == served.ids
    expected = np.array(
        [
            s.proba
            for s in scorer.score_batch(
                [(served.image(i), t) for i, t in zip(served.ids, served.texts, strict=True)]
            )
        ]
    )
    np.testing.assert_allclose(preds.proba, expected, atol=1e-6)
    assert preds.label.tolist() == (expected >= 0.45).astype(int).tolist()


def test_cli_errors(served, tmp_path):
    result = run_cli("score", served.image(served.ids[0]), "-m", served.runs[0])
    assert isinstance(result.exception, ConfigError) and "--text" in str(result.exception)
    result = run_cli("score", "--jsonl", served.data_dir / "dev_seen.jsonl", "-m", served.runs[0])
    assert isinstance(result.exception, ConfigError) and "--out" in str(result.exception)
    result = run_cli("score", tmp_path / "nope.png", "--text", "x", "-m", served.runs[0], "--device", "cpu")
    assert isinstance(result.exception, DataError) and "nope.png" in str(result.exception)
    lines = tmp_path / "split.jsonl"
    lines.write_text(json.dumps({"id": 7, "img": "img/00007.png", "text": "gone"}) + "\n")
    result = run_cli(
        "score", "--jsonl", lines, "--out", tmp_path / "o.csv", "-m", served.runs[0], "--device", "cpu"
    )
    assert isinstance(result.exception, DataError) and "(id 7)" in str(result.exception)
    assert not (tmp_path / "o.csv").exists()
    result = run_cli(
        "score", served.image(served.ids[0]), "--text", "x", "-m", served.runs[0], "--boxes", "36"
    )
    assert isinstance(result.exception, ConfigError) and "--extractor" in str(result.exception)
