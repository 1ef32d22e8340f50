"""The operating point: the probability at or above which a bundle labels a meme hateful.

Why it is chosen on dev and stored: a model's probabilities are not calibrated alike from run to run (a
small fine-tuned model can put every dev meme above 0.6), so a fixed 0.5 labels at no particular error
rate. A moderator wants one of three things, each read off the dev_seen scores and labels:

* ``accuracy``: the threshold with the highest dev accuracy (the ensemble's own rule,
  :func:`memeguard.data.metrics.best_threshold`);
* ``precision`` P: of the thresholds whose dev precision is at least P, the one with the highest recall
  (flag as much as possible while at most 1 - P of the flags are wrong);
* ``recall`` R: of the thresholds whose dev recall is at least R, the one with the highest precision
  (miss at most 1 - R of the hateful memes with as few false flags as possible).

Ties go to the higher precision or recall, then the higher threshold. Predict 1 when ``proba >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import precision_recall_curve, roc_auc_score

from memeguard.data.metrics import best_threshold
from memeguard.errors import ConfigError, DataError

Rule = Literal["accuracy", "precision", "recall", "fixed"]
RULES: tuple[str, ...] = ("accuracy", "precision", "recall", "fixed")


class DevMetrics(BaseModel):
    """How the operating point does on the dev scores it was chosen on."""

    model_config = ConfigDict(extra="forbid")

    memes: int = Field(ge=1)
    hateful: int = Field(ge=0)
    auroc: float | None = None
    accuracy: float = Field(ge=0.0, le=1.0)
    precision: float = Field(ge=0.0, le=1.0)
    recall: float = Field(ge=0.0, le=1.0)


class OperatingPoint(BaseModel):
    """The stored threshold, the rule and target that chose it, and what it gives on dev."""

    model_config = ConfigDict(extra="forbid")

    rule: Rule
    target: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    dev: DevMetrics | None = None


def _arrays(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(y) != len(s) or len(y) == 0:
        raise DataError(f"an operating point needs as many labels as scores (got {len(y)} and {len(s)})")
    if not np.isfinite(s).all():
        raise DataError("dev scores must be finite")
    if y.min() == y.max():
        raise DataError(f"the dev labels are all {int(y[0])}; an operating point needs both classes")
    return y, s


def _best_on_curve(scores: np.ndarray, labels: np.ndarray, rule: str, target: float) -> float:
    """The threshold on sklearn's precision-recall curve that ``rule`` picks for ``target``."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The curve's last point (precision 1, recall 0) has no threshold: it predicts nothing.
    precision, recall = precision[:-1], recall[:-1]
    meets = precision >= target if rule == "precision" else recall >= target
    if not meets.any():
        best = float(precision.max() if rule == "precision" else recall.max())
        raise ConfigError(
            f"no threshold reaches {rule} {target:g} on dev (the best is {best:.4f}); lower the target"
        )
    first, second = (recall, precision) if rule == "precision" else (precision, recall)
    candidates = np.flatnonzero(meets)
    best = max(candidates, key=lambda i: (first[i], second[i], thresholds[i]))
    return float(thresholds[best])


def dev_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> DevMetrics:
    """Accuracy, precision, recall (at ``threshold``) and AUROC of dev scores."""
    y, s = _arrays(labels, scores)
    predicted = s >= threshold
    true_positives = int((predicted & (y == 1)).sum())
    flagged = int(predicted.sum())
    return DevMetrics(
        memes=len(y),
        hateful=int(y.sum()),
        auroc=float(roc_auc_score(y, s)),
        accuracy=float((predicted == (y == 1)).mean()),
        precision=true_positives / flagged if flagged else 1.0,
        recall=true_positives / int(y.sum()),
    )


def choose_operating_point(
    labels: Sequence[int], scores: Sequence[float], rule: str = "accuracy", target: float | None = None
) -> OperatingPoint:
    """Pick the threshold on dev by ``rule`` (``target`` is P or R, or the threshold for ``fixed``)."""
    y, s = _arrays(labels, scores)
    if rule not in RULES:
        raise ConfigError(f"unknown operating-point rule {rule!r}; choose from {', '.join(RULES)}")
    if rule != "accuracy" and (target is None or not 0.0 <= target <= 1.0):
        raise ConfigError(f"the {rule} rule needs a target in [0, 1], got {target}")
    if rule == "accuracy":
        # roc_curve's first threshold predicts nothing (+inf, clamped to the largest float); stored as 1.0
        # to stay a probability (it then flags only memes scored exactly 1).
        threshold = min(best_threshold(y, s)[0], 1.0)
        target = None
    elif rule == "fixed":
        threshold = float(target)
    else:
        threshold = _best_on_curve(s, y, rule, float(target))
    return OperatingPoint(rule=rule, target=target, threshold=threshold, dev=dev_metrics(y, s, threshold))
