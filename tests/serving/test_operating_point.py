"""Operating points: each rule against a brute-force search over every threshold."""

from __future__ import annotations

import numpy as np
import pytest

from memeguard.errors import ConfigError, DataError
from memeguard.serving.operating_point import choose_operating_point, dev_metrics


def counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(precision, recall, accuracy) of ``scores >= threshold``, counted directly."""
    flagged = scores >= threshold
    tp = int((flagged & (labels == 1)).sum())
    precision = tp / int(flagged.sum()) if flagged.any() else 1.0
    return precision, tp / int(labels.sum()), float((flagged == (labels == 1)).mean())


def brute_force(labels: np.ndarray, scores: np.ndarray, rule: str, target: float) -> float | None:
    """The rule's threshold by trying every distinct score (a threshold between two scores adds nothing)."""
    best_key, best = None, None
    for t in np.unique(scores):
        precision, recall, _ = counts(labels, scores, t)
        if rule == "precision" and precision >= target:
            key = (recall, precision, t)
        elif rule == "recall" and recall >= target:
            key = (precision, recall, t)
        else:
            continue
        if best_key is None or key > best_key:
            best_key, best = key, float(t)
    return best


def scored_dev(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Noisy scores with ties (rounded to 2 decimals) so that tie-breaking is exercised."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]
    scores = np.clip(np.round(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.2, size=n), 2), 0, 1)
    return labels, scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rule", ["precision", "recall"])
@pytest.mark.parametrize("target", [0.5, 0.7, 0.8, 0.9])
def test_target_rules_match_brute_force(seed, rule, target):
    labels, scores = scored_dev(seed)
    expected = brute_force(labels, scores, rule, target)
    if expected is None:
        with pytest.raises(ConfigError, match=f"no threshold reaches {rule} {target:g} on dev"):
            choose_operating_point(labels, scores, rule, target)
        return
    point = choose_operating_point(labels, scores, rule, target)
    assert point.threshold == expected
    precision, recall, accuracy = counts(labels, scores, point.threshold)
    assert (point.dev.precision, point.dev.recall, point.dev.accuracy) == pytest.approx(
        (precision, recall, accuracy)
    )
    assert (precision if rule == "precision" else recall) >= target


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_rule_matches_brute_force(seed):
    labels, scores = scored_dev(seed)
    best = max(counts(labels, scores, t)[2] for t in [*np.unique(scores), np.inf])
    point = choose_operating_point(labels, scores)
    assert point.rule == "accuracy" and point.target is None
    assert counts(labels, scores, point.threshold)[2] == pytest.approx(best)
    assert point.dev.accuracy == pytest.approx(best)


def test_fixed_rule_and_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    point = choose_operating_point(labels, scores, "fixed", 0.5)
    assert point.threshold == 0.5
    assert point.dev.precision == pytest.approx(2 / 3) and point.dev.recall == pytest.approx(2 / 3)
    assert point.dev.auroc == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs are ordered
    metrics = dev_metrics(labels, scores, 0.95)  # nothing flagged: precision counts as 1, recall 0
    assert (metrics.precision, metrics.recall, metrics.accuracy) == (1.0, 0.0, 0.4)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(DataError, match="both classes"):
        choose_operating_point([1, 1], [0.2, 0.3])
    with pytest.raises(DataError, match="as many labels as scores"):
        choose_operating_point([0, 1], [0.2])
    with pytest.raises(ConfigError, match="needs a target"):
        choose_operating_point([0, 1], [0.2, 0.3], "precision")
    with pytest.raises(ConfigError, match="unknown operating-point rule 'f1'"):
        choose_operating_point([0, 1], [0.2, 0.3], "f1", 0.5)
