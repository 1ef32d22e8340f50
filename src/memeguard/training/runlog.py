"""Run-dir bookkeeping shared by fine-tuning and pretraining: metrics.jsonl, the progress bar, autocast."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from memeguard.io import write_text_atomic
from memeguard.names import METRICS_FILE


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Progress:
    """A rich progress bar with loss and the latest dev AUROC; silent on non-main ranks or when disabled."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]}  dev AUROC {task.fields[auroc]}"),
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, loss="-", auroc="-")
        self.progress.start()

    def update(self, loss: float, auroc: float) -> None:
        if self.progress is not None:
            auroc_text = "-" if math.isnan(auroc) else f"{auroc:.4f}"
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}", auroc=auroc_text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _parsed(line: str) -> dict[str, Any] | None:
    """One log line; None for the partial line a kill during an append leaves (it is dropped)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def trim_metrics(run_dir: Path, update: int) -> None:
    """On resume, drop the log lines written after the checkpoint (they will be written again): later
    updates, and the final evaluation (written after the last checkpoint, so always after it)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    records = [(line, _parsed(line)) for line in path.read_text().splitlines() if line]
    kept = [
        line
        for line, record in records
        if record is not None and record.get("update", 0) <= update and not record.get("final")
    ]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
