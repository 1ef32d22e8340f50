"""AUROC (the challenge metric), accuracy, and the accuracy-maximising threshold, via scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

from memeguard.errors import DataError


def _arrays(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise DataError(f"labels ({y.shape}) and scores ({s.shape}) differ in shape")
    if not np.isfinite(s).all():
        raise DataError("scores contain NaN or infinite values")
    return y, s


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present (undefined)."""
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def accuracy(labels: Sequence[int], proba: Sequence[float], threshold: float = 0.5) -> float:
    y, s = _arrays(labels, proba)
    return float(accuracy_score(y, (s >= threshold).astype(np.int64)))


def best_threshold(labels: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """The ROC-curve threshold with the highest accuracy, and that accuracy.

    Accuracy at each ROC point uses the real class counts: (TPR·P + (1−FPR)·N) / (P + N).
    (vilio hard-coded P = N = 250, the dev_seen balance.) Predict 1 when ``score >= threshold``.
    """
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    negatives = int(len(y) - positives)
    if positives == 0 or negatives == 0:
        raise DataError("best_threshold needs both classes in the labels")
    fpr, tpr, thresholds = roc_curve(y, s)
    accuracies = (tpr * positives + (1.0 - fpr) * negatives) / (positives + negatives)
    best = int(np.argmax(accuracies))
    threshold = float(min(thresholds[best], np.nextafter(np.inf, 0)))
    return threshold, float(accuracies[best])
