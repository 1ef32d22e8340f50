"""Optimiser groups, schedules and the two SWA forms against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from memeguard.training.optim import (
    ContribSWA,
    TorchSWA,
    make_adamw,
    make_schedule,
    parameter_groups,
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(5, 3)
        self.encoder = nn.Linear(3, 3)
        self.encoder_norm = nn.LayerNorm(3)
        self.pooler = nn.Linear(3, 3)
        self.layer_weights = nn.Parameter(torch.zeros(3))
        self.classifier = nn.Linear(3, 2)


def test_head_groups_get_500x_lr_and_no_decay_for_bias_and_layernorm():
    model = Toy()
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-5, head_lr_mult=500.0)}
    assert set(groups) == {"backbone_no_decay", "head_no_decay"}
    assert groups["head_no_decay"]["lr"] == pytest.approx(5e-3)
    assert sorted(groups["head_no_decay"]["param_names"]) == [
        "classifier.bias",
        "classifier.weight",
        "layer_weights",
    ]
    assert groups["backbone_no_decay"]["lr"] == 1e-5
    decay = {g["name"]: g for g in parameter_groups(model, lr=1e-5, weight_decay=0.01)}
    assert "classifier.bias" in decay["backbone_no_decay"]["param_names"]
    assert "encoder.weight" in decay["backbone"]["param_names"]
    assert decay["backbone"]["weight_decay"] == 0.01 and decay["backbone_no_decay"]["weight_decay"] == 0.0
    optimizer = make_adamw(parameter_groups(model, lr=1e-5, head_lr_mult=500.0), 1e-5)
    assert optimizer.defaults["eps"] == 1e-6
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-5, 5e-3])


def lr_factor(kind: str, warmup: int, total: int):
    """The schedule's lr multiplier as a function of the step."""
    optimizer = make_adamw(parameter_groups(nn.Linear(2, 2), lr=1.0), 1.0)
    return make_schedule(optimizer, kind, warmup, total).lr_lambdas[0]


def test_linear_and_cosine_schedules():
    linear = lr_factor("linear", 10, 100)
    assert [linear(s) for s in (0, 5, 10, 55, 100, 120)] == pytest.approx([0, 0.5, 1.0, 0.5, 0.0, 0.0])
    cosine = lr_factor("cosine", 5, 105)
    assert [cosine(s) for s in (0, 5, 55, 105)] == pytest.approx([0, 1.0, 0.5, 0.0])
    assert cosine(30) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    model = nn.Linear(2, 2)
    optimizer = make_adamw(parameter_groups(model, lr=2.0), 2.0)
    schedule = make_schedule(optimizer, "linear", 2, 4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.0, 1.0, 2.0, 1.0])


def reference_factor(kind: str, warmup: int, total: int, step: int) -> float:
    """The hand-written schedules memeguard used before it called transformers' (vilio's HF schedules)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("warmup", "total"),
    [(0, 1), (1, 1), (0, 2), (1, 2), (0, 7), (3, 7), (6, 7), (10, 100), (5, 105), (0, 1000), (37, 1000)],
)
def test_schedule_lr_at_every_step_equals_the_formulas_exactly(kind, warmup, total):
    model = nn.Linear(2, 2)
    optimizer = make_adamw(parameter_groups(model, lr=3e-4, head_lr_mult=1.0), 3e-4)
    schedule = make_schedule(optimizer, kind, warmup, total)
    for step in range(total + 1):  # a run takes ``total`` updates; the last lr is set but never used
        assert optimizer.param_groups[0]["lr"] == 3e-4 * reference_factor(kind, warmup, total, step), step
        optimizer.step()
        schedule.step()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_schedule_state_resumes_exactly(kind, old_checkpoint):
    """Also from checkpoints written before transformers' schedules (plain functions: ``lr_lambdas`` None)."""
    model = nn.Linear(2, 2)
    optimizer = make_adamw(parameter_groups(model, lr=1e-3), 1e-3)
    schedule = make_schedule(optimizer, kind, 4, 20)
    for _ in range(9):
        optimizer.step()
        schedule.step()
    saved_optimizer, saved_schedule = optimizer.state_dict(), schedule.state_dict()
    if old_checkpoint:
        saved_schedule = {**saved_schedule, "lr_lambdas": [None]}
    expected = []
    for _ in range(11):
        optimizer.step()
        schedule.step()
        expected.append(optimizer.param_groups[0]["lr"])
    resumed_model = nn.Linear(2, 2)
    resumed_optimizer = make_adamw(parameter_groups(resumed_model, lr=1e-3), 1e-3)
    resumed_schedule = make_schedule(resumed_optimizer, kind, 4, 20)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed_schedule.load_state_dict(saved_schedule)
    seen = []
    for _ in range(11):
        resumed_optimizer.step()
        resumed_schedule.step()
        seen.append(resumed_optimizer.param_groups[0]["lr"])
    assert seen == expected and seen[-1] == 0.0


