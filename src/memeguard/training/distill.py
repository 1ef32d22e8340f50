"""Knowledge distillation: one student trained on a teacher ensemble's probabilities (Hinton et al., 2015).

The loss, per meme, with ``z`` the student's hateful logit, ``p`` the teacher's P(hateful), ``T`` the
temperature and ``alpha`` the weight of the hard labels:

* soft term ``T^2 * BCE(sigmoid(z / T), sigmoid(logit(p) / T))``: the binary form of Hinton's KD. Both the
  student's and the teacher's logits are divided by ``T`` (a softmax over the two classes ``[0, l]`` is a
  sigmoid of ``l``, so this is exactly the two-class softened cross-entropy); ``T^2`` keeps the soft
  gradients' size independent of ``T`` (they scale as ``1 / T^2`` otherwise), so ``alpha`` means the same
  at every temperature. The teacher's probability is clipped to ``[1e-6, 1 - 1e-6]`` before its logit.
* a labelled meme: ``alpha * BCE(sigmoid(z), y) + (1 - alpha) * soft``;
* a meme without a label (test splits, extra memes): the soft term alone, at full weight: its teacher
  probability is the only target it has, and every meme weighs the same in the batch mean.

``alpha = 1`` on memes that all have labels is the plain hard-label loss, computed by the very call
``loop.classification_loss`` makes, so such a run is bit-identical to one without soft targets.

The targets come as a predictions CSV (``id,proba,label``: what ``predict`` and ``ensemble`` write);
only its ``proba`` column is read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.training.config import TrainConfig
    from memeguard.training.data import RegionSource

TEACHER_CLIP = 1e-6  # teacher probabilities of exactly 0 or 1 would have infinite logits


class SoftTargets:
    """Teacher probabilities and (where known) hard labels of every meme a student trains on, looked up
    by the batch's meme ids: batches mix labelled and unlabelled memes, and the model's batch layout only
    carries ``labels`` when every meme has one."""

    def __init__(self, teacher: Mapping[int, float], labels: Mapping[int, int | None]) -> None:
        missing = [meme_id for meme_id in labels if meme_id not in teacher]
        if missing:
            raise ConfigError(
                f"the soft targets lack {len(missing)} training memes (e.g. id {missing[0]}); "
                "score every meme of the distillation set with the teacher"
            )
        self._index = {meme_id: k for k, meme_id in enumerate(labels)}
        self.teacher = torch.tensor([float(teacher[i]) for i in labels], dtype=torch.float32)
        self.labels = torch.tensor([float(-1 if y is None else y) for y in labels.values()])

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher probabilities, labels with -1 where unknown) of the memes ``ids``, on ``ids``' device."""
        rows = torch.tensor([self._index[int(i)] for i in ids.tolist()], dtype=torch.long)
        return self.teacher[rows].to(ids.device), self.labels[rows].to(ids.device)


def read_soft_targets(path: str | os.PathLike[str]) -> dict[int, float]:
    """id -> teacher probability from a predictions CSV (validated by ``read_predictions``: errors name
    the file and line; ids must be unique and probabilities in [0, 1])."""
    from memeguard.data.predictions import read_predictions

    preds = read_predictions(Path(path))
    return {int(i): float(p) for i, p in zip(preds.ids, preds.proba, strict=True)}


