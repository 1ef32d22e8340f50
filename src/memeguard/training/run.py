"""The skeleton fine-tuning and pretraining share (torchtune's recipe: setup / train / save).

``launch`` resolves the device and joins the process group; ``already_done`` refuses a run dir written under
another configuration and tells whether it is finished; :class:`RunState` holds what one run updates and
saves (model, optimizer, schedule, GradScaler, companions such as SWA), resumes it from the checkpoint,
takes one optimizer update (:meth:`RunState.update`), logs and checkpoints. The two loops only say what a
batch is and what its loss is.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from memeguard.errors import ConfigError
from memeguard.io import write_json_atomic
from memeguard.names import CHECKPOINTS_DIR, DONE_FILE, METRICS_FILE
from memeguard.training import checkpoint as ckpt
from memeguard.training import distributed as ddp
from memeguard.training.config import PretrainConfig, TrainConfig
from memeguard.training.optim import make_adamw, make_schedule
from memeguard.training.runlog import Progress, append_metrics, trim_metrics

# Keys that may change between a run and its resume without changing the result.
AnyConfig = TrainConfig | PretrainConfig
VOLATILE_KEYS = ("device", "num_workers", "progress", "eval_batch_size", "out_dir", "features", "data_dir")


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
    saved = type(cfg).canonical(json.loads(path.read_text()))
    current = cfg.to_dict()
    changed = sorted(
        k for k in set(saved) | set(current) if k not in VOLATILE_KEYS and saved.get(k) != current.get(k)
    )
    if changed:
        raise ConfigError(
            f"{run_dir}: holds a run with a different configuration (differs in {changed}); "
            "use another --out or delete the run dir"
        )


def already_done(
    run_dir: Path, cfg: AnyConfig, config_file: str, info: ddp.DistInfo, device: torch.device
) -> bool:
    """Whether the run dir is finished (rank 0's answer, shared); a different configuration is refused."""
    check_same_config(run_dir, cfg, config_file)
    return ddp.broadcast_flag((run_dir / DONE_FILE).is_file(), info, device)


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

    def finish(self, write_outputs: Callable[[], None], done: Callable[[], dict[str, Any]]) -> None:
        """Rank 0 writes the outputs, then ``done()`` as ``DONE`` (last: a folder with it is finished)."""
        if self.info.is_main:
            write_outputs()
            write_json_atomic(self.run_dir / DONE_FILE, done())
        ddp.barrier(self.info)
