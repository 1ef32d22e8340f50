"""The simplex tuner (vilio's SX search) and the coordinate optimiser."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from memeguard.ensemble.optimize import _best_step, optimize_weights
from memeguard.ensemble.simplex import SimplexTuner, simplex_weights


def test_tuner_evaluates_corners_then_the_distance_weighted_point() -> None:
    corners = np.vstack([np.zeros((1, 2)), np.eye(2)])
    seen = []
    tuner = SimplexTuner(corners, lambda w: seen.append(w.copy()) or float(w.sum()))
    tuner.optimize(4)
    np.testing.assert_allclose(np.stack(seen[:3]), corners)
    # Centroid (1/3, 1/3): the zero corner is sqrt(2)/3 away, the unit corners sqrt(5)/3 each, so the
    # barycentric weights are proportional to (sqrt 2, sqrt 5, sqrt 5).
    b = np.array([math.sqrt(2), math.sqrt(5), math.sqrt(5)])
    b /= b.sum()
    np.testing.assert_allclose(seen[3], [b[1], b[2]])
    assert tuner.iterations == 4


def test_tuner_finds_a_known_interior_optimum() -> None:
    target = np.array([0.3, 0.5])
    corners = np.vstack([np.zeros((1, 2)), np.eye(2)])
    tuner = SimplexTuner(corners, lambda w: -float(np.sum((w - target) ** 2)), exploration=0.01)
    value, best = tuner.optimize(400)
    np.testing.assert_allclose(best, target, atol=0.03)
    assert value > -1e-3
    # Cells collapse onto faces as the search refines (the original then produced NaN priorities);
    # every evaluated point must stay a finite point of the domain.
    assert np.isfinite(tuner.values).all()
    assert (tuner.points >= -1e-12).all() and (tuner.points.sum(axis=1) <= 1 + 1e-9).all()


def test_simplex_weights_recovers_the_only_perfect_blend() -> None:
    # s1 = z + e, s2 = z - e: only w1 == w2 cancels the large noise e and separates the classes.
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    z = y + rng.normal(0, 0.05, 200)
    e = rng.normal(0, 3.0, 200)
    scores = np.stack([z + e, z - e], axis=1)
    result = simplex_weights(scores, y)
    assert result.auroc == 1.0
    assert roc_auc_score(y, scores @ result.weights) == 1.0
    np.testing.assert_allclose(result.weights, [0.5, 0.5], atol=0.01)
    assert result.evaluations == 3000


def test_line_search_is_exact_against_a_brute_force_grid() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 400)
    b = rng.normal(0, 1, 400)
    value, t = _best_step(a, b, current=0.3)
    grid = np.concatenate([np.linspace(0, 5, 20001), [1e3, 1e6]])
    brute = max(float((a + g * b > 0).sum() + 0.5 * (a + g * b == 0).sum()) for g in grid)
    assert value >= brute
    assert value == pytest.approx(float((a + t * b > 0).sum()))


def _scorers(seed: int, n_rows: int = 300, n_models: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_rows)
    shared = rng.normal(0, 1, n_rows)
    columns = [
        y * rng.uniform(0.3, 1.2) + 0.7 * shared + rng.normal(0, rng.uniform(0.5, 2.0), n_rows)
        for _ in range(n_models)
    ]
    return 1.0 / (1.0 + np.exp(-np.stack(columns, axis=1))), y


def test_coordinate_optimiser_reaches_the_simplex_auroc() -> None:
    scores, y = _scorers(seed=5)
    fast = optimize_weights(scores, y)
    slow = simplex_weights(scores, y)
    assert fast.auroc >= slow.auroc
    assert fast.auroc == pytest.approx(roc_auc_score(y, scores @ fast.weights))
    assert (fast.weights >= 0).all() and fast.weights.sum() == pytest.approx(1.0)
    best_single = max(roc_auc_score(y, scores[:, i]) for i in range(scores.shape[1]))
    assert fast.auroc >= max(best_single, roc_auc_score(y, scores.mean(axis=1)))


def test_coordinate_optimiser_ignores_constant_columns() -> None:
    scores, y = _scorers(seed=2, n_rows=120, n_models=3)
    scores = np.hstack([scores, np.full((120, 1), 0.4)])
    result = optimize_weights(scores, y)
    assert result.weights[3] == 0.0
