"""Fine-tuning with vilio's recipe (``hm.py``), resumable, single process or DDP.

Differences from vilio, on purpose:
* Loss: BCE-with-logits on the model's hateful logit. vilio used LogSoftmax + NLL over 2 classes; our 2-class
  heads are reduced to ``logit1 - logit0`` and for that difference d, ``-log softmax = softplus(-d)`` (label
  1) or ``softplus(d)`` (label 0), which is exactly BCE-with-logits on d: same loss, same gradients.
* ``proba`` in the CSVs is a probability in [0, 1]; vilio wrote the log-probability of class 1. AUROC is the
  same (monotone map); ensembles that averaged vilio's log-probs average geometric, not arithmetic, means.
* Accumulation: a leftover group at the end of an epoch is stepped (vilio carried its gradients into the next
  epoch); ``t_total = ceil(batches / grad_accum_steps) x epochs``.
* Torch SWA with no average taken yet keeps the trained weights (vilio would have saved the untrained copy).

Early stopping (``early_stop_patience``, not in vilio): after every evaluation (each ``eval_every`` updates)
the run stops once ``early_stop_patience`` evaluations in a row have not raised eval AUROC by
``early_stop_min_delta`` over the best so far; evaluations only count once eval AUROC has reached
``early_stop_after_auroc`` (a model still on a learning plateau is not stopped), and with
``early_stop_give_up_after`` a run that has not reached it by that update stops there. The lr schedule
still spans ``epochs`` (stopping cuts it short, it does not compress it). The run keeps its last weights,
or with ``select_best`` the best evaluation's. The stop is checkpointed as "no epoch left", so a run killed
after it resumes straight to its outputs. ``DONE`` records the updates taken (``updates``) and, when the best
weights replaced the last, ``metrics.best_update``: :func:`updates_taken` reads the two as the updates the
kept weights had, which the pipeline gives the matching traindev run as ``max_updates`` (traindev holds
the eval split, so it cannot stop on it; it trains for as long as its train run needed).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.io import write_bytes_atomic, write_text_atomic
from memeguard.models.base import MemeModel
from memeguard.names import (
    BEST_CHECKPOINT_FILE,
    DONE_FILE,
    FEATURES_META_FILE,
    MODEL_CONFIG_FILE,
    MODEL_DIR,
    MODEL_WEIGHTS_FILE,
    STORE_META_FILE,
    TRAIN_CONFIG_FILE,
    prediction_file,
)
from memeguard.records import DoneRecord, read_record
from memeguard.training import checkpoint as ckpt
from memeguard.training import distributed as ddp
from memeguard.training.build import (
    build_model,
    reads_region_features,
    standardization_overrides,
    store_overrides,
)
from memeguard.training.config import PretrainConfig, TrainConfig
from memeguard.training.data import (
    Collator,
    MemeRegionDataset,
    RegionSource,
    epoch_batches,
    iterate_eval,
    make_loader,
    open_regions,
    read_memes,
    region_feature_dim,
    require_labels,
    require_regions,
    to_device,
    verify_regions,
)
from memeguard.training.distill import SoftTargets, batch_distillation_loss, distillation_memes
from memeguard.training.optim import ContribSWA, TorchSWA, parameter_groups
from memeguard.training.run import RunState, already_done, launch, refuse_non_finite_loss
from memeguard.training.runlog import autocast

UpdateCallback = Callable[[int], None]


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path
    predictions: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)  # last evaluation of the final weights
    resumed: bool = False
    skipped: bool = False  # the run dir was already DONE
    model: MemeModel | None = field(default=None, repr=False)  # final weights (None when skipped)


@dataclass
class Prepared:
    """Everything validated before the first step: a bad configuration fails here, not mid-run."""

    train: list[Meme]
    eval: list[Meme]
    predict: dict[str, list[Meme]]
    regions: RegionSource
    feature_dim: int
    model: MemeModel
    soft: SoftTargets | None = None  # knowledge distillation's targets (training/distill.py)


def prepare(cfg: TrainConfig, regions: RegionSource | None = None) -> Prepared:
    store_name = str(cfg.features)
    source = open_regions(regions if regions is not None else cfg.features)
    train = read_memes(cfg.data_dir, cfg.train_split, cfg.limit)
    require_labels(train, cfg.train_split)
    train, soft = distillation_memes(cfg, train, source)  # + unlabelled memes when distilling
    evaluation: list[Meme] = []
    if cfg.eval_split:
        evaluation = read_memes(cfg.data_dir, cfg.eval_split, cfg.limit)
        require_labels(evaluation, cfg.eval_split)
    predict = {split: read_memes(cfg.data_dir, split, cfg.limit) for split in cfg.predict_splits}
    for split, memes in [(cfg.train_split, train), (cfg.eval_split, evaluation), *predict.items()]:
        require_regions(memes, source, str(split), store_name)
    verify_regions(source, [*train, *evaluation, *(m for memes in predict.values() for m in memes)])
    feature_dim = region_feature_dim(source, train)
    mode = cfg.standardize_features if reads_region_features(cfg.model) else "never"
    overrides = standardization_overrides(
        mode, cfg.init, cfg.model_overrides, source, [meme.id for meme in train]
    )
    store_meta = getattr(source, "meta", None)  # a FeatureStore's meta.json; None for in-memory regions
    overrides = store_overrides(cfg.model, overrides, source[train[0].id], store_meta)
    model = build_model(
        cfg.model, feature_dim=feature_dim, init=cfg.init, overrides=overrides, tokenizer=cfg.tokenizer
    )
    return Prepared(train, evaluation, predict, source, feature_dim, model, soft)


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, sum_loss: bool, grad_accum_steps: int
) -> tuple[torch.Tensor, float]:
    """(loss to backpropagate, mean BCE for the log)."""
    mean = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return scale_loss(mean, logits.shape[0], sum_loss, grad_accum_steps)


def scale_loss(
    mean: torch.Tensor, batch_size: int, sum_loss: bool, grad_accum_steps: int
) -> tuple[torch.Tensor, float]:
    """(loss to backpropagate, the batch's mean loss for the log). vilio's "summed" variant multiplies the
    mean by the batch size (its comment: ~2% abs without it); both are divided by the accumulation group's
    batches."""
    loss = mean * batch_size if sum_loss else mean
    return loss / grad_accum_steps, float(mean.detach())


class TrainingObjective(Protocol):
    """A model's own loss and companions (``model.training_objective()``; RGCL's retrieval memory).
    Models without one train on :func:`classification_loss`."""

    def refresh(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Called at every epoch's start with the training memes' batches (eval order)."""

    def loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, for the batch the model has just forwarded in training mode."""
        ...

    def finish(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Called with the final weights, before the predictions are written and the model saved."""


