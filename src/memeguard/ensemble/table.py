"""Predictions of several models for one split, aligned by meme id.

Vilio combined CSVs by row position (``pd.concat`` of ``proba`` columns), which silently mixes memes
when one model's file is ordered differently or misses a row. Here every column is matched by ``id``
and any difference in the id sets is an error naming the offending file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from memeguard.data.hm import load_jsonl
from memeguard.data.predictions import Predictions, align_predictions
from memeguard.errors import DataError


@dataclass(frozen=True)
class ScoreTable:
    """``scores[r, c]`` is model ``names[c]``'s probability for meme ``ids[r]`` on ``split``."""

    split: str
    ids: np.ndarray
    names: tuple[str, ...]
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.ids), len(self.names)):
            raise DataError(
                f"{self.split}: score matrix {self.scores.shape} does not match "
                f"{len(self.ids)} ids x {len(self.names)} models"
            )

    def column(self, name: str) -> np.ndarray:
        return self.scores[:, self.names.index(name)]

    def select(self, names: Sequence[str]) -> ScoreTable:
        index = [self.names.index(name) for name in names]
        return ScoreTable(self.split, self.ids, tuple(names), self.scores[:, index])

    def append(self, name: str, values: np.ndarray) -> ScoreTable:
        if name in self.names:
            raise DataError(f"{self.split}: column {name!r} already present")
        column = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        return ScoreTable(self.split, self.ids, (*self.names, name), np.hstack([self.scores, column]))


def stack_predictions(
    split: str, predictions: Mapping[str, Predictions], sources: Mapping[str, str] | None = None
) -> ScoreTable:
    """Align every model's predictions to the ids (and row order) of the first one.

    ``sources`` maps a model name to the file it came from, so errors can name it.
    """
    if not predictions:
        raise DataError(f"{split}: no predictions to combine")
    sources = dict(sources or {})
    names = tuple(predictions)
    reference = predictions[names[0]]
    ref_source = sources.get(names[0], names[0])
    columns = []
    for name in names:
        source = sources.get(name, name)
        pred = predictions[name]
        if len(pred) == 0:  # checked here, or a header-only file would be blamed on the files beside it
            raise DataError(f"{source}: no prediction rows (only a header)")
        bad = ~np.isfinite(pred.proba)
        if bad.any():
            raise DataError(f"{source}: id {int(pred.ids[np.flatnonzero(bad)[0]])}: proba is NaN or infinite")
        where = source if name == names[0] else f"{source} (compared with {ref_source})"
        columns.append(align_predictions(pred, reference.ids, source=where).proba)
    return ScoreTable(split, reference.ids.copy(), names, np.stack(columns, axis=1))


def ground_truth_labels(gt_path: str, ids: np.ndarray, source: str = "predictions") -> tuple[np.ndarray, int]:
    """Labels from a labelled split file (``dev_seen.jsonl``) for ``ids``, and the file's size.

    Predictions may cover a subset of the file (vilio re-merged labels on ``id`` in that case and so do
    we); an id the file does not have, or a meme without a label, is an error.
    """
    memes = load_jsonl(gt_path)
    labels = {meme.id: meme.label for meme in memes}
    unknown = [int(i) for i in ids if int(i) not in labels]
    if unknown:
        shown = ", ".join(map(str, unknown[:20])) + (
            f" ... ({len(unknown)} in all)" if len(unknown) > 20 else ""
        )
        raise DataError(f"{source}: ids not in {gt_path}: {shown}")
    unlabelled = [int(i) for i in ids if labels[int(i)] is None]
    if unlabelled:
        raise DataError(f"{gt_path}: memes without a label: {unlabelled[:20]}")
    y = np.asarray([labels[int(i)] for i in ids], dtype=np.int64)
    if y.min() == y.max():
        raise DataError(
            f"{gt_path}: the predicted memes carry only label {int(y[0])}; AUROC needs both classes"
        )
    return y, len(memes)
