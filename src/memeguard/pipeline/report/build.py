"""Assemble ``report.html``: a summary first, then one section per question a reader asks, in order.

Did training go well (curves)? How well does it rank (ROC/PR)? Can its scores be read as probabilities
(calibration)? What happens at the chosen threshold (confusion matrices)? What is the ensemble made of
(weights, correlations)? Where does it fail (the gallery)? What did it cost (time per stage)?
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from memeguard import __version__
from memeguard.data.hm import read_split, split_path
from memeguard.ensemble.operating_point import OperatingPoint
from memeguard.io import write_text_atomic
from memeguard.names import DEV_SEEN, REPORT_FILE
from memeguard.pipeline.report import blend, calibration, gallery, scores, threshold, training
from memeguard.pipeline.report.common import Labels, PredictionSets, labelled, split_key, subject
from memeguard.pipeline.report.page import document, esc, fmt, note, table


def _summary(
    metrics: scores.Metrics,
    model: str | None,
    point: OperatingPoint | None,
    predictions: PredictionSets,
    labels: Labels,
) -> str:
    """Cards with the headline numbers, then the subject's table at the operating point."""
    cards, rows = [], []
    for split, per_model in metrics.items():
        if model not in per_model:
            continue
        m = per_model[model]
        y, proba, _, _ = labelled(predictions[model][split], labels[split], model, split)
        at = threshold.Confusion.at(y, proba, point.threshold) if point else None
        cards.append(
            f'<div class="card"><div class="k">{esc(split)}</div><div class="v">{fmt(m["auroc"], 3)}</div>'
            f'<div class="s">AUROC · accuracy {fmt(at.accuracy if at else m["accuracy"], 3)} · '
            f"{int(m['n'])} memes</div></div>"
        )
        rows.append(
            [
                split,
                str(int(m["n"])),
                str(int(y.sum())),
                fmt(m["auroc"]),
                fmt(m["ap"]),
                fmt(at.accuracy) if at else "–",
                fmt(at.precision) if at else "–",
                fmt(at.recall) if at else "–",
            ]
        )
    if point is not None:
        cards.append(
            '<div class="card op"><div class="k">operating point</div>'
            f'<div class="v">{point.threshold:.3f}</div>'
            f'<div class="s">rule: {esc(point.rule)}{"" if point.target is None else f" {point.target:g}"}, '
            "chosen on dev_seen</div></div>"
        )
    parts = [f'<div class="cards">{"".join(cards)}</div>'] if cards else []
    if rows:
        parts.append(
            table(
                [
                    "split",
                    "memes",
                    "hateful",
                    "AUROC",
                    "average precision",
                    "accuracy",
                    "precision",
                    "recall",
                ],
                rows,
            )
        )
        parts.append(
            note(
                f"{model}; accuracy, precision and recall at the operating point, "
                + (threshold.describe(point) if point else "none: dev_seen has no labels of both classes")
                + ", applied unchanged to every split."
            )
        )
    if not metrics:
        parts.append(note("No labelled split: nothing to score."))
    return "\n".join(parts)


def _training(logs: Mapping[str, Mapping[str, str | os.PathLike[str]]] | None) -> list[str]:
    """A figure per family; only a table of final evaluations when no run logged a curve."""
    families = {
        family: {name: c for name, path in runs.items() if (c := training.read_curve(Path(path))) is not None}
        for family, runs in sorted((logs or {}).items())
    }
    if any(c.loss or c.auroc for curves in families.values() for c in curves.values()):
        return [
            fig
            for family, curves in families.items()
            if curves and (fig := training.family_figure(family, curves))
        ]
    rows = [
        [family, name, c.train_split or "?", f"{c.final_auroc[0]:.0f}", fmt(c.final_auroc[1])]
        for family, curves in families.items()
        for name, c in curves.items()
        if c.final_auroc
    ]
    if not rows:
        return []
    return [
        note(
            "These runs evaluated only at the end (train.eval_every: 0), so there are no curves to draw: "
            "set eval_every to a number of updates to see loss and dev AUROC per update."
        ),
        table(["family", "run", "trained on", "updates", "final dev AUROC"], rows),
    ]


def _calibration(
    predictions: PredictionSets, labels: Labels, model: str, point: OperatingPoint | None
) -> list[str]:
    parts = []
    for split in sorted(labels, key=split_key):
        if split not in predictions[model]:
            continue
        y, proba, _, _ = labelled(predictions[model][split], labels[split], model, split)
        rel = calibration.reliability(y, proba)
        parts.append(
            calibration.calibration_figure(y, proba, rel, point.threshold if point else None, split, model)
        )
        parts.append(
            f"<details><summary>reliability bins, {esc(split)}</summary><h3>reliability bins, "
            f"{esc(split)}</h3>{calibration.reliability_table(rel)}</details>"
        )
    return parts


