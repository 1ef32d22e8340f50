"""Calibration: does a score of 0.8 mean "hateful 8 times in 10"? Reliability diagram and score histograms.

Why it matters here: vilio's runs are blended by rank and the operating point is re-chosen on dev, so
a well-ranked but badly calibrated model is fine for the leaderboard yet misleading to a moderator who
reads the probability literally. The bins are scikit-learn's ``calibration_curve(strategy="uniform")``
bins: ten equal widths, right-closed ((0.1, 0.2], ...), the first one [0, 0.1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memeguard.pipeline.report.common import BENIGN_COLOUR, HATEFUL_COLOUR, style
from memeguard.pipeline.report.page import figure, fmt, table

BINS = 10


@dataclass(frozen=True)
class Reliability:
    """Per bin: memes, mean predicted probability and share of hateful memes (NaN in empty bins)."""

    edges: np.ndarray
    counts: np.ndarray
    mean_proba: np.ndarray
    hateful_rate: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap between the two."""
        filled = self.counts > 0
        weights = self.counts[filled] / self.counts.sum()
        return float(np.sum(weights * np.abs(self.hateful_rate[filled] - self.mean_proba[filled])))


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = BINS) -> Reliability:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], proba, side="left")  # calibration_curve's binning
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_proba = np.bincount(which, weights=proba, minlength=bins) / counts
        hateful_rate = np.bincount(which, weights=y, minlength=bins) / counts
    return Reliability(edges, counts, mean_proba, hateful_rate)


def reliability_table(rel: Reliability) -> str:
    rows = []
    for k in range(len(rel.counts)):
        lo, hi = rel.edges[k], rel.edges[k + 1]
        name = f"[{lo:.1f}, {hi:.1f}]" if k == 0 else f"({lo:.1f}, {hi:.1f}]"
        rows.append([name, str(int(rel.counts[k])), fmt(rel.mean_proba[k], 3), fmt(rel.hateful_rate[k], 3)])
    return table(["score bin", "memes", "mean score", "share hateful"], rows)


def calibration_figure(
    y: np.ndarray, proba: np.ndarray, rel: Reliability, threshold: float | None, split: str, model: str
) -> str:
    """Reliability diagram (left) and the score histograms of hateful and benign memes (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.4, 4.3))
    rel_ax, hist_ax = fig.subplots(1, 2)
    centres = (rel.edges[:-1] + rel.edges[1:]) / 2
    filled = rel.counts > 0
    width = rel.edges[1] - rel.edges[0]
    rel_ax.bar(
        centres[filled], rel.hateful_rate[filled], width * 0.9, color="#9ecae1", edgecolor="#3182bd", lw=0.8
    )
    rel_ax.plot(rel.mean_proba[filled], rel.hateful_rate[filled], "o", color="#08519c", ms=5)
    rel_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    for x, n in zip(centres[filled], rel.counts[filled], strict=True):
        rel_ax.text(x, 1.06, str(int(n)), ha="center", fontsize=7.5, color="#444")
    rel_ax.set(
        xlim=(0, 1),
        ylim=(0, 1.14),
        xlabel="score bin",
        ylabel="share hateful",
        title=f"reliability, {split} (ECE {rel.ece:.3f})",
    )
    edges = np.linspace(0, 1, 26)
    for label, name, tint in ((0, "not hateful", BENIGN_COLOUR), (1, "hateful", HATEFUL_COLOUR)):
        hist_ax.hist(
            proba[y == label], bins=edges, alpha=0.55, color=tint, label=f"{name} ({int((y == label).sum())})"
        )
    if threshold is not None:
        hist_ax.axvline(threshold, color="#8a5a00", lw=1.6, ls="-", label=f"threshold {threshold:.3f}")
    hist_ax.set(xlim=(0, 1), xlabel="score", ylabel="memes", title=f"scores by true label, {split}")
    for ax in (rel_ax, hist_ax):
        style(ax)
    rel_ax.set_yticks(np.linspace(0, 1, 6))
    hist_ax.legend(fontsize=8, frameon=False, loc="upper center")
    fig.tight_layout()
    return figure(
        fig,
        f"{model} on {split}: bars are the share of hateful memes per score bin (the number above: memes in "
        "the bin); the dots sit at the bin's mean score: on the dashed diagonal the scores are calibrated. "
        "Right: how the scores of hateful and benign memes overlap around the operating threshold.",
    )
