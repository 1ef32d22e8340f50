"""The ``memeguard train`` / ``predict`` / ``pretrain`` commands on a real feature store."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.data.predictions import read_predictions
from memeguard.training import TINY_DEFAULTS


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result


def test_train_then_predict_from_the_command_line(toy_data, toy_store, tmp_path):
    data, _ = toy_data
    out = tmp_path / "run"
    result = run(["train", "--model", "visualbert-tiny", "--features", str(toy_store), "--data", str(data),
                  "--train-split", "traindev", "--predict", "test_seen", "--predict", "test_unseen",
                  "--seed", "43", "--out", str(out), "--tiny", "--epochs", "1", "--device", "cpu",
                  "--no-progress", "--limit", "24"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    # --tiny fills in what was not given; explicit options win
    assert saved["lr"] == TINY_DEFAULTS["lr"] and saved["epochs"] == 1 and saved["seed"] == 43 and saved["limit"] == 24
    assert len(read_predictions(out / "test_seen.csv")) == 12
    assert (out / "features_meta.json").read_text() == (toy_store / "meta.json").read_text()
    assert len(read_predictions(out / "test_unseen.csv")) == 12

    csv = tmp_path / "pred.csv"
    result = run(["predict", "--checkpoint", str(out), "--features", str(toy_store), "--data", str(data),
                  "--split", "test_unseen", "--out", str(csv), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (read_predictions(csv).proba == read_predictions(out / "test_unseen.csv").proba).all()


def test_bad_options_are_one_line_errors(toy_data, toy_store, tmp_path):
    from memeguard.cli import main

    data, _ = toy_data
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "visualbert-nope", "--features", str(toy_store), "--data", str(data),
              "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit):
        main(["train", "--model", "visualbert-tiny", "--features", str(tmp_path / "nostore"), "--data", str(data),
              "--out", str(tmp_path / "x"), "--device", "cpu"])


def test_pretrain_command(toy_data, toy_store, tmp_path):
    data, _ = toy_data
    out = tmp_path / "pre"
    result = run(["pretrain", "--model", "lxmert-tiny", "--features", str(toy_store), "--data", str(data),
                  "--out", str(out), "--epochs", "1", "--lr", "1e-3", "--schedule", "linear", "--no-itm",
                  "--limit", "16", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "pretrain_config.json").read_text())
    assert saved["itm"] is False and saved["schedule"] == "linear"
    assert (out / "DONE").is_file()