def _confusion(predictions: PredictionSets, labels: Labels, model: str, point: OperatingPoint) -> list[str]:
    blocks = []
    for split in sorted(labels, key=split_key):
        if split in predictions[model]:
            y, proba, _, _ = labelled(predictions[model][split], labels[split], model, split)
            blocks.append(
                "<div>"
                + threshold.confusion_html(threshold.Confusion.at(y, proba, point.threshold), split)
                + "</div>"
            )
    return [
        note(f"{model} at {threshold.describe(point)}."),
        '<div class="row">' + "".join(blocks) + "</div>",
    ]


def _gallery(
    predictions: PredictionSets,
    labels: Labels,
    model: str,
    point: OperatingPoint,
    data_dir: Path | None,
    explain: gallery.Explainer | None,
    k: int,
) -> list[str]:
    y, proba, _, ids = labelled(predictions[model][DEV_SEEN], labels[DEV_SEEN], model, DEV_SEEN)
    worst = gallery.most_confidently_wrong(ids, y, proba, point.threshold, k)
    if not worst:
        return [note("No dev_seen meme is misclassified at the operating point.")]
    memes = {}
    if data_dir is not None and split_path(data_dir, DEV_SEEN).is_file():
        memes = {m.id: m for m in read_split(data_dir, DEV_SEEN)}
    return [
        note(
            f"The {len(worst)} dev_seen memes {model} got most confidently wrong at "
            f"{threshold.describe(point)}" + (", with their attributions." if explain else ".")
        ),
        gallery.gallery_html(worst, memes, data_dir, explain),
    ]


def write_report(
    out_dir: str | os.PathLike[str],
    predictions: PredictionSets,
    labels: Labels,
    weights: Mapping | None = None,
    stage_times: Mapping[str, float] | None = None,
    title: str = "memeguard report",
    *,
    training_logs: Mapping[str, Mapping[str, str | os.PathLike[str]]] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    explain: gallery.Explainer | None = None,
    rule: str = "accuracy",
    target: float | None = None,
    gallery_size: int = gallery.GALLERY_SIZE,
) -> Path:
    """Write the self-contained ``out_dir/report.html`` (temp then rename); returns its path.

    ``predictions``: model -> split -> predictions (the ensemble as ``"ENSEMBLE"``); ``labels``: split ->
    id -> label for the labelled splits; ``weights``: ``{name: weight}`` or the ``weights.json`` record;
    ``stage_times``: stage -> seconds; ``training_logs``: family -> run name -> run dir (its
    ``metrics.jsonl``); ``data_dir``: the dataset (meme text and images for the gallery); ``explain``:
    the gallery's explanation provider; ``rule``/``target``: how the operating point is chosen on dev_seen.
    """
    out = Path(out_dir)
    metrics = scores.compute_metrics(predictions, labels)
    model = subject(predictions)
    point = threshold.choose(predictions, labels, model, rule, target)
    data = Path(data_dir) if data_dir is not None else None
    sections: list[tuple[str, str, str]] = [
        ("summary", "Summary", _summary(metrics, model, point, predictions, labels))
    ]

    def add(anchor: str, heading: str, parts: list[str]) -> None:
        if parts:
            sections.append((anchor, heading, "\n".join(parts)))

    add("training", "Training curves", _training(training_logs))
    curves = [f for split in metrics if (f := scores.curves_figure(predictions, labels, split))]
    add("scores", "Ranking: ROC and precision-recall", [*curves, *scores.score_tables(metrics)])
    if model is not None:
        add(
            "calibration",
            "Calibration and score distributions",
            _calibration(predictions, labels, model, point),
        )
    if point is not None and model is not None:
        add("threshold", "At the operating point", _confusion(predictions, labels, model, point))
    splits = sorted({s for per_model in predictions.values() for s in per_model}, key=split_key)
    add("ensemble", "Ensemble", blend.ensemble_section(predictions, splits, weights))
    if point is not None and model is not None and DEV_SEEN in predictions[model]:
        add(
            "gallery",
            "Most confidently wrong",
            _gallery(predictions, labels, model, point, data, explain, gallery_size),
        )
    if stage_times:
        times = {str(k): float(v) for k, v in stage_times.items()}
        rows = [[k, f"{v:.1f}"] for k, v in times.items()] + [["total", f"{sum(times.values()):.1f}"]]
        add(
            "time",
            "Time per stage",
            [
                '<div class="row"><div>'
                + table(["stage", "seconds"], rows)
                + "</div><div>"
                + blend.barh(times, "time per stage", "seconds", "wall-clock seconds per stage")
                + "</div></div>"
            ],
        )
    labelled_splits = ", ".join(metrics) or "none"
    subtitle = f"{len(predictions)} prediction sets · labelled splits: {labelled_splits}"
    page = document(
        title, subtitle, sections, f"memeguard {__version__} · a self-contained page: no scripts, no network"
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_FILE
    write_text_atomic(path, page)
    return path
