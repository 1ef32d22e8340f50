"""Training curves from each run's ``metrics.jsonl``: training loss and dev AUROC per update.

One figure per family with its seeds overlaid, because seed-to-seed spread is what vilio's seed averaging
is for. The log is read as a stream with a per-line size limit (a corrupt or hostile log cannot exhaust
memory), unreadable lines are counted and skipped (a kill mid-append leaves a partial last line), and each
curve is thinned to at most :data:`~memeguard.pipeline.report.common.MAX_CURVE_POINTS` points.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from memeguard.names import METRICS_FILE, TRAIN_CONFIG_FILE, TRAINDEV
from memeguard.pipeline.report.common import colour, downsample, style
from memeguard.pipeline.report.page import figure

MAX_LINE_BYTES = 64 * 1024  # a metrics line is ~200 bytes
MAX_RECORDS = 200_000  # evaluations kept per run (vilio's longest runs log a few hundred)


@dataclass
class Curve:
    """One run's log: ``(update, value)`` for the loss and the dev AUROC; the final evaluation apart."""

    loss: list[tuple[float, float]] = field(default_factory=list)
    auroc: list[tuple[float, float]] = field(default_factory=list)
    final_auroc: tuple[float, float] | None = None
    skipped: int = 0  # unreadable lines, and records beyond MAX_RECORDS
    train_split: str | None = None  # from train_config.json: run (b) trains on traindev, which holds dev
    eval_split: str | None = None

    @property
    def eval_in_train(self) -> bool:
        return self.train_split == TRAINDEV


def _lines(handle: IO[bytes]) -> Iterator[bytes | None]:
    """The file's lines, streamed; None for one longer than the limit (read past in chunks, never held)."""
    while line := handle.readline(MAX_LINE_BYTES):
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _train_split(run_dir: Path) -> str | None:
    path = run_dir / TRAIN_CONFIG_FILE
    if not path.is_file() or path.stat().st_size > MAX_LINE_BYTES:
        return None
    try:
        config = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = config.get("train_split") if isinstance(config, dict) else None
    return value if isinstance(value, str) else None


def _add(curve: Curve, line: bytes | None) -> None:
    """One log line into the curve; unreadable ones are counted, records past the cap are dropped."""
    try:
        record = json.loads(line) if line is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    update = _number(record, "update") if isinstance(record, dict) else None
    if update is None:
        curve.skipped += line is None or bool(line.strip())
        return
    loss, auroc = _number(record, "train_loss"), _number(record, "auroc")
    if isinstance(record.get("split"), str) and auroc is not None:
        curve.eval_split = record["split"]
    if record.get("final"):
        curve.final_auroc = (update, auroc) if auroc is not None else curve.final_auroc
    elif len(curve.loss) + len(curve.auroc) >= 2 * MAX_RECORDS:
        curve.skipped += 1
    else:
        if loss is not None:
            curve.loss.append((update, loss))
        if auroc is not None:
            curve.auroc.append((update, auroc))


def read_curve(run_dir: Path) -> Curve | None:
    """The curve of one run dir; None when it has no log (an inference-only stage)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    curve = Curve(train_split=_train_split(Path(run_dir)))
    with open(path, "rb") as handle:
        for line in _lines(handle):
            _add(curve, line)
    return curve


def _plot(ax, points: list[tuple[float, float]], k: int, n: int, dashed: bool, label: str) -> None:  # noqa: ANN001
    if not points:
        return
    x, y = downsample(*np.asarray(points, dtype=np.float64).T)
    ax.plot(
        x,
        y,
        ls="--" if dashed else "-",
        marker="o" if len(x) < 30 else None,
        ms=3.5,
        lw=1.4,
        color=colour(k, n),
        label=label,
    )


def family_figure(family: str, runs: Mapping[str, Curve]) -> str | None:
    """Loss (left) and dev AUROC (right) per update, seeds overlaid; None when nothing was logged."""
    from matplotlib.figure import Figure

    if not any(c.loss or c.auroc or c.final_auroc for c in runs.values()):
        return None
    eval_split = next((c.eval_split for c in runs.values() if c.eval_split), "dev")
    fig = Figure(figsize=(10.4, 3.6))
    loss_ax, auroc_ax = fig.subplots(1, 2)
    for k, (name, curve) in enumerate(runs.items()):
        dashed = curve.eval_in_train
        _plot(loss_ax, curve.loss, k, len(runs), dashed, name)
        # The final evaluation is a star of its own: with SWA or select_best it scores other weights.
        _plot(auroc_ax, curve.auroc, k, len(runs), dashed, name)
        if curve.final_auroc:
            label = None if curve.auroc else name
            auroc_ax.plot(*curve.final_auroc, "*", ms=11, color=colour(k, len(runs)), zorder=4, label=label)
    loss_ax.set(xlabel="update", ylabel="training loss", title=f"{family}: training loss")
    auroc_ax.set(xlabel="update", ylabel="AUROC", title=f"{family}: {eval_split} AUROC")
    for ax in (loss_ax, auroc_ax):
        style(ax)
    handles = auroc_ax.get_legend_handles_labels()[0] or loss_ax.get_legend_handles_labels()[0]
    if handles:
        (auroc_ax if auroc_ax.get_legend_handles_labels()[0] else loss_ax).legend(fontsize=8, frameon=False)
    if not any(c.loss for c in runs.values()):
        loss_ax.text(
            0.5,
            0.5,
            "no loss logged\n(eval_every: 0 logs only the final evaluation)",
            ha="center",
            va="center",
            transform=loss_ax.transAxes,
            color="grey",
            fontsize=9,
        )
    fig.tight_layout()
    skipped = sum(c.skipped for c in runs.values())
    caption = (
        f"family {family}: one colour per run; the star is the final evaluation; the loss is the mean over "
        "the updates since the previous evaluation."
    )
    if any(c.eval_in_train for c in runs.values()):
        caption += (
            f" Dashed: run (b), trained on traindev, which contains {eval_split}: not a held-out score."
        )
    if skipped:
        caption += f" {skipped} unreadable log lines were skipped."
    return figure(fig, caption)
