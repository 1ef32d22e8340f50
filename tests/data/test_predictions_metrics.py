"""Submission CSVs and metrics, checked against values computed independently."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from memeguard.data.metrics import accuracy, auroc, best_threshold
from memeguard.data.predictions import align_predictions, read_predictions, write_predictions
from memeguard.errors import DataError


def pairwise_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the probability that a random positive outranks a random negative (ties count half)."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # rounding makes ties
    assert auroc(labels, scores) == pytest.approx(pairwise_auroc(labels, scores), abs=1e-12)
    assert np.isnan(auroc([1, 1], [0.2, 0.3]))


def test_best_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 80)
    scores = rng.random(80) + 0.4 * labels
    threshold, acc = best_threshold(labels, scores)
    brute = max(np.mean((scores >= t).astype(int) == labels) for t in np.append(scores, np.inf))
    assert acc == pytest.approx(brute)
    assert accuracy(labels, scores, threshold) == pytest.approx(brute)


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    proba = [0.1, 0.123456789012345, 1.0, 0.0]
    path = write_predictions(tmp_path / "run" / "dev_seen.csv", [5, 3, 9, 1], proba)
    assert path.read_text().splitlines()[0] == "id,proba,label"
    preds = read_predictions(path)
    assert preds.ids.tolist() == [5, 3, 9, 1]
    assert preds.proba.tolist() == proba
    assert preds.label.tolist() == [0, 0, 1, 0]
    assert not list((tmp_path / "run").glob(".*tmp"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,0.5,0\n1,0.2,0\n", "duplicate ids"),
        ("1,nan,0\n", "line 2|:2"),
        ("1,1.5,1\n", "not a probability"),
        ("1,0.5,3\n", "not 0 or 1"),
        ("1,abc,0\n", "cannot parse"),
    ],
)
def test_bad_csv_rows_are_rejected(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,proba,label\n" + body)
    with pytest.raises(DataError, match=message):
        read_predictions(path)


def test_align_by_id_reports_missing_and_extra(tmp_path: Path) -> None:
    preds = read_predictions(write_predictions(tmp_path / "p.csv", [1, 2, 3], [0.1, 0.2, 0.3]))
    aligned = align_predictions(preds, [3, 1, 2])
    assert aligned.ids.tolist() == [3, 1, 2] and aligned.proba.tolist() == [0.3, 0.1, 0.2]
    with pytest.raises(DataError, match=r"missing ids: 4; extra ids: 2"):
        align_predictions(preds, [1, 3, 4])
