"""Fine-tuning with vilio's recipe (``hm.py``), resumable, single process or DDP.

Differences from vilio, on purpose:
* Loss: BCE-with-logits on the model's hateful logit. vilio used LogSoftmax + NLL over 2 classes; our 2-class
  heads are reduced to ``logit1 - logit0`` and for that difference d, ``-log softmax = softplus(-d)`` (label 1)
  or ``softplus(d)`` (label 0), which is exactly BCE-with-logits on d: same loss, same gradients.
* ``proba`` in the CSVs is a probability in [0, 1]; vilio wrote the log-probability of class 1. AUROC is the
  same (monotone map); ensembles that averaged vilio's log-probs average geometric, not arithmetic, means.
* Accumulation: a leftover group at the end of an epoch is stepped (vilio carried its gradients into the next
  epoch); ``t_total = ceil(batches / acc) x epochs``.
* Torch SWA with no average taken yet keeps the trained weights (vilio would have saved the untrained copy).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from memeguard.models.base import MemeModel
from memeguard.training import checkpoint as ckpt
from memeguard.training import distributed as ddp
from memeguard.training.build import build_model, standardization_overrides
from memeguard.training.config import TrainConfig
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
)
from memeguard.training.optim import ContribSWA, TorchSWA, make_adamw, make_schedule, parameter_groups
from memeguard.training.runlog import (
    DONE_NAME,
    METRICS_FILE,
    Progress,
    append_metrics,
    autocast,
    trim_metrics,
)

CONFIG_FILE = "train_config.json"
FEATURES_META_FILE = "features_meta.json"  # a copy of the store's meta.json: serving needs only the run dir
# Keys that may change between a run and its resume without changing the result.
VOLATILE_KEYS = ("device", "num_workers", "progress", "eval_batch_size", "out_dir", "features", "data_dir")

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


def prepare(cfg: TrainConfig, regions: RegionSource | None = None) -> Prepared:
    store_name = str(cfg.features)
    source = open_regions(regions if regions is not None else cfg.features)
    train = read_memes(cfg.data_dir, cfg.train_split, cfg.limit)
    require_labels(train, cfg.train_split)
    evaluation: list[Meme] = []
    if cfg.eval_split:
        evaluation = read_memes(cfg.data_dir, cfg.eval_split, cfg.limit)
        require_labels(evaluation, cfg.eval_split)
    predict = {split: read_memes(cfg.data_dir, split, cfg.limit) for split in cfg.predict_splits}
    for split, memes in [(cfg.train_split, train), (cfg.eval_split, evaluation), *predict.items()]:
        require_regions(memes, source, str(split), store_name)
    feature_dim = region_feature_dim(source, train)
    overrides = standardization_overrides(cfg.standardize_features, cfg.init, cfg.model_overrides, source,
                                          [meme.id for meme in train])
    model = build_model(cfg.model, feature_dim=feature_dim, init=cfg.init, overrides=overrides, tokenizer=cfg.tokenizer)
    return Prepared(train, evaluation, predict, source, feature_dim, model)


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, sum_loss: bool, acc: int
) -> tuple[torch.Tensor, float]:
    """(loss to backpropagate, mean BCE for the log). vilio's "summed" variant multiplies the mean by the
    batch size (its comment: ~2% abs without it); both are divided by the accumulation steps."""
    mean = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    loss = mean * logits.shape[0] if sum_loss else mean
    return loss / acc, float(mean.detach())


@torch.no_grad()
def predict_memes(
    model: MemeModel, collate: Collator, memes: Sequence[Meme], regions: RegionSource, *, batch_size: int,
    device: torch.device, precision: str = "fp32", num_workers: int = 0,
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


def evaluate(model: MemeModel, collate: Collator, memes: Sequence[Meme], regions: RegionSource,
             cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    from memeguard.data.metrics import accuracy, auroc

    ids, proba = predict_memes(model, collate, memes, regions, batch_size=cfg.eval_batch_size, device=device,
                               precision=cfg.precision, num_workers=cfg.num_workers)
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

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _check_same_config(run_dir: Path, cfg: TrainConfig) -> None:
    """A run dir belongs to one configuration: resuming or skipping it under another would mix results."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as in the file
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in VOLATILE_KEYS and saved.get(k) != current.get(k))
    if changed:
        raise ConfigError(f"{run_dir}: holds a run with a different configuration (differs in {changed}); "
                          "use another --out or delete the run dir")