def training_objective(model: MemeModel) -> TrainingObjective | None:
    hook = getattr(model, "training_objective", None)
    return hook() if hook is not None else None


@torch.no_grad()
def predict_memes(
    model: MemeModel,
    collate: Collator,
    memes: Sequence[Meme],
    regions: RegionSource,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, probabilities) in the order of ``memes``."""
    was_training = model.training
    model.eval()
    ids, probas = [], []
    for batch in iterate_eval(MemeRegionDataset(memes, regions), batch_size, collate, num_workers):
        batch = to_device(batch, device)
        with autocast(device, precision):
            logits = model(batch)
        probas.append(torch.sigmoid(logits.float()).cpu().numpy())
        ids.append(batch["ids"].cpu().numpy())
    model.train(was_training)
    return np.concatenate(ids).astype(np.int64), np.concatenate(probas).astype(np.float64)


def evaluate(
    model: MemeModel,
    collate: Collator,
    memes: Sequence[Meme],
    regions: RegionSource,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    from memeguard.data.metrics import accuracy, auroc

    ids, proba = predict_memes(
        model,
        collate,
        memes,
        regions,
        batch_size=cfg.eval_batch_size,
        device=device,
        precision=cfg.precision,
        num_workers=cfg.num_workers,
    )
    labels = np.asarray([m.label for m in memes], dtype=np.int64)
    return {"auroc": auroc(labels, proba), "accuracy": accuracy(labels, proba)}


class _Tracker:
    """Small scalar state that must survive a resume: running loss and the best evaluation so far."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.loss_count = 0
        self.best_auroc = -math.inf
        self.best_update = -1
        self.last_auroc = math.nan
        # early stopping: the AUROC that last reset the patience, evaluations since then, whether it stopped
        self.stop_best = -math.inf
        self.stale_evals = 0
        self.stopped = False

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def snapshot_features_meta(features: object, run_dir: Path) -> None:
    """Copy the feature store's ``meta.json`` (extractor and its settings) into the run dir, when there is
    one."""
    meta = Path(str(features)) / STORE_META_FILE
    if meta.is_file():
        write_text_atomic(run_dir / FEATURES_META_FILE, meta.read_text(encoding="utf-8"))


