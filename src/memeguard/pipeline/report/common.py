"""What every figure family shares: model and split order, labelled arrays, colours, bounded curves."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from memeguard.data.predictions import Predictions
from memeguard.errors import DataError
from memeguard.names import REPORT_SPLITS

ENSEMBLE = "ENSEMBLE"
MAX_CURVE_POINTS = 2000  # per line: a 100k-meme split must not make a 100k-vertex path
ENSEMBLE_COLOUR = "#111111"
HATEFUL_COLOUR = "#d1495b"
BENIGN_COLOUR = "#2e86ab"

PredictionSets = Mapping[str, Mapping[str, Predictions]]  # model -> split -> predictions
Labels = Mapping[str, Mapping[int, int]]  # split -> id -> label


def split_key(split: str) -> tuple[int, str]:
    return (REPORT_SPLITS.index(split) if split in REPORT_SPLITS else len(REPORT_SPLITS), split)


def model_order(names: list[str]) -> list[str]:
    """The ensemble first, then the families by name."""
    return sorted(names, key=lambda n: (n != ENSEMBLE, n))


def subject(predictions: PredictionSets) -> str | None:
    """The prediction set the single-model views (calibration, threshold, gallery) describe."""
    names = model_order(list(predictions))
    return names[0] if names else None


def labelled(pred: Predictions, labels: Mapping[int, int], model: str, split: str) -> tuple[np.ndarray, ...]:
    """(y, proba, csv_label, ids) for the predicted memes; a predicted meme without a label is an error."""
    missing = [int(i) for i in pred.ids if int(i) not in labels]
    if missing:
        raise DataError(f"{model} on {split}: {len(missing)} predicted ids have no label, e.g. {missing[:5]}")
    y = np.asarray([labels[int(i)] for i in pred.ids], dtype=np.int64)
    return y, pred.proba, pred.label, pred.ids


def both_classes(y: np.ndarray) -> bool:
    return bool(0 < y.sum() < len(y))


def colour(k: int, n: int = 10) -> tuple[float, ...]:
    """The k-th of n line colours: tab10's strong ones while they last, tab20 for vilio-sized sets."""
    from matplotlib import colormaps

    return colormaps["tab10"](k % 10) if n <= 10 else colormaps["tab20"](k % 20)


def downsample(*columns: np.ndarray, limit: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, ...]:
    """At most ``limit`` evenly spaced rows of aligned columns, always keeping the first and last."""
    n = len(columns[0])
    if n <= limit:
        return columns
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
    return tuple(np.asarray(c)[keep] for c in columns)


def style(ax) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One look for every panel: light grid behind the data, no top/right frame."""
    ax.grid(alpha=0.25, lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
