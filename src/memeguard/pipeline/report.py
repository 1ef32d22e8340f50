"""``report.html``: one self-contained page (inline CSS, no scripts, no network) with PNG figures beside it.

What it shows: AUROC and accuracy of every model and of the ensemble on each labelled split, ROC
curves, the Spearman correlation between models (diverse models are what make an ensemble pay),
the ensemble weights and the time spent per stage.

Accuracy is computed from each CSV's own ``label`` column (the decision the model or ensemble
actually made; for the ensemble, the dev-ROC threshold on dev and the ``test_labels`` rule of
``memeguard.ensemble.folder`` on the test splits), AUROC from ``proba``, both with
scikit-learn. Figures are drawn with matplotlib's object API on the Agg canvas, so nothing touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from memeguard.data.predictions import Predictions
from memeguard.errors import DataError
from memeguard.io import write_bytes_atomic, write_text_atomic
from memeguard.names import REPORT_FILE, REPORT_SPLITS

ENSEMBLE = "ENSEMBLE"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1f2328; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
  border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
p.sub { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .35rem .7rem; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
tr.ensemble td { font-weight: 600; background: #eef6ff; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { color: #59636e; font-size: .85rem; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; } .grid figure { flex: 1 1 480px; }
"""


def _split_key(split: str) -> tuple[int, str]:
    return (REPORT_SPLITS.index(split) if split in REPORT_SPLITS else len(REPORT_SPLITS), split)


def _model_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != ENSEMBLE, n))


