"""Knowledge distillation in training: the KD loss, soft targets, the distillation set, and that a run
without (or with alpha=1 on labelled memes only) soft targets is exactly today's run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from xor_memes import toy_config

from memeguard.data.predictions import write_predictions
from memeguard.errors import ConfigError, DataError
from memeguard.training import TrainConfig, finetune
from memeguard.training.distill import (
    SoftTargets,
    batch_distillation_loss,
    distillation_loss,
    read_soft_targets,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _bce(p: float, q: float) -> float:
    """Binary cross-entropy of prediction p against target q, by the textbook formula."""
    return -(q * math.log(p) + (1 - q) * math.log(1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kd_loss_matches_a_hand_computed_value():
    z, p, y, t, a = [1.2, -0.4], [0.9, 0.3], [1.0, -1.0], 2.0, 0.3
    expected = []
    for zi, pi, yi in zip(z, p, y, strict=True):
        teacher_t = _sigmoid(math.log(pi / (1 - pi)) / t)
        soft = t * t * _bce(_sigmoid(zi / t), teacher_t)
        expected.append(soft if yi < 0 else a * _bce(_sigmoid(zi), yi) + (1 - a) * soft)
    got = distillation_loss(torch.tensor(z), torch.tensor(p), torch.tensor(y), temperature=t, alpha=a)
    assert float(got) == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_kd_loss_is_minimal_at_the_teacher_and_scaled_like_the_hard_loss():
    teacher = torch.tensor([0.8])
    unlabelled = torch.tensor([-1.0])
    grid = torch.linspace(-4, 4, 801)
    losses = [
        float(distillation_loss(z.view(1), teacher, unlabelled, temperature=3.0, alpha=0.5)) for z in grid
    ]
    best = float(grid[int(np.argmin(losses))])
    assert best == pytest.approx(math.log(0.8 / 0.2), abs=0.011)  # the student matches the teacher's logit
    targets = SoftTargets({1: 0.8, 2: 0.1}, {1: 1, 2: None})
    logits, ids = torch.tensor([0.5, -0.5]), torch.tensor([1, 2])
    summed, mean = batch_distillation_loss(
        targets, logits, ids, temperature=2.0, alpha=0.5, sum_loss=True, grad_accum_steps=4
    )
    assert float(summed) == pytest.approx(mean * 2 / 4)


def test_soft_targets_refuse_a_meme_the_teacher_did_not_score(tmp_path):
    path = write_predictions(tmp_path / "t.csv", np.array([1, 2]), np.array([0.2, 0.7]))
    assert read_soft_targets(path) == {1: 0.2, 2: 0.7}
    with pytest.raises(ConfigError, match="lack 1 training memes .*id 3"):
        SoftTargets(read_soft_targets(path), {1: 0, 3: None})
    (tmp_path / "bad.csv").write_text("id,proba,label\n1,1.5,1\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        read_soft_targets(tmp_path / "bad.csv")


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    defaults = dict(features="toy-regions", epochs=1, lr=1e-3, eval_every=0, sum_loss=False, eval_split=None)
    return toy_config(TrainConfig, data, out, **{**defaults, **kw})


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _teacher_csv(data: Path, tmp_path: Path) -> Path:
    """Teacher probabilities of every meme of the toy set (any values in (0, 1) do for these tests)."""
    import json

    ids = [
        json.loads(line)["id"]
        for split in ("train", "test_seen", "test_unseen")
        for line in (data / f"{split}.jsonl").read_text().splitlines()
    ]
    proba = np.random.default_rng(0).uniform(0.05, 0.95, len(ids))
    return write_predictions(tmp_path / "teacher.csv", np.array(ids), proba)


def test_alpha_one_on_labelled_memes_is_bit_identical_to_a_hard_label_run(toy_data, tmp_path):
    data, regions = toy_data
    teacher = _teacher_csv(data, tmp_path)
    plain = finetune(_config(data, tmp_path / "plain"), regions=regions)
    hard = finetune(
        _config(data, tmp_path / "hard", soft_targets=str(teacher), distill_alpha=1.0), regions=regions
    )
    soft = finetune(
        _config(data, tmp_path / "soft", soft_targets=str(teacher), distill_alpha=0.5), regions=regions
    )
    a, b, c = _weights(plain.run_dir), _weights(hard.run_dir), _weights(soft.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the soft term does change the training


def test_unlabelled_memes_join_training_and_dev_never_does(toy_data, tmp_path):
    data, regions = toy_data
    teacher = _teacher_csv(data, tmp_path)
    from memeguard.training.loop import prepare

    cfg = _config(data, tmp_path / "s", soft_targets=str(teacher), unlabelled=("test_seen", "test_unseen"))
    prepared = prepare(cfg, regions)
    ids = [m.id for m in prepared.train]
    assert len(ids) == len(set(ids)) == 48 + 12 + 12
    assert all(m.label is None for m in prepared.train if m.id > 2000)  # test labels never reach training
    with pytest.raises(ConfigError, match="dev split"):
        _config(data, tmp_path / "x", soft_targets=str(teacher), unlabelled=("dev_seen",))
    with pytest.raises(ConfigError, match="holds dev memes"):
        _config(data, tmp_path / "x", soft_targets=str(teacher), train_split="traindev")
    with pytest.raises(ConfigError, match="need soft_targets"):
        _config(data, tmp_path / "x", unlabelled=("test_seen",))
    # a jsonl of extra memes that holds a dev meme is refused, naming the file and the id
    extra = tmp_path / "extra.jsonl"
    extra.write_text((data / "dev_seen.jsonl").read_text().splitlines()[3] + "\n")
    bad = _config(data, tmp_path / "x", soft_targets=str(teacher), unlabelled=(str(extra),))
    with pytest.raises(ConfigError, match=r"extra.jsonl: meme id 1004 is in dev_seen"):
        prepare(bad, regions)


def test_a_model_with_its_own_objective_is_refused(toy_data, tmp_path):
    from memeguard.training.loop import prepare

    data, regions = toy_data
    cfg = _config(data, tmp_path / "r", model="rgcl-tiny", soft_targets=str(_teacher_csv(data, tmp_path)))
    with pytest.raises(ConfigError, match="rgcl-tiny: trains on its own objective"):
        prepare(cfg, regions)
