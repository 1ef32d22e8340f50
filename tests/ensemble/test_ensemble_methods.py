"""SA / PA / RA / weighted blends against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from memeguard.ensemble.methods import (
    fast_auroc,
    mean_average,
    minmax_normalize,
    power_average,
    rank_average,
    simple_average,
    spearman_matrix,
    weighted_average,
)
from memeguard.errors import ConfigError

# Two models, four memes. Column 0 spans 1..5, column 1 spans 10..30.
SCORES = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [5.0, 10.0]])


def test_minmax_by_hand() -> None:
    expected = np.array([[0.0, 0.0], [0.25, 1.0], [0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(minmax_normalize(SCORES), expected)


def test_simple_average_is_mean_of_normalised_columns() -> None:
    # (0+0)/2, (0.25+1)/2, (0.5+0.5)/2, (1+0)/2
    np.testing.assert_allclose(mean_average(SCORES), [0.0, 0.625, 0.5, 0.5])


def test_power_average_squares_before_averaging() -> None:
    # (0²+0²)/2, (0.0625+1)/2, (0.25+0.25)/2, (1+0)/2
    np.testing.assert_allclose(power_average(SCORES), [0.0, 0.53125, 0.25, 0.5])


def test_rank_average_uses_average_ranks_for_ties() -> None:
    scores = np.array([[0.1, 0.3], [0.5, 0.3], [0.5, 0.3], [0.9, 0.1]])
    # column 0 ranks 1, 2.5, 2.5, 4 (/4); column 1 ranks 3, 3, 3, 1 (/4)
    expected = np.array([(0.25 + 0.75) / 2, (0.625 + 0.75) / 2, (0.625 + 0.75) / 2, (1.0 + 0.25) / 2])
    np.testing.assert_allclose(rank_average(scores), expected)


def test_weighted_average_normalises_weights_on_raw_scores() -> None:
    # weights 1:3 -> 0.25, 0.75 on the raw (not normalised) columns
    np.testing.assert_allclose(
        weighted_average(SCORES, [1.0, 3.0]), 0.25 * SCORES[:, 0] + 0.75 * SCORES[:, 1]
    )
    np.testing.assert_allclose(simple_average(SCORES, [2.0, 0.0]), SCORES[:, 0])


def test_constant_column_normalises_to_zero_not_nan() -> None:
    scores = np.array([[0.2, 0.7], [0.4, 0.7], [0.9, 0.7]])
    np.testing.assert_allclose(minmax_normalize(scores)[:, 1], 0.0)
    np.testing.assert_allclose(mean_average(scores), [0.0, 2 / 7 / 2, 0.5])


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [1.0]])
def test_bad_weights_are_rejected(weights: list[float]) -> None:
    with pytest.raises(ConfigError):
        weighted_average(SCORES, weights)


def test_nan_scores_are_rejected() -> None:
    with pytest.raises(ConfigError, match="NaN"):
        mean_average(np.array([[0.1, np.nan], [0.2, 0.3]]))


def test_fast_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 57)
        s = rng.integers(0, 6, 57).astype(float)  # many ties
        assert fast_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(fast_auroc(np.ones(4), np.arange(4.0)))


def test_spearman_matrix_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((30, 3))
    rho = spearman_matrix(scores)
    assert rho.shape == (3, 3)
    assert rho[0, 2] == pytest.approx(spearmanr(scores[:, 0], scores[:, 2]).statistic)
    two = spearman_matrix(scores[:, :2])
    assert two.shape == (2, 2) and two[1, 0] == pytest.approx(spearmanr(scores[:, 0], scores[:, 1]).statistic)
