"""The skeleton fine-tuning and pretraining share (torchtune's recipe: setup / train / save).

``launch`` resolves the device and joins the process group; ``already_done`` refuses a run dir written under
another configuration and tells whether it is finished; :class:`RunState` holds what one run updates and
saves (model, optimizer, schedule, GradScaler, companions such as SWA), resumes it from the checkpoint,
takes one optimizer update (:meth:`RunState.update`), logs and checkpoints. The two loops only say what a
batch is and what its loss is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from memeguard.errors import ConfigError, MemeguardError
from memeguard.io import write_json_atomic
from memeguard.names import (
    CHECKPOINTS_DIR,
    DONE_FILE,
    LAST_CHECKPOINT_FILE,
    METRICS_FILE,
    PRETRAIN_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
)
from memeguard.records import DoneRecord, folder_kinds, output_problems, output_records, read_record
from memeguard.training import checkpoint as ckpt
from memeguard.training import distributed as ddp
from memeguard.training.config import PretrainConfig, TrainConfig
from memeguard.training.optim import make_adamw, make_schedule
from memeguard.training.runlog import Progress, append_metrics, trim_metrics

# Keys that may change between a run and its resume without changing the result.
AnyConfig = TrainConfig | PretrainConfig
VOLATILE_KEYS = ("device", "num_workers", "progress", "eval_batch_size", "out_dir", "features", "data_dir")
# A run dir's config file -> the kind of folder it makes (``records.FOLDER_MARKERS``' names).
RUN_KINDS = {TRAIN_CONFIG_FILE: "fine-tuning run dir", PRETRAIN_CONFIG_FILE: "pretraining run dir"}
# Ids shown in a one-line error about a batch.
SHOWN_IDS = 10


class RunError(MemeguardError):
    """A run dir that cannot be used as it is, or a run that had to stop (non-finite loss)."""


class Averaging(Protocol):
    """Weight averaging hooked around the optimizer step (``optim.TorchSWA``, ``optim.ContribSWA``)."""

    def before_update(self, optimizer: torch.optim.Optimizer) -> None: ...

    def after_update(self, model: nn.Module, update: int) -> bool: ...


@contextlib.contextmanager
def launch(cfg: AnyConfig) -> Iterator[tuple[torch.device, ddp.DistInfo]]:
    """The run's device and process group (joined from the torchrun environment, left at the end)."""
    device = ddp.resolve_device(cfg.device)
    if device.type != "cuda" and cfg.precision == "fp16":
        raise ConfigError("fp16 needs a CUDA device; use --precision bf16 or fp32 on CPU")
    info = ddp.setup(device)
    try:
        yield device, info
    finally:
        ddp.teardown(info)


def check_same_config(run_dir: Path, cfg: AnyConfig, config_file: str) -> None:
    """A run dir belongs to one configuration: resuming or skipping it under another would mix results.
    Keys are compared under their current names, so a config saved as ``acc`` matches ``grad_accum_steps``."""
    path = run_dir / config_file
    if not path.is_file():
        return
    saved = type(cfg).canonical(read_record(path, dict[str, Any], ConfigError))
    saved = {**field_defaults(type(cfg), exclude=saved), **saved}  # a field added since: its default
    current = cfg.to_dict()
    changed = sorted(
        k for k in set(saved) | set(current) if k not in VOLATILE_KEYS and saved.get(k) != current.get(k)
    )
    if changed:
        raise ConfigError(
            f"{run_dir}: holds a run with a different configuration (differs in {changed}); "
            "use another --out or delete the run dir"
        )


def field_defaults(config: type[AnyConfig], exclude: Any = ()) -> dict[str, Any]:
    """JSON values of the optional fields not in ``exclude``: a config saved before a field existed ran
    with its default (early stopping off, ...), so it still matches a run that leaves the field alone."""
    from pydantic_core import to_jsonable_python

    return {
        name: to_jsonable_python(field.get_default(call_default_factory=True))
        for name, field in config.model_fields.items()
        if name not in exclude and not field.is_required()
    }


def refuse_foreign_folder(run_dir: Path, config_file: str) -> None:
    """``--out`` must be a new folder or a run dir of this kind: training into a feature store, a dataset,
    a pipeline output (or a run of the other kind) would mix its files with theirs."""
    if not run_dir.is_dir():
        return
    own = RUN_KINDS[config_file]
    foreign = {kind: marker for kind, marker in folder_kinds(run_dir).items() if kind != own}
    if foreign:
        kind, marker = next(iter(foreign.items()))
        raise RunError(
            f"{run_dir}: is a {kind} (it holds {marker}), not a {own}; choose another --out folder"
        )


def verify_finished(run_dir: Path, outputs: Sequence[str]) -> DoneRecord:
    """A finished run's ``DONE``, after checking that its outputs are still what it wrote: every one of
    ``outputs`` exists, and those ``DONE`` records (since it records them) have their size and sha256.
    A ``DONE`` from before outputs were recorded is checked for existence only."""
    done = read_record(run_dir / DONE_FILE, DoneRecord)
    recorded = done.outputs or {}
    # only the outputs this configuration makes are looked at: a DONE cannot point the check elsewhere
    problems = output_problems(run_dir, {rel: recorded.get(rel) for rel in outputs})
    if problems:
        checkpoint = Path(CHECKPOINTS_DIR) / LAST_CHECKPOINT_FILE
        redo = (
            f"redo the outputs from {checkpoint} (the final state)"
            if (run_dir / checkpoint).is_file()
            else "train the run again (it has no checkpoint)"
        )
        raise RunError(
            f"{run_dir}: finished run is incomplete ({'; '.join(problems)}); "
            f"delete its {DONE_FILE} to {redo}, or use another --out"
        )
    return done


