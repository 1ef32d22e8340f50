"""vilio's optimiser, schedules and the two forms of stochastic weight averaging.

* AdamW (betas 0.9/0.999, eps 1e-6) with up to four parameter groups: (backbone | head) x (decay | no decay).
  The head groups run at ``lr x head_lr_mult``: vilio's ``--reg`` gave every parameter whose name contains
  none of ``encoder``/``embeddings``/``pooler`` 500x the lr. Here that rule is generic, so it applies to any
  architecture.
* Linear warmup then linear decay to 0 (transformers' ``get_linear_schedule_with_warmup``, vilio's ``hm.py``),
  or half-cosine (``get_cosine_schedule_with_warmup``, vilio's ``pretrain_bertO.py`` / ``pretrain_bertV.py``).
* SWA "torch": ``AveragedModel`` (equal-weight mean, updated every update after ``swa_start``) + ``SWALR``,
  which replaces the linear schedule from ``swa_start`` on (cosine anneal over 10 updates to ``swa_lr``, then
  constant).
* SWA "contrib": torchcontrib's auto mode re-implemented: from update ``swa_start`` on the lr of every group
  is reset to ``swa_lr`` before each step (overriding the decay), and every ``swa_freq``-th update after
  ``swa_start`` folds the weights into a running mean; :meth:`ContribSWA.swap_in` puts the mean into the model
  at the end. [The semantics of torchcontrib 0.0.2's ``torchcontrib/optim/swa.py``, not run against the
  original.]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR, AveragedModel

NO_DECAY = ("bias", "LayerNorm.weight")  # vilio's no_decay list (substring match)


def is_backbone(name: str, keywords: Sequence[str]) -> bool:
    return any(k in name for k in keywords)


def parameter_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    head_lr_mult: float = 1.0,
    backbone_keywords: Sequence[str] = ("encoder", "embeddings", "pooler"),
) -> list[dict[str, Any]]:
    """Non-empty groups, each with ``name``, ``params``, ``lr``, ``weight_decay`` (names kept for logging)."""
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = head_lr_mult != 1.0 and not is_backbone(name, backbone_keywords)
        decay = weight_decay > 0 and not any(nd in name for nd in NO_DECAY)
        group = groups.setdefault(
            (head, decay),
            {
                "name": f"{'head' if head else 'backbone'}{'' if decay else '_no_decay'}",
                "params": [],
                "param_names": [],
                "lr": lr * (head_lr_mult if head else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def make_adamw(groups: list[dict[str, Any]], lr: float, eps: float = 1e-6) -> torch.optim.AdamW:
    """torch's AdamW equals the vendored HF AdamW vilio used (bias correction on, decoupled decay)."""
    clean = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    # fused: one elementwise kernel per tensor, bitwise reproducible across runs and resumes, and about twice
    # as fast as the per-tensor loop on CPU, where the 30k-row word embedding dominates tiny models' steps.
    return torch.optim.AdamW(clean, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=0.0, fused=True)


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> LambdaLR:
    """Linear warmup over ``warmup`` updates, then linear or half-cosine decay to 0 at ``total``.

    transformers' schedules, which vilio used; tests/training/test_training_optim.py checks every step's lr
    against the formulas, including ``warmup`` 0 and tiny ``total``. Past ``total`` (never stepped: runs take
    exactly ``total`` updates) the cosine would rise again.
    """
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
    return make(optimizer, num_warmup_steps=warmup, num_training_steps=total)


class TorchSWA:
    """vilio's ``--swa``: ``AveragedModel`` + ``SWALR``; both step only after update ``start``."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        start: int,
        swa_lr: float,
        anneal_steps: int = 10,
    ) -> None:
        self.start = start
        self.averaged = AveragedModel(model)
        self.scheduler = SWALR(
            optimizer, swa_lr=swa_lr, anneal_epochs=max(1, anneal_steps), anneal_strategy="cos"
        )

    def active(self, update: int) -> bool:
        """``update`` is the 0-based index of the update just taken; vilio tested ``ups > swa_start``."""
        return update > self.start

    def after_step(self, model: nn.Module, update: int) -> bool:
        """Average and anneal after the optimizer step; False when the regular schedule should step."""
        if not self.active(update):
            return False
        self.averaged.update_parameters(model)
        self.scheduler.step()
        return True

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to do before the step: SWALR sets the lr after it."""

    def after_update(self, model: nn.Module, update: int) -> bool:
        return self.after_step(model, update)

    def apply(self, model: nn.Module) -> None:
        """Put the final weights into ``model``."""
        model.load_state_dict(self.final_state(model))

    def final_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The averaged weights, or the model's when no average was taken (vilio would have saved the
        initial weights then: AveragedModel starts as a copy of the untrained model)."""
        if int(self.averaged.n_averaged) == 0:
            return model.state_dict()
        return self.averaged.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.scheduler.load_state_dict(state["scheduler"])


class ContribSWA:
    """torchcontrib's ``SWA(optimizer, swa_start, swa_freq, swa_lr)`` in auto mode, as a companion object.

    Call :meth:`before_step` right before ``optimizer.step()`` and :meth:`after_step` right after it.
    The running mean keeps one buffer per parameter, equal weights: ``buf += (p - buf) / (n + 1)``.
    """

    def __init__(self, params: Iterable[nn.Parameter], *, start: int, freq: int, swa_lr: float) -> None:
        self.params = list(params)
        self.start = start
        self.freq = freq
        self.swa_lr = swa_lr
        self.step_counter = 0
        self.n_averaged = 0
        self.buffers: list[torch.Tensor] | None = None

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.step_counter >= self.start:
            for group in optimizer.param_groups:
                group["lr"] = self.swa_lr

    @torch.no_grad()
    def after_step(self) -> None:
        self.step_counter += 1
        if self.step_counter > self.start and self.step_counter % self.freq == 0:
            if self.buffers is None:
                self.buffers = [p.detach().clone() for p in self.params]
            else:
                for buf, p in zip(self.buffers, self.params, strict=True):
                    buf.add_((p.detach() - buf) / (self.n_averaged + 1))
            self.n_averaged += 1

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        self.before_step(optimizer)

    def after_update(self, model: nn.Module, update: int) -> bool:
        """Average when due; False: the schedule still steps (its lr is overridden before each step)."""
        self.after_step()
        return False

    def apply(self, model: nn.Module) -> None:
        """Put the average into the parameters (they are ``model``'s)."""
        self.swap_in()

    @torch.no_grad()
    def swap_in(self) -> bool:
        """Copy the average into the parameters (torchcontrib's ``swap_swa_sgd``); False if none was taken."""
        if self.buffers is None:
            return False
        for buf, p in zip(self.buffers, self.params, strict=True):
            p.copy_(buf)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"step_counter": self.step_counter, "n_averaged": self.n_averaged, "buffers": self.buffers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_counter = int(state["step_counter"])
        self.n_averaged = int(state["n_averaged"])
        buffers = state["buffers"]
        self.buffers = None if buffers is None else [b.clone() for b in buffers]
