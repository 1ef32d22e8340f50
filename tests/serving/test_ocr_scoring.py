"""Scoring memes without their text: the caption is read from the image, the score matches the score with
the true caption, and every result says which text it used and where it came from."""

from __future__ import annotations

import json

import pytest
from ocr_helpers import CAPTIONS, render_meme
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.errors import ConfigError, DataError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def memes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ocr_memes")
    paths = []
    for k, caption in enumerate(CAPTIONS[:4]):
        path = folder / f"{k + 1:05d}.png"
        render_meme(caption, seed=10 + k, flat=k % 2 == 0).save(path)
        paths.append(path)
    return paths, CAPTIONS[:4]


def test_ocr_score_equals_the_score_with_the_true_text(scorer, memes):
    paths, captions = memes
    with_ocr = scorer.score_batch([(path, None) for path in paths])
    with_truth = scorer.score_batch(list(zip(paths, captions, strict=True)))
    assert [s.text_source for s in with_ocr] == ["ocr"] * 4
    assert [s.text_source for s in with_truth] == ["given"] * 4
    assert [s.text for s in with_truth] == captions
    same = [a.proba == pytest.approx(b.proba, abs=1e-6) for a, b in zip(with_ocr, with_truth, strict=True)]
    assert sum(same) >= 3, [(s.text, c) for s, c in zip(with_ocr, captions, strict=True)]
    # always: the image is read even when a text is given
    forced = scorer.score(paths[0], "some other words", ocr="always")
    assert forced.text_source == "ocr" and forced.text == with_ocr[0].text
    with pytest.raises(DataError, match="item 0: no text given and OCR is off"):
        scorer.score(paths[0], None, ocr="never")
    with pytest.raises(ConfigError, match="ocr must be one of auto, always, never"):
        scorer.score(paths[0], None, ocr="sometimes")


def test_cli_one_image_without_text_prints_the_ocr_text(served, memes):
    paths, captions = memes
    args = ["score", str(paths[1]), "-m", str(served.runs[0]), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    assert printed["text_source"] == "ocr" and printed["text"].split()[:3] == captions[1].split()[:3]
    given = CliRunner().invoke(app, [*args, "--text", "hello there"])
    assert json.loads(given.output.strip().splitlines()[-1])["text"] == "hello there"
    never = CliRunner().invoke(app, [*args, "--ocr", "never"])
    assert isinstance(never.exception, ConfigError) and "--ocr never needs the text" in str(never.exception)
    bad = CliRunner().invoke(app, [*args, "--ocr", "maybe"])
    assert isinstance(bad.exception, ConfigError) and "--ocr must be one of" in str(bad.exception)
