"""A tiny XOR meme set written in the HM layout, with region features made directly (no images needed).

Label = colour family of the regions XOR noun group of the text, so neither modality alone predicts it.
Regions: 6 boxes of 32-d features; the colour family shifts the mean of the first 8 dims of every box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memeguard.features.record import RegionRecord

ANIMALS = ["dog", "cat", "horse", "cow", "bird"]
VEHICLES = ["car", "bus", "truck", "train", "boat"]
FILLER = ["look at this", "when you see a", "nobody expects the", "my friend the", "just a normal"]
DIM = 32


def make_meme_set(n: int, seed: int, start_id: int = 1, labelled: bool = True) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    lines, regions = [], {}
    for i in range(n):
        meme_id = start_id + i
        visual, text_group = int(rng.integers(2)), int(rng.integers(2))
        noun = (VEHICLES if text_group else ANIMALS)[int(rng.integers(5))]
        text = f"{FILLER[int(rng.integers(5))]} {noun}"
        feats = rng.normal(0.0, 0.5, size=(6, DIM)).astype(np.float32)
        feats[:, :8] += 1.5 if visual else -1.5
        boxes = np.array([[0, 0, 50, 50], [50, 0, 100, 50], [0, 50, 50, 100], [50, 50, 100, 100],
                          [0, 0, 100, 100], [25, 25, 75, 75]], dtype=np.float32)
        regions[meme_id] = RegionRecord(meme_id, feats, boxes, (100, 100))
        line = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "text": text}
        if labelled:
            line["label"] = visual ^ text_group
        lines.append(line)
    return lines, regions


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def toy_data(tmp_path: Path) -> tuple[Path, dict[int, RegionRecord]]:
    """A data dir with every split vilio's runs read, and the region source as a dict."""
    data = tmp_path / "data"
    data.mkdir()
    train, regions = make_meme_set(48, seed=1, start_id=1)
    dev, dev_regions = make_meme_set(16, seed=2, start_id=1001)
    test_seen, ts_regions = make_meme_set(12, seed=3, start_id=2001, labelled=False)
    test_unseen, tu_regions = make_meme_set(12, seed=4, start_id=3001, labelled=False)
    for regs in (dev_regions, ts_regions, tu_regions):
        regions.update(regs)
    write_jsonl(data / "train.jsonl", train)
    write_jsonl(data / "train_clean.jsonl", train)
    write_jsonl(data / "dev_seen.jsonl", dev)
    write_jsonl(data / "traindev.jsonl", train + dev)
    write_jsonl(data / "pretrain.jsonl", [{k: v for k, v in m.items() if k != "label"} for m in train + dev])
    write_jsonl(data / "test_seen.jsonl", test_seen)
    write_jsonl(data / "test_unseen.jsonl", test_unseen)
    return data, regions


@pytest.fixture
def toy_store(toy_data: tuple[Path, dict[int, RegionRecord]], tmp_path: Path) -> Path:
    """The same regions in a real feature store on disk (float32, so values match the dict exactly)."""
    from memeguard.features.store import FeatureStoreWriter

    _, regions = toy_data
    path = tmp_path / "store"
    writer = FeatureStoreWriter(path, feature_dim=DIM, dtype="float32", meta={"extractor": "toy"})
    for record in regions.values():
        writer.add(record)
    writer.finalize()
    return path
