"""``early_stop_give_up_after``: a run that never reaches ``early_stop_after_auroc`` stops at the first
evaluation from that update on; one that has reached it trains on; the option needs a patience."""

from __future__ import annotations

import pytest
from xor_memes import toy_config

from memeguard.errors import ConfigError
from memeguard.training import TrainConfig, finetune
from memeguard.training.loop import updates_taken

pytestmark = pytest.mark.usefixtures("one_thread")

UPDATES = 12  # 48 toy memes in batches of 8, 2 epochs


def run(toy_data, out, **kw) -> int:
    data, regions = toy_data
    settings = dict(epochs=2, lr=1e-3, eval_every=2, early_stop_patience=100, early_stop_give_up_after=5)
    cfg = toy_config(TrainConfig, data, out, **{**settings, **kw})
    finetune(cfg, regions=regions)
    return updates_taken(out)


def test_a_run_on_its_plateau_gives_up_and_one_past_it_does_not(toy_data, tmp_path):
    # Text only, the XOR rule cannot be learnt: dev AUROC never reaches 0.95; evaluations at 2, 4, 6 ...
    assert run(toy_data, tmp_path / "plateau", zero_visual=True, early_stop_after_auroc=0.95) == 6
    # Any AUROC reaches 0: the run is past its plateau from the first evaluation and trains to the end.
    assert run(toy_data, tmp_path / "learning", early_stop_after_auroc=0.0) == UPDATES


def test_give_up_needs_a_patience(toy_data, tmp_path):
    with pytest.raises((ConfigError, ValueError), match="early_stop_give_up_after needs early_stop_patience"):
        toy_config(TrainConfig, toy_data[0], tmp_path, eval_every=2, early_stop_give_up_after=5)
