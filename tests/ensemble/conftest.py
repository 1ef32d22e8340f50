"""Prediction folders in the layout ``memeguard ensemble`` reads, written with the project's CSV writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from memeguard.data.predictions import write_predictions

SIZES = {"dev_seen": 80, "test_seen": 60, "test_unseen": 70}


class Folder:
    """A synthetic HM-like prediction folder with known labels on every split."""

    def __init__(self, root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> None:
        self.root = root
        self.pred_dir = root / "preds"
        self.pred_dir.mkdir(parents=True)
        self.rng = np.random.default_rng(seed)
        self.sizes = dict(sizes or SIZES)
        # Disjoint id ranges per split, in a scrambled order like the real jsonl files.
        self.ids = {
            s: self.rng.permutation(n) + 10000 * (k + 1) for k, (s, n) in enumerate(self.sizes.items())
        }
        self.labels = {s: self.rng.permutation(np.arange(n) % 2) for s, n in self.sizes.items()}
        self.gt_path = root / "dev_seen.jsonl"
        with open(self.gt_path, "w", encoding="utf-8") as handle:
            for meme_id, label in zip(self.ids["dev_seen"], self.labels["dev_seen"], strict=True):
                record = {
                    "id": int(meme_id),
                    "img": f"img/{meme_id:05d}.png",
                    "label": int(label),
                    "text": "t",
                }
                handle.write(json.dumps(record) + "\n")

    def add_model(
        self, name: str, make: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Write ``name_<split>.csv`` with probabilities ``make(labels, rng)``, rows shuffled per file."""
        out = {}
        for split in self.sizes:
            proba = np.clip(make(self.labels[split], self.rng), 0.0, 1.0)
            order = self.rng.permutation(len(proba))
            write_predictions(self.pred_dir / f"{name}_{split}.csv", self.ids[split][order], proba[order])
            out[split] = proba
        return out

    def noisy(self, name: str, signal: float, noise: float = 1.0) -> dict[str, np.ndarray]:
        return self.add_model(
            name, lambda y, rng: 1.0 / (1.0 + np.exp(-(signal * (y - 0.5) + rng.normal(0.0, noise, len(y)))))
        )


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Folder]:
    def build(seed: int = 0, sizes: dict[str, int] | None = None) -> Folder:
        return Folder(tmp_path / f"case{seed}", seed, sizes)

    return build