def snapshot_features_meta(features: object, run_dir: Path) -> None:
    """Copy the feature store's ``meta.json`` (extractor and its settings) into the run dir, when there is one."""
    meta = Path(str(features)) / "meta.json"
    if meta.is_file():
        write_text_atomic(run_dir / FEATURES_META_FILE, meta.read_text(encoding="utf-8"))


def _finished_result(run_dir: Path, cfg: TrainConfig) -> RunResult:
    done = json.loads((run_dir / DONE_NAME).read_text() or "{}")
    predictions = {split: run_dir / f"{split}.csv" for split in cfg.predict_splits}
    return RunResult(run_dir, run_dir / "model", predictions, done.get("metrics", {}), skipped=True)


def finetune(
    cfg: TrainConfig, *, regions: RegionSource | None = None, on_update: UpdateCallback | None = None
) -> RunResult:
    """Train, (optionally) evaluate on the way, write ``RUN_DIR/<split>.csv`` and ``RUN_DIR/model/``.

    ``regions`` overrides ``cfg.features`` with an in-memory Mapping-like source. ``on_update(n)`` is called
    after every update (tests use it to kill a run). A run dir with ``DONE`` is not trained again; one with a
    checkpoint resumes from it.
    """
    run_dir = Path(cfg.out_dir)
    device = ddp.resolve_device(cfg.device)
    if device.type != "cuda" and cfg.precision == "fp16":
        raise ConfigError("fp16 needs a CUDA device; use --precision bf16 or fp32 on CPU")
    info = ddp.setup(device)
    try:
        _check_same_config(run_dir, cfg)
        if ddp.broadcast_flag((run_dir / DONE_NAME).is_file(), info, device):
            return _finished_result(run_dir, cfg)
        ckpt.seed_everything(cfg.seed)  # before the model is built: its random init is part of the run
        prepared = prepare(cfg, regions)
        return _train(cfg, prepared, run_dir, device, info, on_update)
    finally:
        ddp.teardown(info)