def _labelled(
    pred: Predictions, labels: Mapping[int, int], model: str, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, proba, label) for the predicted memes; a predicted meme without a label is an error."""
    missing = [int(i) for i in pred.ids if int(i) not in labels]
    if missing:
        raise DataError(f"{model} on {split}: {len(missing)} predicted ids have no label, e.g. {missing[:5]}")
    y = np.asarray([labels[int(i)] for i in pred.ids], dtype=np.int64)
    return y, pred.proba, pred.label


def compute_metrics(
    predictions: Mapping[str, Mapping[str, Predictions]], labels: Mapping[str, Mapping[int, int]]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {model: {"n", "auroc", "accuracy"}}}`` on the labelled splits (sklearn)."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    table: dict[str, dict[str, dict[str, float]]] = {}
    for split in sorted(labels, key=_split_key):
        rows = {}
        for model in _model_order(list(predictions)):
            if split not in predictions[model]:
                continue
            y, proba, label = _labelled(predictions[model][split], labels[split], model, split)
            auroc = float(roc_auc_score(y, proba)) if 0 < y.sum() < len(y) else math.nan
            rows[model] = {"n": float(len(y)), "auroc": auroc, "accuracy": float(accuracy_score(y, label))}
        if rows:
            table[split] = rows
    return table


def _flat_weights(weights: Mapping | None) -> dict[str, float]:
    """Accept ``{name: weight}`` or the ``weights.json`` record of ``memeguard ensemble``."""
    if not weights:
        return {}
    if all(isinstance(v, (int, float)) for v in weights.values()):
        return {str(k): float(v) for k, v in weights.items()}
    final = weights.get("final") if isinstance(weights.get("final"), Mapping) else None
    if final and isinstance(final.get("weights"), Mapping):
        return {str(k): float(v) for k, v in final["weights"].items()}
    return {}


def _save(fig, path: Path) -> None:  # noqa: ANN001 - matplotlib Figure, imported lazily
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


def _metrics_figure(metrics: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    from matplotlib.figure import Figure

    splits = list(metrics)
    models = _model_order(sorted({m for rows in metrics.values() for m in rows}))
    fig = Figure(figsize=(max(6.0, 0.9 * len(models) + 2), 4.2))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(models))
    for ax, key, label in zip(axes, ("auroc", "accuracy"), ("AUROC", "accuracy"), strict=True):
        for k, split in enumerate(splits):
            values = [metrics[split].get(m, {}).get(key, math.nan) for m in models]
            ax.bar(x + (k - (len(splits) - 1) / 2) * width, values, width, label=split)
        ax.set_xticks(x, models, rotation=40, ha="right")
        ax.set_ylabel(label)
        ax.set_ylim(0.4 if key == "auroc" else 0.0, 1.0)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{label} per model")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _roc_figure(
    predictions: Mapping[str, Mapping[str, Predictions]], labels: Mapping[int, int], split: str, path: Path
) -> None:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.subplots()
    from matplotlib import colormaps

    palette = colormaps["tab20"]  # 20 distinct colours: vilio-sized sets exceed tab10's 10
    for k, model in enumerate(_model_order(list(predictions))):
        if split not in predictions[model]:
            continue
        y, proba, _ = _labelled(predictions[model][split], labels, model, split)
        if not 0 < y.sum() < len(y):
            continue
        fpr, tpr, _ = roc_curve(y, proba)
        ensemble = model == ENSEMBLE
        ax.plot(
            fpr,
            tpr,
            lw=2.4 if ensemble else 1.1,
            color="black" if ensemble else palette(k % 20),
            label=f"{model} ({roc_auc_score(y, proba):.3f})",
            zorder=3 if ensemble else 2,
        )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, {split}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    fig.tight_layout()
    _save(fig, path)


def _spearman(
    predictions: Mapping[str, Mapping[str, Predictions]], split: str
) -> tuple[list[str], np.ndarray] | None:
    """Rank correlations between models on the ids they all predicted."""
    from scipy.stats import spearmanr

    models = [m for m in _model_order(list(predictions)) if split in predictions[m]]
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


def _heatmap_figure(models: list[str], rho: np.ndarray, split: str, path: Path) -> None:
    from matplotlib.figure import Figure

    size = max(4.5, 0.55 * len(models) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(rho, vmin=min(0.0, float(np.nanmin(rho))), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    if len(models) <= 16:
        for i in range(len(models)):
            for j in range(len(models)):
                value = rho[i, j]
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.6 else "white",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Spearman ρ")
    ax.set_title(f"Spearman correlation, {split}")
    fig.tight_layout()
    _save(fig, path)


def _barh_figure(values: Mapping[str, float], title: str, xlabel: str, path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(values)
    fig = Figure(figsize=(6.4, max(2.2, 0.38 * len(names) + 1)))
    ax = fig.subplots()
    ax.barh(range(len(names)), [values[n] for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for k, n in enumerate(names):
        ax.text(values[n], k, f" {values[n]:.3g}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        css = f' class="{classes[k]}"' if classes and classes[k] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    predictions: Mapping[str, Mapping[str, Predictions]],
    labels: Mapping[str, Mapping[int, int]],
    weights: Mapping | None = None,
    stage_times: Mapping[str, float] | None = None,
    title: str = "memeguard report",
) -> Path:
    """Write ``out_dir/report.html`` and its PNGs; returns the HTML path.

    ``predictions``: model -> split -> predictions (include the ensemble as ``"ENSEMBLE"``);
    ``labels``: split -> id -> label for the labelled splits only; ``weights``: ``{name: weight}`` or
    the ``weights.json`` record; ``stage_times``: stage -> seconds.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(predictions, labels)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{len(predictions)} prediction sets; labelled splits: '
        f"{html.escape(', '.join(metrics) or 'none')}</p>",
    ]

    parts.append("<h2>Scores</h2>")
    if not metrics:
        parts.append("<p>No labelled split: nothing to score.</p>")
    for split, rows in metrics.items():
        names = list(rows)
        parts.append(f"<h3>{html.escape(split)}</h3>")
        parts.append(
            _table(
                ["model", "memes", "AUROC", "accuracy"],
                [
                    [n, str(int(rows[n]["n"])), _fmt(rows[n]["auroc"]), _fmt(rows[n]["accuracy"])]
                    for n in names
                ],
                ["ensemble" if n == ENSEMBLE else "" for n in names],
            )
        )
    figures = []
    if metrics:
        _metrics_figure(metrics, out / "metrics.png")
        figures.append(
            _figure("metrics.png", "AUROC and accuracy (from each CSV's labels) per model and split")
        )
        for split in metrics:
            name = f"roc_{split}.png"
            _roc_figure(predictions, labels[split], split, out / name)
            figures.append(_figure(name, f"ROC curves on {split}; AUROC in brackets"))
    if figures:
        parts.append('<div class="grid">' + "".join(figures) + "</div>")

    splits = sorted({s for per_model in predictions.values() for s in per_model}, key=_split_key)
    corr_split, corr = next(
        ((s, c) for s in splits if (c := _spearman(predictions, s)) is not None), (None, None)
    )
    if corr is not None:
        models, rho = corr
        _heatmap_figure(models, rho, corr_split, out / "spearman.png")
        parts.append("<h2>Correlation between models</h2>")
        parts.append(
            _figure("spearman.png", f"Spearman rank correlation of the probabilities on {corr_split}")
        )

    flat = _flat_weights(weights)
    if flat:
        parts.append("<h2>Ensemble weights</h2>")
        _barh_figure(flat, "final blend weights", "weight", out / "weights.png")
        parts.append(_table(["input", "weight"], [[n, f"{w:.4f}"] for n, w in flat.items()]))
        parts.append(_figure("weights.png", "weights of the final blend (sum 1)"))
    if weights and isinstance(weights.get("passes"), list):
        for record in weights["passes"]:
            rows = [
                [n, _fmt(a), "kept" if n in record.get("kept", []) else "dropped"]
                for n, a in record.get("candidates", {}).items()
            ]
            rows += [
                [f"{m}{record.get('index', '')}", _fmt(a), "blend"]
                for m, a in record.get("blends", {}).items()
            ]
            parts.append(f"<h3>pass {html.escape(str(record.get('index', '?')))}: dev AUROC</h3>")
            parts.append(_table(["candidate", "dev AUROC", "role"], rows))

    if stage_times:
        parts.append("<h2>Time per stage</h2>")
        times = {str(k): float(v) for k, v in stage_times.items()}
        _barh_figure(times, "time per stage", "seconds", out / "stage_times.png")
        rows = [[k, f"{v:.1f}"] for k, v in times.items()] + [["total", f"{sum(times.values()):.1f}"]]
        parts.append(_table(["stage", "seconds"], rows))
        parts.append(_figure("stage_times.png", "wall-clock seconds per stage"))

    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = out / REPORT_FILE
    write_text_atomic(path, page)
    return path
