"""TrainConfig / PretrainConfig: validation as one ConfigError line, the JSON round trip, the ``acc``
alias."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memeguard.errors import ConfigError
from memeguard.training import TINY_DEFAULTS, PretrainConfig, TrainConfig

PATHS = dict(model="visualbert-tiny", features=Path("store"), data_dir=Path("data"), out_dir=Path("runs/a"))


def test_train_config_json_round_trip():
    cfg = TrainConfig(
        **{
            **PATHS,
            **TINY_DEFAULTS,
            "predict_splits": ["test_seen", "test_unseen"],
            "swa": "contrib",
            "limit": 10,
            "model_overrides": {"max_regions": 50},
        }
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["features"] == "store" and data["predict_splits"] == ["test_seen", "test_unseen"]
    assert list(data) == list(TrainConfig.model_fields)  # the file lists the fields in declaration order
    again = TrainConfig.from_dict(data)
    assert again.to_dict() == cfg.to_dict()
    assert again.predict_splits == ("test_seen", "test_unseen") and again.lr == TINY_DEFAULTS["lr"]
    pre = PretrainConfig(**PATHS, itm=False, schedule="linear")
    assert PretrainConfig.from_dict(json.loads(json.dumps(pre.to_dict()))).to_dict() == pre.to_dict()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(swa="yes"), "TrainConfig: swa must be one of 'none', 'torch' or 'contrib', got 'yes'"),
        (dict(precision="fp8"), "TrainConfig: precision must be one of 'fp32', 'bf16' or 'fp16', got 'fp8'"),
        (dict(lr=0), "TrainConfig: lr must be greater than 0, got 0"),
        (dict(epochs="many"), "TrainConfig: epochs must be a valid integer"),
        (dict(warmup_ratio=1.0), "TrainConfig: warmup_ratio must be less than 1, got 1.0"),
        (dict(eval_every=-1), "TrainConfig: eval_every must be greater than or equal to 0, got -1"),
        (dict(limit=0), "TrainConfig: limit must be greater than 0, got 0"),
        (dict(acc=0), "TrainConfig: acc must be greater than 0, got 0"),
        (dict(select_best=True, eval_split=None), "TrainConfig: select_best needs an eval_split"),
        (dict(epoch=3), "TrainConfig: unknown key 'epoch'"),
        (dict(acc=2, grad_accum_steps=2), "TrainConfig: acc is the old name of grad_accum_steps"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**{**PATHS, **changes})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_pretrain_config_errors_and_replace_validates():
    with pytest.raises(ConfigError, match="PretrainConfig: pretraining needs at least one of mlm, itm"):
        PretrainConfig(**PATHS, mlm=False, itm=False)
    with pytest.raises(ConfigError, match="PretrainConfig: schedule must be one of 'linear' or 'cosine'"):
        PretrainConfig(**PATHS, schedule="step")
    with pytest.raises(ConfigError, match="PretrainConfig: model is required"):
        PretrainConfig(features="s", data_dir="d", out_dir="o")
    cfg = PretrainConfig(**PATHS)
    with pytest.raises(ConfigError, match="word_mask_rate must be less than 1"):
        cfg.replace(word_mask_rate=1.5)
    assert cfg.replace(lr=1e-4).lr == 1e-4 and cfg.lr == 5e-6


def test_acc_is_an_alias_of_grad_accum_steps():
    assert TrainConfig(**PATHS, acc=3).grad_accum_steps == 3
    old_file = {**TrainConfig(**PATHS).to_dict(), "acc": 4}
    del old_file["grad_accum_steps"]
    cfg = TrainConfig.from_dict(old_file)
    assert cfg.grad_accum_steps == 4 and "acc" not in cfg.to_dict()
    assert cfg.replace(acc=2).grad_accum_steps == 2
    assert TrainConfig.aliases() == {"acc": "grad_accum_steps"}
    assert {"acc", "grad_accum_steps"} <= TrainConfig.accepted_keys()  # what a recipe's train: may hold
    assert TrainConfig.canonical(old_file)["grad_accum_steps"] == 4


def test_every_field_is_described_for_the_command_line_help():
    for config in (TrainConfig, PretrainConfig):
        undescribed = [name for name, field in config.model_fields.items() if not field.description]
        assert not undescribed, (config.__name__, undescribed)
    assert set(TINY_DEFAULTS) <= set(TrainConfig.model_fields)
