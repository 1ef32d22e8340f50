"""Weight search: vilio's simplex tuner vs the coordinate optimiser, on synthetic vilio-sized inputs.

15 prediction sets (5 families x 3 seeds, like vilio's O/U/V/EL/ES runs), dev_seen 500 memes,
test_seen 1000, test_unseen 2000; scorers share a common noise term and a per-family one, so they are
correlated the way seeds and sibling models are. Each case is timed (best of ``--repeats``) and
scored by AUROC on dev (the objective) and on the two test splits (held out: how much of the dev gain
is over-fitting). The baseline is vilio's search as it ran: the simplex tuner with scikit-learn's
``roc_auc_score`` as objective; the same tuner with the exact rank-sum AUROC shows what is tuner
and what is objective cost. The last rows time the whole two-pass loop with each weight search.

    .venv/bin/python benchmarks/ensemble.py [--cases 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from memeguard.ensemble.method_names import COORDINATE, SIMPLEX
from memeguard.ensemble.optimize import optimize_weights
from memeguard.ensemble.simplex import SimplexTuner, WeightSearch, simplex_weights
from memeguard.ensemble.table import ScoreTable
from memeguard.ensemble.vilio_loop import seed_average, vilio_loop
from memeguard.names import DEV_SEEN, TEST_SEEN, TEST_UNSEEN

SIZES = {DEV_SEEN: 500, TEST_SEEN: 1000, TEST_UNSEEN: 2000}
FAMILIES = ("O", "U", "V", "EL", "ES")


def synthetic_case(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Per split: labels and a (rows, 15) probability matrix."""
    rng = np.random.default_rng(seed)
    strength = {f: rng.uniform(0.25, 0.7) for f in FAMILIES}  # single models ~0.65-0.75 AUROC, as on HM
    labels, scores = {}, {}
    for split, n in SIZES.items():
        y = rng.permutation(np.arange(n) % 2)
        shared = rng.normal(0, 1, n)  # what every model gets wrong
        columns = []
        for family in FAMILIES:
            family_noise = rng.normal(0, 0.8, n)
            for _ in range(3):
                logit = strength[family] * (2 * y - 1) + 0.6 * shared + family_noise + rng.normal(0, 1.0, n)
                columns.append(1 / (1 + np.exp(-logit)))
        labels[split], scores[split] = y, np.stack(columns, axis=1)
    names = [f"{f}__{s}" for f in FAMILIES for s in range(3)]
    return labels, scores, names


def vilio_simplex(scores: np.ndarray, y: np.ndarray) -> WeightSearch:
    """The tuner with sklearn's roc_auc_score as the objective, as vilio's ``Simplex`` ran it."""
    n = scores.shape[1]
    corners = np.vstack([np.zeros((1, n)), np.eye(n)])
    tuner = SimplexTuner(corners, lambda w: roc_auc_score(y, scores @ w), exploration=0.01)
    value, best = tuner.optimize(3000)
    return WeightSearch(best / best.sum(), value, tuner.iterations, "simplex-sklearn")


def timed(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    searches: dict[str, Callable[[np.ndarray, np.ndarray], WeightSearch]] = {
        "simplex, sklearn AUROC (vilio)": vilio_simplex,
        "simplex, rank-sum AUROC (--method simplex)": simplex_weights,
        "coordinate (--method coordinate)": optimize_weights,
    }
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in searches}
    loop_rows: dict[str, list[tuple[float, float, float]]] = {
        f"loop + {SIMPLEX}": [],
        f"loop + {COORDINATE}": [],
    }
    for case in range(args.cases):
        labels, scores, names = synthetic_case(case)
        for name, search in searches.items():
            dev_x, dev_y = scores[DEV_SEEN], labels[DEV_SEEN]
            result, seconds = timed(lambda s=search, x=dev_x, y=dev_y: s(x, y), args.repeats)
            w = result.weights
            rows[name].append((seconds, *(roc_auc_score(labels[s], scores[s] @ w) for s in SIZES)))
        tables = {s: ScoreTable(s, np.arange(SIZES[s]), tuple(names), scores[s]) for s in SIZES}
        families = {f: [n for n in names if n.startswith(f"{f}__")] for f in FAMILIES}
        family_tables = seed_average(tables, families)
        for optimizer in (SIMPLEX, COORDINATE):
            loop, seconds = timed(
                lambda o=optimizer, t=family_tables, y=labels[DEV_SEEN]: vilio_loop(t, y, optimizer=o),
                args.repeats,
            )
            loop_rows[f"loop + {optimizer}"].append(
                (seconds, loop.dev_auroc, roc_auc_score(labels[TEST_UNSEEN], loop.scores[TEST_UNSEEN]))
            )

    print(
        f"weight search over 15 prediction sets, dev 500 / test 1000 / 2000, {args.cases} cases "
        f"(mean; best of {args.repeats} for time)"
    )
    header = (
        f"{'method':44s} {'seconds':>8s} {'speed-up':>8s} {'dev AUROC':>10s} {'test_seen':>10s} "
        f"{'test_unseen':>11s}"
    )
    print(header)
    print("-" * len(header))
    base = statistics.mean(r[0] for r in rows["simplex, sklearn AUROC (vilio)"])
    for name, values in rows.items():
        t, dev, seen, unseen = (statistics.mean(col) for col in zip(*values, strict=True))
        print(f"{name:44s} {t:8.3f} {base / t:7.1f}x {dev:10.4f} {seen:10.4f} {unseen:11.4f}")
    coordinate = rows["coordinate (--method coordinate)"]
    simplex = rows["simplex, rank-sum AUROC (--method simplex)"]
    wins = sum(c[1] >= s[1] for c, s in zip(coordinate, simplex, strict=True))
    print(f"coordinate >= simplex dev AUROC in {wins}/{args.cases} cases")
    print()
    print("whole two-pass loop on 5 seed-averaged families")
    print(f"{'method':44s} {'seconds':>8s} {'dev AUROC':>10s} {'test_unseen':>11s}")
    for name, values in loop_rows.items():
        t, dev, unseen = (statistics.mean(col) for col in zip(*values, strict=True))
        print(f"{name:44s} {t:8.3f} {dev:10.4f} {unseen:11.4f}")


if __name__ == "__main__":
    main()