def run_outputs(cfg: TrainConfig) -> list[str]:
    """What a finished fine-tuning run dir holds (paths relative to it), recorded in and checked against
    ``DONE``."""
    model_files = [f"{MODEL_DIR}/{MODEL_CONFIG_FILE}", f"{MODEL_DIR}/{MODEL_WEIGHTS_FILE}"]
    return [*(prediction_file(split) for split in cfg.predict_splits), *model_files]


def updates_taken(run_dir: str | Path) -> int:
    """The updates behind a finished run's kept weights (read from its ``DONE``): the best evaluation's
    when ``select_best`` swapped those in, else all the run took. A ``DONE`` that does not say is refused."""
    done = read_record(Path(run_dir) / DONE_FILE, DoneRecord)
    if "best_update" in done.metrics:
        return int(done.metrics["best_update"])
    if done.updates is None:
        raise ConfigError(f"{run_dir}/{DONE_FILE}: does not record the updates the run took; train it again")
    return done.updates


def _finished_result(run_dir: Path, cfg: TrainConfig) -> RunResult:
    done = read_record(run_dir / DONE_FILE, DoneRecord)
    predictions = {split: run_dir / prediction_file(split) for split in cfg.predict_splits}
    return RunResult(run_dir, run_dir / MODEL_DIR, predictions, dict(done.metrics), skipped=True)


def finetune(
    cfg: TrainConfig, *, regions: RegionSource | None = None, on_update: UpdateCallback | None = None
) -> RunResult:
    """Train, (optionally) evaluate on the way, write ``RUN_DIR/<split>.csv`` and ``RUN_DIR/model/``.

    ``regions`` overrides ``cfg.features`` with an in-memory Mapping-like source. ``on_update(n)`` is called
    after every update (tests use it to kill a run). A run dir with ``DONE`` is not trained again; one with a
    checkpoint resumes from it; one written under another configuration is refused.
    """
    cfg.refuse_traindev_keys()
    run_dir = Path(cfg.out_dir)
    with launch(cfg) as (device, info):
        if already_done(run_dir, cfg, TRAIN_CONFIG_FILE, info, device, run_outputs(cfg)):
            return _finished_result(run_dir, cfg)
        ckpt.seed_everything(cfg.seed)  # before the model is built: its random init is part of the run
        prepared = prepare(cfg, regions)
        return _train(cfg, prepared, run_dir, device, info, on_update)


def accumulation_group(index: int, batches: int, steps: int) -> tuple[int, bool]:
    """(batches in the accumulation group of batch ``index``, whether it is the group's last batch).
    The leftover group at an epoch's end is shorter; it is stepped, not carried into the next epoch."""
    first = index // steps * steps
    end = min(batches, first + steps)
    return end - first, index + 1 == end