def already_done(
    run_dir: Path,
    cfg: AnyConfig,
    config_file: str,
    info: ddp.DistInfo,
    device: torch.device,
    outputs: Sequence[str] = (),
) -> bool:
    """Whether the run dir is finished, with ``outputs`` intact (rank 0's answer, shared); a folder of
    another kind, a different configuration or a finished run with missing outputs is refused."""
    refuse_foreign_folder(run_dir, config_file)
    check_same_config(run_dir, cfg, config_file)
    done = (run_dir / DONE_FILE).is_file()
    if done:
        verify_finished(run_dir, outputs)
    return ddp.broadcast_flag(done, info, device)


def refuse_non_finite_loss(
    loss: float, run_dir: Path, update: int, meme_ids: Sequence[int] | torch.Tensor
) -> None:
    """Stop at the first NaN/inf loss, before it reaches the weights: the optimizer would spread it to
    every parameter and the run would go on to the end of the epoch for nothing. The check reads the
    float the log takes anyway, and ``meme_ids`` (the batch's tensor) is read only to report, so the
    normal path adds no device sync; the last checkpoint stays the resume point."""
    if math.isfinite(loss):
        return
    shown = ", ".join(str(int(i)) for i in meme_ids[:SHOWN_IDS]) + (
        " ..." if len(meme_ids) > SHOWN_IDS else ""
    )
    raise RunError(
        f"{run_dir}: loss is {loss} at update {update + 1} (batch of meme ids {shown}); stopped before the "
        f"update, the run resumes from {CHECKPOINTS_DIR}/{LAST_CHECKPOINT_FILE} (check the features with "
        "`memeguard features info --verify`, or lower --lr)"
    )


class RunState:
    """One run's trained objects, resume position, metrics log and progress bar.

    Built in two steps because the companions (SWA) need the optimizer: ``RunState(...)`` makes the
    optimizer, schedule and scaler; :meth:`start` adds the companions, resumes from ``checkpoints/last.pt``
    when there is one, writes the config and wraps the model for DDP. The checkpoint's states are saved
    in the order model, optimizer, scheduler, scaler, then the companions.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: AnyConfig,
        config_file: str,
        model: nn.Module,
        groups: list[dict[str, Any]],
        *,
        schedule: str,
        warmup: int,
        total: int,
        device: torch.device,
        info: ddp.DistInfo,
    ) -> None:
        self.run_dir, self.cfg, self.config_file = run_dir, cfg, config_file
        self.model, self.device, self.info, self.total = model, device, info, total
        self.optimizer = make_adamw(groups, cfg.lr, cfg.adam_eps)
        self.scheduler = make_schedule(self.optimizer, schedule, warmup, total)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.stateful: dict[str, Any] = {
            "model": model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }
        self.checkpoint_dir = run_dir / CHECKPOINTS_DIR
        self.position = ckpt.Position()
        self.resumed = False
        self.updates = 0  # optimizer updates taken so far
        self.trained: nn.Module = model
        self.bar: Progress | None = None

    def start(self, **companions: Any) -> None:
        """Resume (states and RNGs) if a checkpoint exists, prepare the run dir, wrap for DDP."""
        self.stateful.update(companions)
        payload = ckpt.load_checkpoint(self.checkpoint_dir, map_location=self.device)
        if payload is not None:
            self.position, self.resumed = ckpt.restore(payload, self.stateful), True
        self.updates = self.position.update
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / self.config_file, self.cfg.to_dict())
            if self.resumed:
                trim_metrics(self.run_dir, self.updates)
            else:
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        self.trained = ddp.wrap(self.model, self.info, self.device)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The progress bar (rank 0, if enabled), closed however the loop ends."""
        self.bar = Progress(self.cfg.progress and self.info.is_main, self.total, self.updates)
        try:
            yield
        finally:
            self.bar.close()

    def epochs(self, count: int) -> Iterator[tuple[int, int]]:
        """(epoch, first batch to run) from the resume position on."""
        for epoch in range(self.position.epoch, count):
            yield epoch, self.position.batch if epoch == self.position.epoch else 0

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def update(self, averaging: Averaging | None = None) -> None:
        """One optimizer update: unscale, clip, step, scaler update, schedule, zero_grad. ``averaging``
        runs around the step; when it returns True it has set the lr itself and the schedule does not step."""
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        if averaging is not None:
            averaging.before_update(self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if averaging is None or not averaging.after_update(self.model, self.updates):
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1

    def show(self, loss: float, auroc: float) -> None:
        if self.bar is not None:
            self.bar.update(loss, auroc)

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (rank 0)."""
        if self.info.is_main:
            append_metrics(self.run_dir, record)

    def save(self, epoch: int, batch: int) -> None:
        """Checkpoint: the next batch to run is ``batch`` of ``epoch``."""
        if self.info.is_main:
            position = ckpt.Position(epoch, batch, self.updates)
            ckpt.save_checkpoint(self.checkpoint_dir, position, self.stateful)
        ddp.barrier(self.info)

    def finish(
        self, write_outputs: Callable[[], None], done: Callable[[], dict[str, Any]], outputs: Sequence[str]
    ) -> None:
        """Rank 0 writes the outputs, then ``done()`` as ``DONE`` (last: a folder with it is finished), with
        the size and sha256 of every one of ``outputs`` so that a later run can tell they are intact."""
        if self.info.is_main:
            write_outputs()
            recorded = {rel: r.model_dump() for rel, r in output_records(self.run_dir, list(outputs)).items()}
            write_json_atomic(self.run_dir / DONE_FILE, {**done(), "outputs": recorded})
        ddp.barrier(self.info)
