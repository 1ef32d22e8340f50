"""Vilio's ensembling procedure (``utils/ens.py``: ``sa_wrapper`` then ``main``) over id-aligned tables.

1. **Seed averaging** per model family (``sa_wrapper``): the plain, unnormalised mean of the runs'
   ``proba`` columns. Vilio's PyTorch CSVs held log-probabilities (so it averaged log-probs, i.e. took a
   geometric mean of probabilities) and ERNIE's held logits; ours are probabilities, so this is the
   arithmetic mean of probabilities and stays in [0, 1]. Vilio also deleted its input CSVs; nothing
   here touches inputs.
2. **The loop** (``main``): pass 1 blends the family columns with SA, PA, RA and SX (simplex-weighted
   raw average); every later pass starts from the family columns plus the previous pass's four blends,
   drops the column with the lowest dev AUROC until ``keep`` (5) remain, and blends again. Vilio stopped
   when the SX dev AUROC moved by at most 1e-4 or after 2 passes (the 2-pass cap always bites first).
   The final prediction is the last pass's SX.

Differences from vilio, all deliberate: columns are matched by id, not row order; a family column that
was pruned is really gone from that pass (vilio's stale-index guard never pruned its copy of the
originals, which only mattered for a third pass it never ran); blends are named ``SA1``, ``SX2``...
so the record of each pass is readable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from memeguard.ensemble.method_names import COORDINATE, SIMPLEX
from memeguard.ensemble.methods import (
    fast_auroc,
    mean_average,
    power_average,
    rank_average,
    spearman_matrix,
    weighted_average,
)
from memeguard.ensemble.optimize import optimize_weights
from memeguard.ensemble.simplex import WeightSearch, simplex_weights
from memeguard.ensemble.table import ScoreTable
from memeguard.errors import ConfigError
from memeguard.names import DEV_SEEN

Optimizer = Callable[[np.ndarray, np.ndarray], WeightSearch]
OPTIMIZERS: dict[str, Optimizer] = {SIMPLEX: simplex_weights, COORDINATE: optimize_weights}


def get_optimizer(name: str) -> Optimizer:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ConfigError(f"unknown weight optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}") from None


def seed_average(
    tables: Mapping[str, ScoreTable], families: Mapping[str, Sequence[str]]
) -> dict[str, ScoreTable]:
    """One column per family: the plain mean of its runs' probabilities, on every split."""
    out = {}
    for split, table in tables.items():
        missing = sorted({m for members in families.values() for m in members} - set(table.names))
        if missing:
            raise ConfigError(f"{split}: families name models without predictions: {', '.join(missing)}")
        columns = [table.select(list(members)).scores.mean(axis=1) for members in families.values()]
        out[split] = ScoreTable(split, table.ids, tuple(families), np.stack(columns, axis=1))
    return out


def _check_splits(tables: Mapping[str, ScoreTable], dev_labels: np.ndarray) -> None:
    if DEV_SEEN not in tables:
        raise ConfigError(f"the ensemble needs {DEV_SEEN} predictions to fit on")
    if len(dev_labels) != len(tables[DEV_SEEN].ids):
        raise ConfigError(f"{len(dev_labels)} dev labels for {len(tables[DEV_SEEN].ids)} dev predictions")
    names = tables[DEV_SEEN].names
    for split, table in tables.items():
        if table.names != names:
            raise ConfigError(f"{split} has models {table.names}, {DEV_SEEN} has {names}")


def dev_aurocs(table: ScoreTable, dev_labels: np.ndarray) -> dict[str, float]:
    return {name: fast_auroc(dev_labels, table.scores[:, c]) for c, name in enumerate(table.names)}


@dataclass
class BlendOutcome:
    """One method applied to every split: the blended scores and (for SX/opt) the fitted weights."""

    scores: dict[str, np.ndarray]
    weights: dict[str, float] | None = None
    dev_auroc: float = float("nan")