def make_averaging(
    cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, total: int
) -> TorchSWA | ContribSWA | None:
    """vilio's --swa (torch), torchcontrib's SWA (contrib) or none."""
    start = int(cfg.swa_start * total)
    swa_lr = cfg.swa_lr if cfg.swa_lr is not None else cfg.lr
    if cfg.swa == "torch":
        return TorchSWA(model, optimizer, start=start, swa_lr=swa_lr, anneal_steps=cfg.swa_anneal_steps)
    if cfg.swa == "contrib":
        return ContribSWA(model.parameters(), start=start, freq=cfg.swa_freq, swa_lr=swa_lr)
    return None


class _Evaluation:
    """Evaluation during and after training: metrics.jsonl lines and (``select_best``) the best weights."""

    def __init__(
        self, cfg: TrainConfig, p: Prepared, state: RunState, collate: Collator, tracker: _Tracker
    ) -> None:
        self.cfg, self.p, self.state, self.collate, self.tracker = cfg, p, state, collate, tracker
        self.best_path = state.checkpoint_dir / BEST_CHECKPOINT_FILE
        self.enabled = bool(p.eval) and state.info.is_main  # rank 0 evaluates

    def metrics(self) -> dict[str, float]:
        return evaluate(self.p.model, self.collate, self.p.eval, self.p.regions, self.cfg, self.state.device)

    def during(self, epoch: int) -> None:
        if not self.enabled:
            return
        metrics = self.metrics()
        tracker = self.tracker
        tracker.last_auroc = metrics["auroc"]
        train_loss = tracker.loss_sum / max(1, tracker.loss_count)  # mean over the batches since last eval
        tracker.loss_sum, tracker.loss_count = 0.0, 0
        update = self.state.updates
        self.state.log(
            {
                "update": update,
                "epoch": epoch,
                "split": self.cfg.eval_split,
                "train_loss": train_loss,
                **metrics,
                "time": time.time(),
            }
        )
        self.track_stop(metrics["auroc"])
        if self.cfg.select_best and metrics["auroc"] > tracker.best_auroc:
            tracker.best_auroc, tracker.best_update = metrics["auroc"], update
            buffer = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in self.p.model.state_dict().items()}, buffer)
            write_bytes_atomic(self.best_path, buffer.getvalue())

    def track_stop(self, auroc: float) -> None:
        """Count an evaluation that did not improve on the best by ``early_stop_min_delta`` (once eval
        AUROC has reached ``early_stop_after_auroc``); an improvement resets the count."""
        tracker, cfg = self.tracker, self.cfg
        if auroc < cfg.early_stop_after_auroc:
            return
        if auroc > tracker.stop_best + cfg.early_stop_min_delta:
            tracker.stop_best, tracker.stale_evals = auroc, 0
        else:
            tracker.stale_evals += 1

    def final(self) -> dict[str, float]:
        """The final weights' metrics; with ``select_best``, the best weights replace the final ones when
        they scored higher."""
        if not self.enabled:
            return {}
        model, cfg = self.p.model, self.cfg
        metrics = self.metrics()
        self.state.log(
            {
                "update": self.state.updates,
                "epoch": cfg.epochs,
                "split": cfg.eval_split,
                "final": True,
                **({"stopped_early": True} if self.tracker.stopped else {}),
                **metrics,
                "time": time.time(),
            }
        )
        if cfg.select_best and self.tracker.best_auroc > metrics["auroc"] and self.best_path.is_file():
            best = torch.load(self.best_path, map_location=self.state.device, weights_only=True)
            model.load_state_dict(best)
            metrics = {**self.metrics(), "best_update": float(self.tracker.best_update)}
        return metrics