def _train(cfg: TrainConfig, p: Prepared, run_dir: Path, device: torch.device, info: ddp.DistInfo,
           on_update: UpdateCallback | None) -> RunResult:
    model = p.model.to(device)
    model.train()
    processor = model.build_processor()
    collate = Collator(processor, zero_visual=cfg.zero_visual)
    train_set = MemeRegionDataset(p.train, p.regions)

    batches_per_epoch = len(epoch_batches(len(train_set), cfg.batch_size, seed=cfg.seed, epoch=0,
                                          rank=info.rank, world_size=info.world_size))
    updates_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    total = updates_per_epoch * cfg.epochs
    groups = parameter_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr_mult=cfg.head_lr_mult,
                              backbone_keywords=cfg.backbone_keywords)
    optimizer = make_adamw(groups, cfg.lr, cfg.adam_eps)
    scheduler = make_schedule(optimizer, "linear", int(cfg.warmup_ratio * total), total)
    swa_start = int(cfg.swa_start * total)
    swa_lr = cfg.swa_lr if cfg.swa_lr is not None else cfg.lr
    torch_swa = TorchSWA(model, optimizer, start=swa_start, swa_lr=swa_lr,
                         anneal_steps=cfg.swa_anneal_steps) if cfg.swa == "torch" else None
    contrib = ContribSWA(model.parameters(), start=swa_start, freq=cfg.swa_freq,
                         swa_lr=swa_lr) if cfg.swa == "contrib" else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    tracker = _Tracker()
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
                "torch_swa": torch_swa, "contrib_swa": contrib, "tracker": tracker}

    checkpoint_dir = run_dir / "checkpoints"
    payload = ckpt.load_checkpoint(checkpoint_dir, map_location=device)
    position = ckpt.restore(payload, stateful) if payload is not None else ckpt.Position()
    resumed = payload is not None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, cfg.to_dict())
        snapshot_features_meta(cfg.features, run_dir)
        if resumed:
            trim_metrics(run_dir, position.update)
        else:
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
    best_path = checkpoint_dir / "best.pt"
    trained = ddp.wrap(model, info, device)

    def log_eval(update: int, epoch: int) -> None:
        if not (p.eval and info.is_main):
            return
        metrics = evaluate(model, collate, p.eval, p.regions, cfg, device)
        tracker.last_auroc = metrics["auroc"]
        train_loss = tracker.loss_sum / max(1, tracker.loss_count)  # mean over the batches since the last eval
        tracker.loss_sum, tracker.loss_count = 0.0, 0
        append_metrics(run_dir, {"update": update, "epoch": epoch, "split": cfg.eval_split,
                                  "train_loss": train_loss, **metrics, "time": time.time()})
        if cfg.select_best and metrics["auroc"] > tracker.best_auroc:
            tracker.best_auroc, tracker.best_update = metrics["auroc"], update
            buffer = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
            write_bytes_atomic(best_path, buffer.getvalue())

    def save(epoch: int, batch: int, update: int) -> None:
        if info.is_main:
            ckpt.save_checkpoint(checkpoint_dir, ckpt.Position(epoch, batch, update), stateful)
        ddp.barrier(info)

    bar = Progress(cfg.progress and info.is_main, total, position.update)
    update = position.update
    try:
        for epoch in range(position.epoch, cfg.epochs):
            batches = epoch_batches(len(train_set), cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                    rank=info.rank, world_size=info.world_size)
            start = position.batch if epoch == position.epoch else 0
            loader = make_loader(train_set, batches[start:], collate, cfg.num_workers)
            optimizer.zero_grad(set_to_none=True)
            for index, batch in enumerate(loader, start=start):
                group_end = min(batches_per_epoch, (index // cfg.grad_accum_steps + 1) * cfg.grad_accum_steps)
                last_of_group = index + 1 == group_end
                acc = group_end - (index // cfg.grad_accum_steps) * cfg.grad_accum_steps  # the leftover group of an epoch is shorter
                batch = to_device(batch, device)
                with ddp.maybe_no_sync(trained, skip_sync=not last_of_group):
                    with autocast(device, cfg.precision):
                        logits = trained(batch)
                    loss, mean_bce = classification_loss(logits, batch["labels"], cfg.sum_loss, acc)
                    scaler.scale(loss).backward()
                tracker.loss_sum += mean_bce
                tracker.loss_count += 1
                if not last_of_group:
                    continue
                scaler.unscale_(optimizer)
                if cfg.clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                if contrib is not None:
                    contrib.before_step(optimizer)
                scaler.step(optimizer)
                scaler.update()
                if contrib is not None:
                    contrib.after_step()
                if torch_swa is None or not torch_swa.after_step(model, update):
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                update += 1
                bar.update(tracker.loss_sum / max(1, tracker.loss_count), tracker.last_auroc)
                if cfg.eval_every and update % cfg.eval_every == 0:
                    log_eval(update, epoch)
                if cfg.checkpoint_every and update % cfg.checkpoint_every == 0 and index + 1 < batches_per_epoch:
                    save(epoch, index + 1, update)
                if on_update is not None:
                    on_update(update)
            save(epoch + 1, 0, update)
    finally:
        bar.close()

    if contrib is not None:
        contrib.swap_in()
    if torch_swa is not None:
        model.load_state_dict(torch_swa.final_state(model))
    metrics: dict[str, float] = {}
    if p.eval and info.is_main:
        metrics = evaluate(model, collate, p.eval, p.regions, cfg, device)
        append_metrics(run_dir, {"update": update, "epoch": cfg.epochs, "split": cfg.eval_split,
                                  "final": True, **metrics, "time": time.time()})
        if cfg.select_best and tracker.best_auroc > metrics["auroc"] and best_path.is_file():
            model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
            metrics = {**evaluate(model, collate, p.eval, p.regions, cfg, device),
                       "best_update": float(tracker.best_update)}
    if info.enabled and cfg.select_best:
        # only rank 0 evaluated, so only it may have swapped in the best weights: share them
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    return _finish(cfg, p, run_dir, model, collate, device, info, metrics, resumed)


def _finish(cfg: TrainConfig, p: Prepared, run_dir: Path, model: MemeModel, collate: Collator,
            device: torch.device, info: ddp.DistInfo, metrics: dict[str, float], resumed: bool) -> RunResult:
    from memeguard.data.predictions import write_predictions

    predictions = {split: run_dir / f"{split}.csv" for split in p.predict}
    if info.is_main:
        for split, memes in p.predict.items():
            ids, proba = predict_memes(model, collate, memes, p.regions, batch_size=cfg.eval_batch_size,
                                       device=device, precision=cfg.precision, num_workers=cfg.num_workers)
            write_predictions(predictions[split], ids, proba)
        model.save_pretrained(run_dir / "model")
        write_json_atomic(run_dir / DONE_NAME, {"metrics": metrics, "finished": time.time()})
    ddp.barrier(info)
    return RunResult(run_dir, run_dir / "model", predictions, metrics, resumed=resumed, model=model)