def soften(teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's probability at temperature ``T``: ``sigmoid(logit(p) / T)``."""
    clipped = teacher.float().clamp(TEACHER_CLIP, 1.0 - TEACHER_CLIP)
    return torch.sigmoid(torch.logit(clipped) / temperature)


def distillation_loss(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The batch mean of the per-meme loss in the module docstring; ``labels`` holds -1 for a meme
    without a label."""
    logits = logits.float()
    labelled = labels >= 0
    if alpha == 1.0 and bool(labelled.all()):
        return F.binary_cross_entropy_with_logits(logits, labels.float())  # loop.classification_loss's call
    soft = F.binary_cross_entropy_with_logits(
        logits / temperature, soften(teacher, temperature), reduction="none"
    ) * (temperature**2)
    hard = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="none")
    per_meme = torch.where(labelled, alpha * hard + (1.0 - alpha) * soft, soft)
    return per_meme.mean()


def batch_distillation_loss(
    targets: SoftTargets,
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    sum_loss: bool,
    grad_accum_steps: int,
) -> tuple[torch.Tensor, float]:
    """(loss to backpropagate, mean loss for the log), scaled like ``loop.classification_loss`` (vilio's
    summed variant, the accumulation group) so that the optimiser settings mean the same with KD."""
    teacher, labels = targets.lookup(ids)
    mean = distillation_loss(logits, teacher, labels, temperature=temperature, alpha=alpha)
    loss = mean * logits.shape[0] if sum_loss else mean
    return loss / grad_accum_steps, float(mean.detach())


def build_soft_targets(
    path: str | os.PathLike[str], labelled: Iterable[tuple[int, int | None]]
) -> SoftTargets:
    """The soft targets of the (id, label-or-None) training memes, read from ``path``."""
    teacher = read_soft_targets(path)
    labels = dict(labelled)
    try:
        return SoftTargets(teacher, labels)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_unlabelled(data_dir: str | os.PathLike[str], entry: str, limit: int | None) -> list[Meme]:
    """The memes of one ``unlabelled`` entry, labels dropped: a ``.jsonl`` file (HM lines) or a split of
    ``data_dir``. Test labels, where a release has them, must not leak into the student."""
    from memeguard.data.hm import load_jsonl
    from memeguard.training.data import read_memes

    if entry.endswith(".jsonl"):
        if not Path(entry).is_file():
            raise ConfigError(f"{entry}: unlabelled memes file not found")
        memes = load_jsonl(entry)[:limit] if limit else load_jsonl(entry)
    else:
        memes = read_memes(data_dir, entry, limit)
    return [dataclasses.replace(meme, label=None) for meme in memes]


def dev_ids(data_dir: str | os.PathLike[str]) -> dict[int, str]:
    """id -> dev split of the dataset's dev memes (dev_seen, dev_unseen, phase-1 dev)."""
    from memeguard.data.hm import load_jsonl, split_path
    from memeguard.names import DEV_SEEN, DEV_UNSEEN

    found: dict[int, str] = {}
    for split in (DEV_SEEN, DEV_UNSEEN):
        path = split_path(data_dir, split)
        if path.is_file():
            found.update({meme.id: split for meme in load_jsonl(path)})
    return found


def distillation_groups(cfg: TrainConfig, train: Sequence[Meme]) -> list[tuple[str, Path, list[Meme]]]:
    """(split or file, the folder its ``img`` paths are relative to, its memes) of the distillation set:
    the training split less its dev memes (vilio's ``train_clean`` adds dev_unseen's new memes), then
    every ``unlabelled`` entry less the ids already in (an id keeps its first, labelled, copy).

    A dev meme in an ``unlabelled`` entry is refused, naming the entry and the id: dev labels choose
    weights and thresholds, and a student fitted to the teacher's dev scores would be judged on its own
    training data."""
    dev = dev_ids(cfg.data_dir)
    labelled = [meme for meme in train if meme.id not in dev]
    groups = [(cfg.train_split, Path(cfg.data_dir), labelled)]
    seen = {meme.id for meme in labelled}
    for entry in cfg.unlabelled or ():
        folder = Path(entry).parent if entry.endswith(".jsonl") else Path(cfg.data_dir)
        extra = [meme for meme in read_unlabelled(cfg.data_dir, entry, cfg.limit) if meme.id not in seen]
        clash = next((meme.id for meme in extra if meme.id in dev), None)
        if clash is not None:
            raise ConfigError(
                f"{entry}: meme id {clash} is in {dev[clash]}; dev memes are never distillation targets"
            )
        seen.update(meme.id for meme in extra)
        groups.append((entry, folder, extra))
    return groups


def distillation_memes(
    cfg: TrainConfig, train: Sequence[Meme], source: RegionSource
) -> tuple[list[Meme], SoftTargets | None]:
    """The memes a run trains on and their soft targets: ``train`` and None without ``soft_targets``;
    otherwise the :func:`distillation_groups`' memes, each in the store."""
    from memeguard.training.data import require_regions

    if cfg.soft_targets is None:
        return list(train), None
    refuse_own_objective(cfg.model)
    memes: list[Meme] = []
    for entry, _, group in distillation_groups(cfg, train):
        require_regions(group, source, entry, str(cfg.features))
        memes.extend(group)
    return memes, build_soft_targets(cfg.soft_targets, [(meme.id, meme.label) for meme in memes])


def refuse_own_objective(model: str) -> None:
    """A model that trains on its own objective (RGCL's contrastive loss over a retrieval memory) has no
    soft-target form: refused before anything is built, rather than silently ignoring the teacher."""
    from memeguard.models.registry import architecture_for, get_config

    if hasattr(architecture_for(get_config(model).model_type), "training_objective"):
        raise ConfigError(f"{model}: trains on its own objective (RGCL), which has no soft-target form")
