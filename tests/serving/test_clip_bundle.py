"""The CLIP family end to end through the command line, on a tiny random-weight CLIP folder: extract ->
train a Hate-CLIPper head -> predict -> ensemble with a grid-feature VisualBERT -> export -> score a new
image from the bundle (the CLIP extractor rebuilt from the bundle's feature settings, its weights
hash-checked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tiny_clip import save_tiny_clip

TEXTS = ["look at this", "a dog", "when you see it", "nobody expects", "hat hat", "just normal"]


def write_memes(root: Path) -> Path:
    """12 random images with captions: train = all, dev_seen = the first 8 (both labels), test_unseen."""
    data = root / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for k, text in enumerate(TEXTS * 2):
        meme_id = 101 + k
        pixels = rng.integers(0, 256, (40 + 4 * k, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "img" / f"{meme_id:05d}.png")
        lines.append({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": k % 2, "text": text})
    unlabelled = [{key: v for key, v in line.items() if key != "label"} for line in lines[8:]]
    for split, part in (("train", lines), ("dev_seen", lines[:8]), ("test_unseen", unlabelled)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in part))
    return data


def cli(*args: object) -> str:
    from memeguard.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def train(model: str, store: Path, data: Path, out: Path, *extra: str) -> Path:
    cli(
        "train", "--model", model, "--features", store, "--data", data, "--out", out,
        "--train-split", "train", "--predict", "dev_seen", "--predict", "test_unseen",
        "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", *extra,
    )  # fmt: skip
    return out


@pytest.mark.slow
def test_clip_head_from_extraction_to_a_scored_bundle(tmp_path: Path) -> None:
    from memeguard.cli import app
    from memeguard.data.predictions import read_predictions
    from memeguard.errors import ConfigError
    from memeguard.serving.scorer import MemeScorer

    clip = save_tiny_clip(tmp_path / "clip")
    data = write_memes(tmp_path)
    clip_store, grid_store = tmp_path / "clip_store", tmp_path / "grid_store"
    cli("features", "extract", data, clip_store, "--extractor", "clip", "--weights", clip)
    cli("features", "extract", data, grid_store, "--extractor", "grid", "--param", "levels=[1]")
    runs = tmp_path / "runs"
    head = train("hateclipper-align-tiny", clip_store, data, runs / "HA", "--family-defaults")
    bert = train("visualbert-tiny", grid_store, data, runs / "V")

    # predict repeats the run's own test predictions from the store
    cli("predict", "--checkpoint", head, "--features", clip_store, "--data", data,
        "--split", "test_unseen", "--out", tmp_path / "p.csv", "--device", "cpu")  # fmt: skip
    assert np.allclose(
        read_predictions(tmp_path / "p.csv").proba, read_predictions(head / "test_unseen.csv").proba
    )

    preds = tmp_path / "preds"
    preds.mkdir()
    for run in (head, bert):
        for split in ("dev_seen", "test_unseen"):
            (preds / f"{run.name}_{split}.csv").write_bytes((run / f"{split}.csv").read_bytes())
    cli("ensemble", preds, "--gt", data / "dev_seen.jsonl", "--out", tmp_path / "ens", "--method", "simplex",
        "--splits", "dev_seen,test_unseen")  # fmt: skip
    weights = json.loads((tmp_path / "ens" / "weights.json").read_text())["final"]["weights"]
    bundle = tmp_path / "bundle"
    cli("export", head, bert, "--ensemble", tmp_path / "ens", "--out", bundle)

    # a new meme: the bundle's score is the ensemble's weighted mean of what each run scores from images
    image = tmp_path / "new.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    output = cli("score", "--model", bundle, image, "--text", "a dog", "--device", "cpu")
    scored = json.loads(output[output.index('{"proba"') :].splitlines()[0])  # after transformers' load bar
    alone = {
        run.name: MemeScorer.from_runs([run], device="cpu").score_batch([(image, "a dog")])[0].proba
        for run in (head, bert)
    }
    assert scored["per_model"] == pytest.approx(alone, abs=1e-5)
    expected = sum(weights[name] * alone[name] for name in alone) / sum(weights[name] for name in alone)
    assert scored["proba"] == pytest.approx(expected, abs=1e-5)

    # a tampered CLIP weight file is one error line naming the bundle member, not a different score
    weights_file = clip / "model.safetensors"
    raw = bytearray(weights_file.read_bytes())
    raw[-3] ^= 1
    weights_file.write_bytes(bytes(raw))
    result = CliRunner().invoke(
        app, ["score", "--model", str(bundle), str(image), "--text", "x", "--device", "cpu"]
    )
    message = str(result.exception)  # memeguard.cli.main prints a MemeguardError as one "error: ..." line
    assert isinstance(result.exception, ConfigError) and "\n" not in message, result.output
    assert "the clip weights changed" in message and str(Path("members") / "HA") in message
