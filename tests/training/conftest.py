"""Fixtures for the training tests: the XOR meme set of `xor_memes` as a data dir and as a feature store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from xor_memes import DIM, make_meme_set, write_jsonl

from memeguard.features.record import RegionRecord


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


@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores run several times faster single-threaded (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