def rank_batches(
    num_items: int, cfg: TrainConfig | PretrainConfig, epoch: int, info: ddp.DistInfo
) -> list[list[int]]:
    """This rank's batches of ``epoch`` under the run's seed and batch size: fine-tuning and pretraining
    count their updates and walk their epochs with the same split of the data over the ranks."""
    return epoch_batches(
        num_items, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=info.rank, world_size=info.world_size
    )


def _train(
    cfg: TrainConfig,
    p: Prepared,
    run_dir: Path,
    device: torch.device,
    info: ddp.DistInfo,
    on_update: UpdateCallback | None,
) -> RunResult:
    model = p.model.to(device)
    model.train()
    objective = training_objective(model)  # before a checkpoint is resumed: it may change the state's keys
    collate = Collator(model.build_processor(), zero_visual=cfg.zero_visual)
    train_set = MemeRegionDataset(p.train, p.regions)
    batches_per_epoch = len(rank_batches(len(train_set), cfg, 0, info))
    total = math.ceil(batches_per_epoch / cfg.grad_accum_steps) * cfg.epochs
    groups = parameter_groups(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        head_lr_mult=cfg.head_lr_mult,
        backbone_keywords=cfg.backbone_keywords,
    )
    state = RunState(
        run_dir,
        cfg,
        TRAIN_CONFIG_FILE,
        model,
        groups,
        schedule="linear",
        warmup=int(cfg.warmup_ratio * total),
        total=total,
        device=device,
        info=info,
    )
    averaging = make_averaging(cfg, model, state.optimizer, total)
    tracker = _Tracker()
    state.start(
        torch_swa=averaging if cfg.swa == "torch" else None,
        contrib_swa=averaging if cfg.swa == "contrib" else None,
        tracker=tracker,
    )
    if info.is_main:
        snapshot_features_meta(cfg.features, run_dir)
    evaluation = _Evaluation(cfg, p, state, collate, tracker)
    with state.running():
        for epoch, start in state.epochs(cfg.epochs):
            if objective is not None:
                objective.refresh(_memory_batches(cfg, train_set, collate, device))
            batches = rank_batches(len(train_set), cfg, epoch, info)
            loader = make_loader(train_set, batches[start:], collate, cfg.num_workers)
            _train_epoch(
                cfg, state, loader, start, len(batches), epoch, averaging, evaluation, on_update, objective
            )
            if tracker.stopped:
                state.save(cfg.epochs, 0)  # no epoch left: a resume goes straight to the outputs
                break
            state.save(epoch + 1, 0)
    if averaging is not None:
        averaging.apply(model)
    metrics = evaluation.final()
    if info.enabled and cfg.select_best:
        # only rank 0 evaluated, so only it may have swapped in the best weights: share them
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    return _finish(cfg, p, state, collate, metrics, objective)


def _memory_batches(
    cfg: TrainConfig, train_set: MemeRegionDataset, collate: Collator, device: torch.device
) -> Iterable[dict[str, torch.Tensor]]:
    """The training memes' batches in file order, for an objective's memory (RGCL)."""
    for batch in iterate_eval(train_set, cfg.eval_batch_size, collate, cfg.num_workers):
        yield to_device(batch, device)


