"""The ``memeguard train`` / ``predict`` / ``pretrain`` commands on a real feature store."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from xor_memes import cli_args

from memeguard.cli import app
from memeguard.data.predictions import read_predictions
from memeguard.training import TINY_DEFAULTS

pytestmark = pytest.mark.usefixtures("one_thread")


def run(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result


def test_train_then_predict_from_the_command_line(toy_data, toy_store, tmp_path):
    data, _ = toy_data
    out = tmp_path / "run"
    splits = dict(train_split="traindev", predict=["test_seen", "test_unseen"])
    options = dict(seed=43, out=out, tiny=True, epochs=1, device="cpu", progress=False, limit=24)
    result = run(
        cli_args("train", model="visualbert-tiny", features=toy_store, data=data, **splits, **options)
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    # --tiny fills in what was not given; explicit options win
    assert (
        saved["lr"] == TINY_DEFAULTS["lr"]
        and saved["epochs"] == 1
        and saved["seed"] == 43
        and saved["limit"] == 24
    )
    assert len(read_predictions(out / "test_seen.csv")) == 12
    assert (out / "features_meta.json").read_text() == (toy_store / "meta.json").read_text()
    assert len(read_predictions(out / "test_unseen.csv")) == 12

    csv = tmp_path / "pred.csv"
    test_unseen = dict(features=toy_store, data=data, split="test_unseen")
    result = run(cli_args("predict", checkpoint=out, **test_unseen, out=csv, device="cpu"))
    assert result.exit_code == 0, result.output
    assert (read_predictions(csv).proba == read_predictions(out / "test_unseen.csv").proba).all()


def test_bad_options_are_one_line_errors(toy_data, toy_store, tmp_path):
    from memeguard.cli import main

    data, _ = toy_data
    elsewhere = dict(data=data, out=tmp_path / "x", device="cpu")
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("train", model="visualbert-nope", features=toy_store, **elsewhere))
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit):
        main(cli_args("train", model="visualbert-tiny", features=tmp_path / "nostore", **elsewhere))


def test_pretrain_command(toy_data, toy_store, tmp_path):
    data, _ = toy_data
    out = tmp_path / "pre"
    options = dict(epochs=1, lr="1e-3", schedule="linear", itm=False, limit=16, device="cpu", progress=False)
    result = run(cli_args("pretrain", model="lxmert-tiny", features=toy_store, data=data, out=out, **options))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "pretrain_config.json").read_text())
    assert saved["itm"] is False and saved["schedule"] == "linear"
    assert (out / "DONE").is_file()


@pytest.fixture
def captured(monkeypatch):
    """The config each command builds, without training."""
    import memeguard.training.loop
    import memeguard.training.pretraining

    configs = []

    def fake_finetune(cfg):
        from memeguard.training.loop import RunResult

        configs.append(cfg)
        return RunResult(cfg.out_dir, cfg.out_dir, {}, {})

    def fake_pretrain(cfg):
        configs.append(cfg)
        return cfg.out_dir

    monkeypatch.setattr(memeguard.training.loop, "finetune", fake_finetune)
    monkeypatch.setattr(memeguard.training.pretraining, "pretrain", fake_pretrain)
    return configs


REQUIRED = ["--model", "visualbert-tiny", "--features", "f", "--data", "d", "--out", "o"]


def test_every_config_field_is_an_option_with_the_config_default(captured):
    import typer.main

    from memeguard.training import PretrainConfig, TrainConfig

    commands = typer.main.get_command(app).commands
    for command, config in (("train", TrainConfig), ("pretrain", PretrainConfig)):
        names = {param.name for param in commands[command].params}
        assert set(config.model_fields) <= names, command
        assert run([command, *REQUIRED]).exit_code == 0
        expected = config(model="visualbert-tiny", features="f", data_dir="d", out_dir="o")
        assert captured[-1].to_dict() == expected.to_dict(), command


def test_old_and_new_option_spellings(captured):
    assert run(["train", *REQUIRED, "--acc", "3"]).exit_code == 0
    assert run(["train", *REQUIRED, "--grad-accum-steps", "3"]).exit_code == 0
    assert [cfg.grad_accum_steps for cfg in captured] == [3, 3]
    splits = dict(train_split="traindev", predict=["test_seen", "test_unseen"], eval_split="none")
    overrides = ["max_regions=50", 'head="layeravg"']
    options = dict(seed=7, init="runs/pre", swa="contrib", set=overrides, progress=False, sum_loss=False)
    result = run(cli_args("train", *REQUIRED, **splits, **options))
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert (cfg.train_split, cfg.predict_splits, cfg.eval_split, cfg.seed, cfg.init, cfg.swa) == (
        "traindev",
        ("test_seen", "test_unseen"),
        None,
        7,
        "runs/pre",
        "contrib",
    )
    assert cfg.model_overrides == {"max_regions": 50, "head": "layeravg"}
    assert cfg.progress is False and cfg.sum_loss is False
    assert run(["pretrain", *REQUIRED, "--no-itm", "--schedule", "linear", "--split", "train"]).exit_code == 0
    assert (captured[-1].itm, captured[-1].schedule, captured[-1].split) == (False, "linear", "train")


def test_fixed_choices_are_listed_and_checked(captured):
    assert run(["train", *REQUIRED, "--swa", "yes"]).exit_code == 2
    assert run(["pretrain", *REQUIRED, "--schedule", "step"]).exit_code == 2
    assert not captured
    wide = {"COLUMNS": "200"}  # rich wraps the help to the terminal
    help_text = CliRunner().invoke(app, ["train", "--help"], env=wide).output
    for choices in ("none|torch|contrib", "fp32|bf16|fp16", "auto|always|never"):
        assert choices in help_text, choices
    assert "linear|cosine" in CliRunner().invoke(app, ["pretrain", "--help"], env=wide).output
