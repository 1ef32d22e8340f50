"""Fake trained runs for the serving tests: a tiny VisualBERT saved as a run dir whose train_config.json
points at a real grid feature store extracted from a few synthetic images (nothing is trained)."""

from __future__ import annotations

import json

import pytest
from serving_helpers import GRID_CELL_PX, GRID_LEVELS, TEXTS, ServingFixture, save_run, synthetic_image


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServingFixture:
    from memeguard.features.extract import extract_features
    from memeguard.features.grid import GRID_FEATURE_DIM, GridExtractor

    root = tmp_path_factory.mktemp("serving")
    data = root / "data"
    (data / "img").mkdir(parents=True)
    ids = [101 + i for i in range(len(TEXTS))]
    sizes = [(96, 64), (64, 96), (80, 80), (120, 60), (70, 90), (64, 64)]
    lines = []
    for k, (meme_id, text) in enumerate(zip(ids, TEXTS, strict=True)):
        synthetic_image(k, sizes[k]).save(data / "img" / f"{meme_id:05d}.png")
        lines.append(
            json.dumps({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": k % 2, "text": text})
        )
    (data / "dev_seen.jsonl").write_text("\n".join(lines) + "\n")
    store = root / "grid_store"
    extractor = GridExtractor(levels=GRID_LEVELS, cell_px=GRID_CELL_PX)
    extract_features(data, store, extractor, progress=False)
    runs = [save_run(root / f"run_{seed}", store, seed, GRID_FEATURE_DIM) for seed in (1, 2)]
    return ServingFixture(data, store, runs, ids, list(TEXTS))


@pytest.fixture(scope="session")
def scorer(served: ServingFixture):
    """Both runs as one ensemble, loaded once for the whole session."""
    from memeguard.serving.scorer import MemeScorer

    return MemeScorer.from_runs(served.runs, device="cpu")
