"""The operating point and what it does: one threshold chosen on dev_seen, confusion matrices per split.

The threshold is chosen exactly as a bundle's
(:func:`memeguard.ensemble.operating_point.choose_operating_point`, by default the accuracy-maximising
one on dev_seen) and applied unchanged to the other splits, so the test matrices show what a moderator
would get from the exported model, not a per-split optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memeguard.ensemble.operating_point import OperatingPoint, choose_operating_point
from memeguard.names import DEV_SEEN
from memeguard.pipeline.report.common import Labels, PredictionSets, both_classes, labelled
from memeguard.pipeline.report.page import esc, fmt


@dataclass(frozen=True)
class Confusion:
    """Counts at a threshold (predict hateful when ``proba >= threshold``)."""

    tn: int
    fp: int
    fn: int
    tp: int

    @classmethod
    def at(cls, y: np.ndarray, proba: np.ndarray, threshold: float) -> Confusion:
        predicted = proba >= threshold
        hateful = y == 1
        return cls(
            tn=int((~predicted & ~hateful).sum()),
            fp=int((predicted & ~hateful).sum()),
            fn=int((~predicted & hateful).sum()),
            tp=int((predicted & hateful).sum()),
        )

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / max(1, self.tp + self.tn + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")


def choose(
    predictions: PredictionSets, labels: Labels, model: str | None, rule: str, target: float | None
) -> OperatingPoint | None:
    """The operating point of ``model`` on labelled dev_seen; None when dev_seen cannot choose one."""
    if model is None or DEV_SEEN not in labels or DEV_SEEN not in predictions[model]:
        return None
    y, proba, _, _ = labelled(predictions[model][DEV_SEEN], labels[DEV_SEEN], model, DEV_SEEN)
    if not both_classes(y):
        return None
    return choose_operating_point(y, proba, rule, target)


def describe(point: OperatingPoint) -> str:
    rule = {
        "accuracy": "the highest accuracy on dev_seen",
        "precision": f"the highest recall at precision >= {point.target} on dev_seen",
        "recall": f"the highest precision at recall >= {point.target} on dev_seen",
        "fixed": "a fixed value",
    }[point.rule]
    return f"threshold {point.threshold:.4f} ({rule})"


def confusion_html(c: Confusion, split: str) -> str:
    """The 2x2 matrix as a table (rows: truth, columns: decision) and its rates."""
    return (
        f"<h3>confusion matrix, {esc(split)}</h3>"
        '<table class="cm"><thead><tr><th>truth \\ decision</th><th>not hateful</th><th>hateful</th>'
        "</tr></thead><tbody>"
        f'<tr><td>not hateful</td><td class="hit">{c.tn}</td><td class="miss">{c.fp}</td></tr>'
        f'<tr><td>hateful</td><td class="miss">{c.fn}</td><td class="hit">{c.tp}</td></tr>'
        "</tbody></table>"
        f'<p class="note">accuracy {fmt(c.accuracy)} · precision {fmt(c.precision)} · recall '
        f"{fmt(c.recall)} · {c.fp} false flags, {c.fn} missed</p>"
    )