def _train_epoch(
    cfg: TrainConfig,
    state: RunState,
    loader: Iterable[dict[str, torch.Tensor]],
    start: int,
    batches: int,
    epoch: int,
    averaging: TorchSWA | ContribSWA | None,
    evaluation: _Evaluation,
    on_update: UpdateCallback | None,
    objective: TrainingObjective | None = None,
) -> None:
    """The batches of one epoch from ``start`` on: forward, backward, and an update after every group."""
    tracker = evaluation.tracker
    state.optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(loader, start=start):
        group_size, last_of_group = accumulation_group(index, batches, cfg.grad_accum_steps)
        batch = to_device(batch, state.device)
        with ddp.maybe_no_sync(state.trained, skip_sync=not last_of_group):
            with autocast(state.device, cfg.precision):
                logits = state.trained(batch)
            if objective is not None:
                own = objective.loss(batch, logits)
                loss, mean_bce = scale_loss(own, logits.shape[0], cfg.sum_loss, group_size)
            elif evaluation.p.soft is not None:
                loss, mean_bce = batch_distillation_loss(
                    evaluation.p.soft,
                    logits,
                    batch["ids"],
                    temperature=cfg.temperature,
                    alpha=cfg.alpha,
                    sum_loss=cfg.sum_loss,
                    grad_accum_steps=group_size,
                )
            else:
                loss, mean_bce = classification_loss(logits, batch["labels"], cfg.sum_loss, group_size)
            refuse_non_finite_loss(mean_bce, state.run_dir, state.updates, batch["ids"])
            state.backward(loss)
        tracker.loss_sum += mean_bce
        tracker.loss_count += 1
        if not last_of_group:
            continue
        state.update(averaging)
        state.show(tracker.loss_sum / max(1, tracker.loss_count), tracker.last_auroc)
        evaluated = bool(cfg.eval_every) and state.updates % cfg.eval_every == 0
        if evaluated:
            evaluation.during(epoch)
        tracker.stopped = stop_after_update(cfg, state, tracker, evaluated)
        if not tracker.stopped and cfg.checkpoint_every and state.updates % cfg.checkpoint_every == 0:
            if index + 1 < batches:
                state.save(epoch, index + 1)
        if on_update is not None:
            on_update(state.updates)
        if tracker.stopped:
            return


def stop_after_update(cfg: TrainConfig, state: RunState, tracker: _Tracker, evaluated: bool) -> bool:
    """Whether training ends now: ``max_updates`` reached, or (right after an evaluation) the early-stop
    patience used up or, from ``early_stop_give_up_after`` on, ``early_stop_after_auroc`` never reached.
    Only rank 0 evaluates, so its decision is shared: every rank stops together."""
    if cfg.max_updates is not None and state.updates >= cfg.max_updates:
        return True
    if not (cfg.early_stop_patience and evaluated):
        return False
    give_up = cfg.early_stop_give_up_after is not None and state.updates >= cfg.early_stop_give_up_after
    never_reached = tracker.stop_best == -math.inf  # track_stop sets it from early_stop_after_auroc on
    stop = tracker.stale_evals >= cfg.early_stop_patience or (give_up and never_reached)
    return ddp.broadcast_flag(stop, state.info, state.device)


def _finish(
    cfg: TrainConfig,
    p: Prepared,
    state: RunState,
    collate: Collator,
    metrics: dict[str, float],
    objective: TrainingObjective | None = None,
) -> RunResult:
    """Predict every ``--predict`` split with the final weights, save them, mark the run dir DONE."""
    from memeguard.data.predictions import write_predictions

    run_dir, model = state.run_dir, p.model
    predictions = {split: run_dir / prediction_file(split) for split in p.predict}

    if objective is not None:  # every rank: their models stay identical, memory included
        train_set = MemeRegionDataset(p.train, p.regions)
        objective.finish(_memory_batches(cfg, train_set, collate, state.device))

    def write_outputs() -> None:
        for split, memes in p.predict.items():
            ids, proba = predict_memes(
                model,
                collate,
                memes,
                p.regions,
                batch_size=cfg.eval_batch_size,
                device=state.device,
                precision=cfg.precision,
                num_workers=cfg.num_workers,
            )
            write_predictions(predictions[split], ids, proba)
        model.save_pretrained(run_dir / MODEL_DIR)

    done = lambda: {"metrics": metrics, "finished": time.time(), "updates": state.updates}  # noqa: E731
    state.finish(write_outputs, done, run_outputs(cfg))
    return RunResult(run_dir, run_dir / MODEL_DIR, predictions, metrics, resumed=state.resumed, model=model)