def blend(
    tables: Mapping[str, ScoreTable], dev_labels: np.ndarray, method: str, optimizer: str = SIMPLEX
) -> BlendOutcome:
    """Apply one of vilio's methods (``SA``, ``PA``, ``RA``, ``SX``) to every split.

    SA/PA normalise and RA ranks each split on its own (as vilio); SX fits weights on dev with
    ``optimizer`` and applies them to every split's raw columns.
    """
    _check_splits(tables, dev_labels)
    method = method.upper()
    weights = None
    if method == "SA":
        scores = {split: mean_average(t.scores) for split, t in tables.items()}
    elif method == "PA":
        scores = {split: power_average(t.scores, 2.0) for split, t in tables.items()}
    elif method == "RA":
        scores = {split: rank_average(t.scores) for split, t in tables.items()}
    elif method == "SX":
        search = get_optimizer(optimizer)(tables[DEV_SEEN].scores, dev_labels)
        weights = dict(zip(tables[DEV_SEEN].names, map(float, search.weights), strict=True))
        scores = {split: weighted_average(t.scores, search.weights) for split, t in tables.items()}
    else:
        raise ConfigError(f"unknown blend {method!r}; choose SA, PA, RA or SX")
    return BlendOutcome(scores, weights, fast_auroc(dev_labels, scores[DEV_SEEN]))


@dataclass
class PassRecord:
    """What one pass of the loop saw and produced (written to ``weights.json``)."""

    index: int
    candidates: dict[str, float]  # dev AUROC of every column entering the pass
    dropped: list[str]
    kept: list[str]
    blends: dict[str, float]  # dev AUROC of SA/PA/RA/SX of this pass
    sx_weights: dict[str, float]
    spearman: list[list[float]]


@dataclass
class LoopResult:
    scores: dict[str, np.ndarray]  # the final SX per split
    weights: dict[str, float]  # the final SX weights over the last pass's kept columns
    dev_auroc: float
    passes: list[PassRecord] = field(default_factory=list)


def prune_to_best(
    table_names: Sequence[str], aurocs: Mapping[str, float], keep: int
) -> tuple[list[str], list[str]]:
    """Vilio's pruning: repeatedly drop the column with the lowest dev AUROC (the first on ties)."""
    kept = list(table_names)
    dropped = []
    while len(kept) > keep:
        worst = min(kept, key=lambda name: aurocs[name])  # min() returns the first minimum, like vilio
        kept.remove(worst)
        dropped.append(worst)
    return kept, dropped


def vilio_loop(
    tables: Mapping[str, ScoreTable],
    dev_labels: np.ndarray,
    passes: int = 2,
    keep: int = 5,
    tolerance: float = 1e-4,
    optimizer: str = SIMPLEX,
) -> LoopResult:
    """Vilio's loop over family columns (see the module docstring); ``tables`` maps split -> table."""
    _check_splits(tables, dev_labels)
    if passes < 1 or keep < 1:
        raise ConfigError("the loop needs passes >= 1 and keep >= 1")
    originals = dict(tables)
    current = dict(tables)
    records: list[PassRecord] = []
    last, delta = 0.0, float("inf")
    result: LoopResult | None = None
    for index in range(1, passes + 1):
        aurocs = dev_aurocs(current[DEV_SEEN], dev_labels)
        kept, dropped = (
            (list(current[DEV_SEEN].names), [])
            if index == 1
            else prune_to_best(current[DEV_SEEN].names, aurocs, keep)
        )
        current = {split: t.select(kept) for split, t in current.items()}
        outcomes = {m: blend(current, dev_labels, m, optimizer) for m in ("SA", "PA", "RA", "SX")}
        sx = outcomes["SX"]
        records.append(
            PassRecord(
                index=index,
                candidates=aurocs,
                dropped=dropped,
                kept=kept,
                blends={m: o.dev_auroc for m, o in outcomes.items()},
                sx_weights=dict(sx.weights or {}),
                spearman=spearman_matrix(current[DEV_SEEN].scores).round(6).tolist(),
            )
        )
        result = LoopResult(sx.scores, dict(sx.weights or {}), sx.dev_auroc, records)
        delta, last = abs(sx.dev_auroc - last), sx.dev_auroc
        if delta <= tolerance:
            break
        # Next pass: the original family columns plus this pass's four blends.
        current = {}
        for split, table in originals.items():
            for method, outcome in outcomes.items():
                table = table.append(f"{method}{index}", outcome.scores[split])
            current[split] = table
    assert result is not None
    return result
