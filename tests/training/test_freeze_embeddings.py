"""``freeze_word_embeddings``: the word-piece embedding leaves training exactly as it was initialised while
the rest of the model trains (checked against the run's own init, rebuilt from its seed)."""

from __future__ import annotations

import pytest
import torch
from xor_memes import toy_config

from memeguard.training import TrainConfig, finetune
from memeguard.training import checkpoint as ckpt
from memeguard.training.loop import prepare

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def embedding_key(weights: dict[str, torch.Tensor]) -> str:
    (key,) = [k for k in weights if k.endswith("word_embeddings.weight")]
    return key


def test_frozen_word_embedding_keeps_its_init_and_the_rest_trains(toy_data, tmp_path):
    data, regions = toy_data
    runs = {}
    for freeze in (True, False):
        cfg = toy_config(
            TrainConfig, data, tmp_path / f"freeze-{freeze}", epochs=2, lr=1e-2, freeze_word_embeddings=freeze
        )
        finetune(cfg, regions=regions)
        runs[freeze] = trained(cfg.out_dir)
    ckpt.seed_everything(cfg.seed)  # what finetune does before it builds the model: its init
    init = prepare(cfg, regions).model.state_dict()
    key = embedding_key(runs[True])
    assert torch.equal(runs[True][key], init[key])
    assert not torch.equal(runs[False][key], init[key])  # unfrozen, the same run moves it
    moved = [k for k in runs[True] if k != key and not torch.equal(runs[True][k], init[k])]
    assert any("encoder" in k for k in moved), moved
