"""The ensemble: blend weights, the two-pass loop's candidates, and the rank correlation between models.

Diverse models are what make an ensemble pay, so the Spearman matrix is shown beside the weights: two
families at rho 0.95 add little to each other whatever their weights say.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from memeguard.pipeline.report.common import PredictionSets, model_order, style
from memeguard.pipeline.report.page import esc, figure, fmt, table


def flat_weights(weights: Mapping | None) -> dict[str, float]:
    """Accept ``{name: weight}`` or the ``weights.json`` record of ``memeguard ensemble``."""
    if not weights:
        return {}
    if all(isinstance(v, (int, float)) for v in weights.values()):
        return {str(k): float(v) for k, v in weights.items()}
    final = weights.get("final") if isinstance(weights.get("final"), Mapping) else None
    if final and isinstance(final.get("weights"), Mapping):
        return {str(k): float(v) for k, v in final["weights"].items()}
    return {}


def spearman(predictions: PredictionSets, split: str) -> tuple[list[str], np.ndarray] | None:
    """Rank correlations between models on the ids they all predicted."""
    from scipy.stats import spearmanr

    models = [m for m in model_order(list(predictions)) if split in predictions[m]]
    if len(models) < 2:
        return None
    common = set.intersection(*(set(predictions[m][split].ids.tolist()) for m in models))
    if len(common) < 3:
        return None
    ids = np.asarray(sorted(common))
    columns = []
    for m in models:
        pred = predictions[m][split]
        position = {int(i): k for k, i in enumerate(pred.ids)}
        columns.append(pred.proba[[position[int(i)] for i in ids]])
    rho = np.asarray(spearmanr(np.stack(columns, axis=1)).statistic, dtype=np.float64)
    if rho.ndim == 0:
        rho = np.array([[1.0, float(rho)], [float(rho), 1.0]])
    return models, rho


def heatmap(models: list[str], rho: np.ndarray, split: str) -> str:
    from matplotlib.figure import Figure

    size = max(4.2, 0.5 * len(models) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(rho, vmin=min(0.0, float(np.nanmin(rho))), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    if len(models) <= 16:
        for i in range(len(models)):
            for j in range(len(models)):
                value = rho[i, j]
                colour = "black" if value > 0.6 else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7.5, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Spearman ρ")
    ax.set_title(f"Spearman correlation, {split}")
    fig.tight_layout()
    return figure(fig, f"Spearman rank correlation of the probabilities on {split}")


def barh(values: Mapping[str, float], title: str, xlabel: str, caption: str) -> str:
    from matplotlib.figure import Figure

    names = list(values)
    fig = Figure(figsize=(5.6, max(2.0, 0.34 * len(names) + 1)))
    ax = fig.subplots()
    ax.barh(range(len(names)), [values[n] for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for k, n in enumerate(names):
        ax.text(values[n], k, f" {values[n]:.3g}", va="center", fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.margins(x=0.18)
    style(ax)
    fig.tight_layout()
    return figure(fig, caption)


def passes_tables(weights: Mapping | None) -> list[str]:
    """vilio's loop: per pass, each candidate's dev AUROC and whether it was kept, then the blends."""
    if not weights or not isinstance(weights.get("passes"), list):
        return []
    parts = []
    for record in weights["passes"]:
        if not isinstance(record, Mapping):
            continue
        kept = record.get("kept", [])
        rows = [
            [n, fmt(a), "kept" if n in kept else "dropped"] for n, a in record.get("candidates", {}).items()
        ]
        rows += [
            [f"{m}{record.get('index', '')}", fmt(a), "blend"] for m, a in record.get("blends", {}).items()
        ]
        parts.append(f"<h3>pass {esc(record.get('index', '?'))}: dev AUROC</h3>")
        parts.append(table(["candidate", "dev AUROC", "role"], rows))
    return parts


def ensemble_section(predictions: PredictionSets, splits: list[str], weights: Mapping | None) -> list[str]:
    parts: list[str] = []
    flat = flat_weights(weights)
    method = weights.get("method") if isinstance(weights, Mapping) else None
    row = []
    if flat:
        row.append(
            "<div>"
            + (
                f"<h3>final blend weights ({esc(method)})</h3>"
                if isinstance(method, str)
                else "<h3>final blend weights</h3>"
            )
            + table(["input", "weight"], [[n, f"{w:.4f}"] for n, w in flat.items()])
            + "</div>"
        )
        row.append(
            "<div>" + barh(flat, "final blend weights", "weight", "weights of the final blend") + "</div>"
        )
    corr_split, corr = next(
        ((s, c) for s in splits if (c := spearman(predictions, s)) is not None), (None, None)
    )
    if corr is not None:
        row.append("<div>" + heatmap(*corr, corr_split) + "</div>")
    if row:
        parts.append('<div class="row">' + "".join(row) + "</div>")
    passes = passes_tables(weights)
    if passes:
        parts.append(
            "<details><summary>the loop's passes: every candidate's dev AUROC</summary>"
            + "".join(passes)
            + "</details>"
        )
    return parts