def test_contrib_swa_constant_lr_and_average_every_freq_steps_from_start():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    swa = ContribSWA([param], start=3, freq=2, swa_lr=0.05)
    lrs, values = [], []
    for step in range(8):
        optimizer.param_groups[0]["lr"] = 0.1 / (step + 1)  # what a decaying schedule would set
        param.grad = torch.ones(1)
        swa.before_step(optimizer)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        values.append(param.item())
        swa.after_step()
    # from step index 3 on the lr is reset to swa_lr
    assert lrs[:3] == pytest.approx([0.1, 0.05, 0.1 / 3]) and lrs[3:] == pytest.approx([0.05] * 5)
    # averages after the 4th, 6th and 8th step (counter > start and counter % freq == 0)
    expected = (values[3] + values[5] + values[7]) / 3
    assert swa.n_averaged == 3
    assert swa.swap_in()
    assert param.item() == pytest.approx(expected)
    restored = ContribSWA([param], start=3, freq=2, swa_lr=0.05)
    restored.load_state_dict(swa.state_dict())
    assert restored.n_averaged == 3 and restored.step_counter == 8


def test_torch_swa_averages_every_update_after_start():
    param_model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(param_model.weight)
    optimizer = torch.optim.SGD(param_model.parameters(), lr=1.0)
    swa = TorchSWA(param_model, optimizer, start=1, swa_lr=1.0, anneal_steps=1)
    assert swa.final_state(param_model)["weight"].item() == 0.0  # no average yet: the model's own weights
    weights, scheduled = [], []
    for update in range(4):
        param_model.weight.grad = -torch.ones(1, 1)
        optimizer.step()
        weights.append(param_model.weight.item())
        scheduled.append(swa.after_step(param_model, update))
    assert scheduled == [False, False, True, True]  # vilio: ups > swa_start
    assert swa.final_state(param_model)["weight"].item() == pytest.approx((weights[2] + weights[3]) / 2)


def test_bce_on_the_logit_difference_equals_vilio_two_class_nll_and_summed_variant():
    import torch.nn.functional as F

    from memeguard.models.blocks import two_class_to_logit
    from memeguard.training.loop import classification_loss

    torch.manual_seed(0)
    two_class = torch.randn(8, 2, requires_grad=True)
    labels = torch.randint(0, 2, (8,))
    vilio = F.nll_loss(F.log_softmax(two_class, dim=-1), labels)
    ours, logged = classification_loss(
        two_class_to_logit(two_class), labels.float(), sum_loss=False, grad_accum_steps=1
    )
    assert ours.item() == pytest.approx(vilio.item(), rel=1e-6) and logged == pytest.approx(
        vilio.item(), rel=1e-6
    )
    (grad_vilio,) = torch.autograd.grad(vilio, two_class)
    (grad_ours,) = torch.autograd.grad(ours, two_class)
    torch.testing.assert_close(grad_ours, grad_vilio)
    summed, _ = classification_loss(
        two_class_to_logit(two_class), labels.float(), sum_loss=True, grad_accum_steps=4
    )
    assert summed.item() == pytest.approx(vilio.item() * 8 / 4, rel=1e-6)  # x batch size / acc
