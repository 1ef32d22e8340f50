"""Assemble ``report.html``: a summary first, then one section per question a reader asks, in order.

Did training go well (curves)? How well does it rank (ROC/PR)? Can its scores be read as probabilities
(calibration)? What happens at the chosen threshold (confusion matrices)? What is the ensemble made of
(weights, correlations)? Where does it fail (the gallery)? What did it cost (time per stage)?
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from memeguard import __version__
from memeguard.data.hm import read_split, split_path
from memeguard.ensemble.operating_point import OperatingPoint
from memeguard.io import write_text_atomic
from memeguard.names import DEV_SEEN, REPORT_FILE
from memeguard.pipeline.report import blend, calibration, gallery, scores, threshold, training
from memeguard.pipeline.report.common import Labels, PredictionSets, labelled, split_key, subject
from memeguard.pipeline.report.page import document, esc, fmt, note, table

SUMMARY_HEADER = [
    "split",
    "memes",
    "hateful",
    "AUROC",
    "average precision",
    "accuracy",
    "precision",
    "recall",
]


def _card(key: str, value: str, sub: str, css: str = "card") -> str:
    return (
        f'<div class="{css}"><div class="k">{esc(key)}</div><div class="v">{esc(value)}</div>'
        f'<div class="s">{esc(sub)}</div></div>'
    )


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
        accuracy = at.accuracy if at else m["accuracy"]
        cards.append(
            _card(split, fmt(m["auroc"], 3), f"AUROC · accuracy {fmt(accuracy, 3)} · {int(m['n'])} memes")
        )
        at_point = [fmt(at.accuracy), fmt(at.precision), fmt(at.recall)] if at else ["–"] * 3
        rows.append([split, str(int(m["n"])), str(int(y.sum())), fmt(m["auroc"]), fmt(m["ap"]), *at_point])
    if point is not None:
        target = "" if point.target is None else f" {point.target:g}"
        sub = f"rule: {point.rule}{target}, chosen on dev_seen"
        cards.append(_card("operating point", f"{point.threshold:.3f}", sub, "card op"))
    parts = [f'<div class="cards">{"".join(cards)}</div>'] if cards else []
    if rows:
        how = threshold.describe(point) if point else "none: dev_seen has no labels of both classes"
        parts.append(table(SUMMARY_HEADER, rows))
        parts.append(
            note(
                f"{model}; accuracy, precision and recall at the operating point, {how}, applied "
                "unchanged to every split."
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
    cards = gallery.gallery_html(worst, memes, data_dir, explain)  # first: a provider's notes come with it
    return [
        note(
            f"The {len(worst)} dev_seen memes {model} got most confidently wrong at "
            f"{threshold.describe(point)}"
            + (
                ", with their attributions: the overlay beside each meme; words in red pushed the score "
                "towards hateful, in blue away from it (hover for the value)."
                if explain
                else "."
            )
        ),
        *[note(line) for line in getattr(explain, "notes", ())],  # e.g. members left out
        cards,
    ]


@dataclass
class _Inputs:
    """What every section may read: the caller's inputs and the choices made once (subject, threshold)."""

    predictions: PredictionSets
    labels: Labels
    weights: Mapping | None
    stage_times: Mapping[str, float] | None
    training_logs: Mapping[str, Mapping[str, str | os.PathLike[str]]] | None
    data_dir: Path | None
    explain: gallery.Explainer | None
    gallery_size: int
    metrics: scores.Metrics
    model: str | None
    point: OperatingPoint | None


def _times(stage_times: Mapping[str, float]) -> list[str]:
    times = {str(k): float(v) for k, v in stage_times.items()}
    rows = [[k, f"{v:.1f}"] for k, v in times.items()] + [["total", f"{sum(times.values()):.1f}"]]
    figure_html = blend.barh(times, "time per stage", "seconds", "wall-clock seconds per stage")
    return [f'<div class="row"><div>{table(["stage", "seconds"], rows)}</div><div>{figure_html}</div></div>']


def _sections(r: _Inputs) -> list[tuple[str, str, str]]:
    """``(anchor, heading, html)`` of every section that has something to show, in reading order."""
    p, labels, model, point = r.predictions, r.labels, r.model, r.point
    curves = [f for split in r.metrics if (f := scores.curves_figure(p, labels, split))]
    splits = sorted({s for per_model in p.values() for s in per_model}, key=split_key)
    candidates = [
        ("summary", "Summary", [_summary(r.metrics, model, point, p, labels)]),
        ("training", "Training curves", _training(r.training_logs)),
        ("scores", "Ranking: ROC and precision-recall", [*curves, *scores.score_tables(r.metrics)]),
        (
            "calibration",
            "Calibration and score distributions",
            _calibration(p, labels, model, point) if model else [],
        ),
        (
            "threshold",
            "At the operating point",
            _confusion(p, labels, model, point) if model and point else [],
        ),
        ("ensemble", "Ensemble", blend.ensemble_section(p, splits, r.weights)),
    ]
    if model and point and DEV_SEEN in p[model]:
        worst = _gallery(p, labels, model, point, r.data_dir, r.explain, r.gallery_size)
        candidates.append(("gallery", "Most confidently wrong", worst))
    candidates.append(("time", "Time per stage", _times(r.stage_times) if r.stage_times else []))
    return [(anchor, heading, "\n".join(parts)) for anchor, heading, parts in candidates if parts]


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
    the gallery's explanation provider; ``rule``/``target``: how the operating point is chosen on dev_seen
    (``accuracy``, ``precision`` P, ``recall`` R or ``fixed`` threshold, as ``memeguard export``).
    """
    from matplotlib import rc_context

    metrics = scores.compute_metrics(predictions, labels)
    model = subject(predictions)
    point = threshold.choose(predictions, labels, model, rule, target)
    inputs = _Inputs(
        predictions,
        labels,
        weights,
        stage_times,
        training_logs,
        Path(data_dir) if data_dir is not None else None,
        explain,
        gallery_size,
        metrics,
        model,
        point,
    )
    with rc_context({"text.parse_math": False}):  # a "$" in a model name is a dollar, not TeX
        sections = _sections(inputs)
    subtitle = f"{len(predictions)} prediction sets · labelled splits: {', '.join(metrics) or 'none'}"
    footer = f"memeguard {__version__} · a self-contained page: no scripts, no network"
    path = Path(out_dir) / REPORT_FILE
    write_text_atomic(path, document(title, subtitle, sections, footer))
    return path
