"""Ranking quality per model and split: the score tables, ROC and precision-recall curves.

AUROC is the challenge metric; average precision is added because hateful memes are the minority in the
wild, where a ROC curve flatters a model that floods moderators with false flags. Accuracy here is from
each CSV's own ``label`` column: the decision the model or ensemble actually made (for the ensemble, the
dev-ROC threshold on dev and the ``test_labels`` rule of :mod:`memeguard.ensemble.folder` on the tests).
"""

from __future__ import annotations

import math

import numpy as np

from memeguard.pipeline.report.common import (
    ENSEMBLE,
    ENSEMBLE_COLOUR,
    Labels,
    PredictionSets,
    both_classes,
    colour,
    downsample,
    labelled,
    model_order,
    split_key,
    style,
)
from memeguard.pipeline.report.page import esc, figure, fmt, note, table

Metrics = dict[str, dict[str, dict[str, float]]]  # split -> model -> name -> value


def compute_metrics(predictions: PredictionSets, labels: Labels) -> Metrics:
    """``{split: {model: {"n", "auroc", "ap", "accuracy"}}}`` on the labelled splits (scikit-learn)."""
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    out: Metrics = {}
    for split in sorted(labels, key=split_key):
        rows = {}
        for model in model_order(list(predictions)):
            if split not in predictions[model]:
                continue
            y, proba, label, _ = labelled(predictions[model][split], labels[split], model, split)
            ok = both_classes(y)
            rows[model] = {
                "n": float(len(y)),
                "auroc": float(roc_auc_score(y, proba)) if ok else math.nan,
                "ap": float(average_precision_score(y, proba)) if ok else math.nan,
                "accuracy": float(accuracy_score(y, label)),
            }
        if rows:
            out[split] = rows
    return out


def score_tables(metrics: Metrics) -> list[str]:
    parts = []
    for split, rows in metrics.items():
        names = list(rows)
        parts.append(f"<div><h3>{esc(split)}</h3>")
        parts.append(
            table(
                ["model", "memes", "AUROC", "AP", "accuracy"],
                [
                    [
                        n,
                        str(int(rows[n]["n"])),
                        fmt(rows[n]["auroc"]),
                        fmt(rows[n]["ap"]),
                        fmt(rows[n]["accuracy"]),
                    ]
                    for n in names
                ],
                ["ensemble" if n == ENSEMBLE else "" for n in names],
            )
            + "</div>"
        )
    if not parts:
        return []
    return [
        '<div class="row">' + "".join(parts) + "</div>",
        note(
            "AP: average precision. Accuracy here is each CSV's own label column: the decision the model "
            "made (the ensemble's test labels follow its test_labels rule, not the operating point)."
        ),
    ]


def _line(ax, x: np.ndarray, y: np.ndarray, model: str, k: int, n: int, label: str, steps: bool) -> None:  # noqa: ANN001
    """One model's curve; precision-recall as steps (sklearn's display does the same: interpolating
    between its points would draw precisions no threshold achieves)."""
    x, y = downsample(x, y)
    ensemble = model == ENSEMBLE
    ax.plot(
        x,
        y,
        lw=2.4 if ensemble else 1.2,
        color=ENSEMBLE_COLOUR if ensemble else colour(k, n),
        label=label,
        zorder=3 if ensemble else 2,
        drawstyle="steps-post" if steps else "default",
    )


def curves_figure(predictions: PredictionSets, labels: Labels, split: str) -> str | None:
    """ROC (left) and precision-recall (right) of every model on ``split``; None without both classes."""
    from matplotlib.figure import Figure
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig = Figure(figsize=(10.4, 4.6))
    roc_ax, pr_ax = fig.subplots(1, 2)
    prevalence, drawn = None, 0
    models = model_order(list(predictions))
    for k, model in enumerate(models):
        if split not in predictions[model]:
            continue
        y, proba, _, _ = labelled(predictions[model][split], labels[split], model, split)
        if not both_classes(y):
            continue
        fpr, tpr, _ = roc_curve(y, proba)
        _line(roc_ax, fpr, tpr, model, k, len(models), f"{model} {auc(fpr, tpr):.3f}", False)
        precision, recall, _ = precision_recall_curve(y, proba)
        ap = float(-np.sum(np.diff(recall) * precision[:-1]))  # sklearn's average precision, step rule
        _line(pr_ax, recall, precision, model, k, len(models), f"{model} {ap:.3f}", True)
        prevalence, drawn = float(y.mean()), drawn + 1
    if not drawn:
        return None
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, {split} (AUROC)")
    roc_ax.set_aspect("equal")
    pr_ax.axhline(prevalence, ls="--", color="grey", lw=0.8)
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall, {split} (AP)", ylim=(0, 1.02))
    for ax, where in ((roc_ax, "lower right"), (pr_ax, "lower left")):
        style(ax)
        ax.legend(fontsize=7.5, loc=where, frameon=False)
    fig.tight_layout()
    return figure(
        fig,
        f"{split}: ROC and precision-recall curves; the ensemble in black; the dashed lines are chance "
        f"(a random ranking; on the right, the share of hateful memes {prevalence:.2f})",
    )
