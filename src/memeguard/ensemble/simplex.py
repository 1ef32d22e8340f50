"""Vilio's ``Simplex`` weight search: a simplex-subdivision global optimiser ("Simple", as adapted in
``utils/ens.py``), re-written from its description.

The search domain is the simplex whose corners are the zero vector and the ``n`` unit vectors
(times ``scale``), so every point is a non-negative weight vector. The tuner:

1. evaluates the ``n + 1`` corners;
2. keeps a priority queue of sub-simplices; a simplex's priority ("acquisition") is
   ``interpolated + exploration · log_{n+1}(content) · (max_seen − min_seen)``, where ``interpolated``
   is the inverse-distance-weighted mean of its vertices' objective values at its test point and
   ``content`` is its volume as a fraction of the whole domain (so small simplices are penalised);
3. pops the best simplex, evaluates the objective at its test point — the barycentric combination
   with weights proportional to each vertex's distance from the centroid — and splits it into
   ``n + 1`` children, child ``i`` replacing vertex ``i`` by the new point, with
   ``content = parent content · barycentric weight i``.

Priorities are computed with the ``max − min`` spread known when the simplex was made; since the spread
only grows, a stale priority is optimistic, so a popped simplex is re-scored and pushed back when it no
longer beats the next one (the original's lazy update). The iteration count includes the corner
evaluations (vilio: 3000 in all, exploration 0.01). Ties in priority are broken first-in-first-out.

Because the test point leans towards the vertices farthest from the centroid, cells near a face
flatten until the test point lands on a vertex; the original then divided by a zero distance and
queued NaN priorities (which corrupt the heap order). Here such a cell takes that vertex's value.
Up to that divergence the sequence of evaluated points matches the original step for step.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from memeguard.ensemble.methods import fast_auroc
from memeguard.errors import ConfigError

VILIO_ITERATIONS = 3000
VILIO_EXPLORATION = 0.01


@dataclass
class _Cell:
    vertices: np.ndarray  # indices into the tuner's point table, n + 1 of them
    test_point: np.ndarray  # coordinates (n,)
    barycentric: np.ndarray  # (n + 1,) weights of the test point, sum 1
    interpolated: float
    opportunity_cost: float  # exploration · log_{n+1}(content) (<= 0)
    content: float
    spread: float  # max − min objective when the priority was computed

    @property
    def priority(self) -> float:
        return self.interpolated + self.opportunity_cost * self.spread


@dataclass
class SimplexTuner:
    """Maximise ``objective`` over the simplex spanned by ``corners`` (``(n + 1, n)`` array)."""

    corners: np.ndarray
    objective: Callable[[np.ndarray], float]
    exploration: float = VILIO_EXPLORATION
    iterations: int = 0
    _points: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False)
    _values: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    _size: int = 0
    _queue: list[tuple[float, int, _Cell]] = field(default_factory=list, repr=False)
    _order: count = field(default_factory=count, repr=False)

    def __post_init__(self) -> None:
        self.corners = np.asarray(self.corners, dtype=np.float64)
        k, n = self.corners.shape
        if k != n + 1:
            raise ConfigError(f"a simplex in {n} dimensions needs {n + 1} corners, got {k}")
        self._points = np.empty((1024, n))
        self._values = np.empty(1024)

    @property
    def n_vertices(self) -> int:
        return self.corners.shape[0]

    @property
    def points(self) -> np.ndarray:
        """Every evaluated point, in evaluation order."""
        return self._points[: self._size].copy()

    @property
    def values(self) -> np.ndarray:
        return self._values[: self._size].copy()

    @property
    def best(self) -> tuple[float, np.ndarray]:
        """(best objective value, its coordinates); the first one found wins ties."""
        index = int(np.argmax(self._values[: self._size]))
        return float(self._values[index]), self._points[index].copy()

    def _spread(self) -> float:
        values = self._values[: self._size]
        return float(values.max() - values.min())

    def _evaluate(self, coords: np.ndarray) -> int:
        if self._size == self._points.shape[0]:
            self._points = np.concatenate([self._points, np.empty_like(self._points)])
            self._values = np.concatenate([self._values, np.empty_like(self._values)])
        self._points[self._size] = coords
        self._values[self._size] = float(self.objective(self._points[self._size].copy()))
        self._size += 1
        return self._size - 1

    def _make_cells(self, vertex_sets: np.ndarray, contents: np.ndarray) -> list[_Cell]:
        """Score a batch of cells at once (a split makes n + 1 of them; numpy per cell would dominate)."""
        coords = self._points[vertex_sets]  # (k, n + 1, n)
        values = self._values[vertex_sets]  # (k, n + 1)
        centroid = coords.mean(axis=1, keepdims=True)
        from_centroid = np.linalg.norm(coords - centroid, axis=2)
        barycentric = from_centroid / from_centroid.sum(axis=1, keepdims=True)
        test_points = np.einsum("kv,kvd->kd", barycentric, coords)
        to_test = np.linalg.norm(coords - test_points[:, None, :], axis=2)
        on_vertex = (to_test == 0).any(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / to_test
            interpolated = (inverse * values).sum(axis=1) / inverse.sum(axis=1)
        # A degenerate cell whose test point sits on a vertex takes that vertex's value.
        interpolated = np.where(
            on_vertex, values[np.arange(len(values)), to_test.argmin(axis=1)], interpolated
        )
        spread = self._spread()
        cells = []
        for k in range(vertex_sets.shape[0]):
            content = float(contents[k])
            cost = self.exploration * math.log(content, self.n_vertices) if content > 0 else -math.inf
            cells.append(
                _Cell(
                    vertex_sets[k].copy(),
                    test_points[k],
                    barycentric[k],
                    float(interpolated[k]),
                    cost,
                    content,
                    spread,
                )
            )
        return cells

    def _push(self, cell: _Cell) -> None:
        heapq.heappush(self._queue, (-cell.priority, next(self._order), cell))

    def _pop(self) -> _Cell:
        _, _, cell = heapq.heappop(self._queue)
        spread = self._spread()
        while spread > cell.spread:
            cell.spread = spread
            if self._queue and -cell.priority > self._queue[0][0]:
                _, _, cell = heapq.heappushpop(self._queue, (-cell.priority, next(self._order), cell))
        return cell

    def step(self) -> None:
        """One iteration: a corner while corners remain, else split the most promising cell."""
        if self.iterations < self.n_vertices:
            self._evaluate(self.corners[self.iterations])
            if self.iterations == self.n_vertices - 1:
                (cell,) = self._make_cells(np.arange(self.n_vertices)[None, :], np.ones(1))
                self._push(cell)
        else:
            cell = self._pop()
            new_index = self._evaluate(cell.test_point)
            children = np.tile(cell.vertices, (self.n_vertices, 1))
            np.fill_diagonal(children, new_index)
            for child in self._make_cells(children, cell.content * cell.barycentric):
                self._push(child)
        self.iterations += 1

    def optimize(self, steps: int) -> tuple[float, np.ndarray]:
        for _ in range(steps):
            self.step()
        return self.best


@dataclass
class WeightSearch:
    """Result of a weight search: non-negative weights summing to 1 (raw-score blend) and the dev AUROC."""

    weights: np.ndarray
    auroc: float
    evaluations: int
    method: str


def simplex_weights(
    scores: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    iterations: int = VILIO_ITERATIONS,
    exploration: float = VILIO_EXPLORATION,
    scale: float = 1.0,
) -> WeightSearch:
    """Vilio's ``Simplex(dev_probas, dev_labels)``: maximise dev AUROC of ``scores @ w`` over ``w >= 0``.

    Corners: the zero vector and ``scale`` times each unit vector. If the best point is the zero
    vector (only when every model scores at most 0.5), equal weights are returned instead of vilio's
    0/0 blend.
    """
    matrix = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    n = matrix.shape[1]
    corners = np.vstack([np.zeros((1, n)), np.eye(n) * scale])
    tuner = SimplexTuner(corners, lambda w: fast_auroc(y, matrix @ w), exploration=exploration)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny products; threads only contend
        best_value, best = tuner.optimize(iterations)
    if best.sum() <= 0:
        best = np.ones(n)
        best_value = fast_auroc(y, matrix @ best)
    return WeightSearch(best / best.sum(), float(best_value), tuner.iterations, "simplex")
