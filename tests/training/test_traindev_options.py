"""The ``traindev_*`` keys of TrainConfig: recipe options of the pipeline (run in
tests/pipeline/test_warm_traindev.py); a single run and a distilled student refuse them with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from xor_memes import toy_config

from memeguard.errors import ConfigError
from memeguard.training import TrainConfig, finetune


def test_defaults_are_vilios_from_scratch_run(tmp_path: Path) -> None:
    cfg = toy_config(TrainConfig, tmp_path, tmp_path / "run")
    assert (cfg.traindev_init, cfg.traindev_epochs, cfg.traindev_lr) == ("scratch", None, None)
    cfg.refuse_traindev_keys()  # the defaults pass


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"traindev_epochs": 2}, "traindev_epochs and traindev_lr need traindev_init: train"),
        ({"traindev_lr": 1e-4, "traindev_init": "scratch"}, "need traindev_init: train"),
        ({"traindev_init": "best"}, r"traindev_init must be one of"),
        ({"traindev_init": "train", "traindev_epochs": 0}, r"traindev_epochs must be greater than 0"),
        ({"traindev_init": "train", "traindev_lr": -1.0}, r"traindev_lr must be greater than 0"),
        (
            {"traindev_init": "train", "soft_targets": "teacher.csv"},
            "traindev_init applies to a recipe model's traindev run",
        ),
    ],
)
def test_options_that_make_no_sense_are_refused(tmp_path: Path, options: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        toy_config(TrainConfig, tmp_path, tmp_path / "run", **options)


@pytest.mark.parametrize(
    "options", [{"traindev_init": "train"}, {"traindev_init": "train", "traindev_epochs": 2}]
)
def test_a_single_run_refuses_them_before_it_writes_anything(tmp_path: Path, options: dict) -> None:
    """`memeguard train` has the options (its CLI is the config's fields) but never reads them: refused."""
    cfg = toy_config(TrainConfig, tmp_path, tmp_path / "run", **options)
    with pytest.raises(ConfigError, match=r"recipe options of `memeguard run`.*--init TRAIN_RUN_DIR"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()
