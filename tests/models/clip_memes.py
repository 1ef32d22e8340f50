"""Memes with CLIP-store extras made directly (random vectors of the CLIP store's names), in the HM layout.

Label = image sign XOR text sign: each vector is noise plus (+-) a fixed direction, and neither sign alone
predicts the label, only their interaction does (as in the hateful-memes confounders).
Imported by name from the CLIP head tests (a uniquely named module).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memeguard.features.record import RegionRecord
from tiny_clip import save_tiny_clip  # noqa: F401  (re-exported: the CLIP head tests import it from here)

IMAGE_DIM, TEXT_DIM, PROJ_DIM, PATCH_DIM = 40, 28, 16, 8


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_clip_memes(
    n: int, seed: int, start_id: int, labelled: bool = True
) -> tuple[list[dict], dict[int, RegionRecord]]:
    rule = np.random.default_rng(0)  # the same rule for every split
    u, v = rule.normal(size=IMAGE_DIM), rule.normal(size=TEXT_DIM)
    rng = np.random.default_rng(seed)
    lines, regions = [], {}
    for i in range(n):
        meme_id = start_id + i
        image_sign, text_sign = int(rng.integers(2)), int(rng.integers(2))
        image = (rng.normal(size=IMAGE_DIM) * 0.5 + (2 * image_sign - 1) * u).astype(np.float32)
        text = (rng.normal(size=TEXT_DIM) * 0.5 + (2 * text_sign - 1) * v).astype(np.float32)
        extras = {
            "image_pooled": image,
            "text_pooled": text,
            "image_embeds": _unit(rng.normal(size=PROJ_DIM)),
            "text_embeds": _unit(rng.normal(size=PROJ_DIM)),
        }
        patches = rng.normal(size=(4, PATCH_DIM)).astype(np.float32)
        boxes = np.array([[0, 0, 5, 5], [5, 0, 10, 5], [0, 5, 5, 10], [5, 5, 10, 10]], np.float32)
        regions[meme_id] = RegionRecord(meme_id, patches, boxes, (10, 10), extras=extras)
        line = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "text": f"meme {meme_id}"}
        if labelled:
            line["label"] = image_sign ^ text_sign
        lines.append(line)
    return lines, regions


def write_clip_dataset(
    root: Path, n_train: int = 160, n_dev: int = 60
) -> tuple[Path, dict[int, RegionRecord]]:
    """A data dir (train, dev_seen, test_unseen) and its regions; ids never overlap between splits."""
    data = root / "data"
    data.mkdir(parents=True)
    train, regions = make_clip_memes(n_train, seed=1, start_id=1)
    dev, dev_regions = make_clip_memes(n_dev, seed=2, start_id=10001)
    test, test_regions = make_clip_memes(20, seed=3, start_id=20001, labelled=False)
    regions.update(dev_regions)
    regions.update(test_regions)
    for name, lines in (("train", train), ("dev_seen", dev), ("test_unseen", test)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data, regions


def write_clip_store(path: Path, regions: dict[int, RegionRecord]) -> Path:
    from memeguard.features.store import FeatureStoreWriter

    writer = FeatureStoreWriter(path, feature_dim=PATCH_DIM, dtype="float32", meta={"extractor": "clip"})
    for record in regions.values():
        writer.add(record)
    writer.finalize()
    return path
