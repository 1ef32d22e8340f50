"""Memes + region features -> model batches, with a data order that depends only on (seed, epoch).

The order of epoch ``e`` is ``DistributedSampler(seed=seed).set_epoch(e)``'s permutation, for one process as
for many, so that resuming at (epoch, batch) reproduces the uninterrupted run exactly and DDP ranks see
disjoint shards. The region source is anything Mapping-like (``FeatureStore`` or a plain
``dict[int, RegionRecord]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError, FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.names import split_file


class RegionSource(Protocol):
    def __getitem__(self, meme_id: int) -> RegionRecord: ...

    def __contains__(self, meme_id: object) -> bool: ...


def open_regions(features: str | os.PathLike[str] | RegionSource) -> RegionSource:
    """A feature store path -> the opened store; a Mapping-like source is returned as it is."""
    if not isinstance(features, (str, os.PathLike)):
        return features
    path = Path(features)
    if not path.exists():
        raise ConfigError(f"{path}: feature store not found")
    try:
        from memeguard.features.store import FeatureStore
    except ModuleNotFoundError as exc:  # pragma: no cover - the store ships with the package
        raise ConfigError(f"{path}: cannot open feature stores ({exc})") from exc
    try:
        return FeatureStore.open(path)
    except FeatureStoreError as exc:
        raise ConfigError(f"{path}: not a usable feature store: {exc}") from exc


def region_feature_dim(source: RegionSource, memes: Sequence[Meme]) -> int:
    """The store's declared dimension, else the dimension of the first meme's record."""
    dim = getattr(source, "feature_dim", None)
    if dim is not None:
        return int(dim)
    if not memes:
        raise ConfigError("cannot tell the feature dimension of an empty split")
    return source[memes[0].id].feature_dim


def read_memes(data_dir: str | os.PathLike[str], split: str, limit: int | None = None) -> list[Meme]:
    """A split's memes (first ``limit`` only, vilio's ``--topk``); a missing split is a ConfigError."""
    from memeguard.data.hm import available_splits, read_split, split_path

    if not split_path(data_dir, split).is_file():
        present = available_splits(data_dir) if Path(data_dir).is_dir() else []
        shown = ", ".join(present) or "none"
        raise ConfigError(f"{data_dir}: no split {split!r} ({split_file(split)}); present: {shown}")
    memes = read_split(data_dir, split)
    if not memes:
        raise ConfigError(f"{data_dir}: split {split!r} is empty")
    return memes[:limit] if limit else memes


def require_labels(memes: Sequence[Meme], split: str) -> None:
    unlabeled = [m.id for m in memes if m.label is None]
    if unlabeled:
        raise ConfigError(
            f"split {split!r} has {len(unlabeled)} memes without a label (e.g. id {unlabeled[0]}); "
            "training and evaluation need labels"
        )


def require_regions(memes: Sequence[Meme], source: RegionSource, split: str, store_name: str) -> None:
    missing = [m.id for m in memes if m.id not in source]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10])
        raise ConfigError(
            f"{store_name}: {len(missing)} memes of split {split!r} have no region features "
            f"(ids {shown}{' ...' if len(missing) > 10 else ''})"
        )


def verify_regions(source: RegionSource, memes: Sequence[Meme]) -> None:
    """Refuse NaN/inf in the features the run will read, naming the store and the meme id, before the
    first update (a store checks itself in one vectorised pass; an in-memory source is the caller's)."""
    verify = getattr(source, "verify", None)
    if verify is not None:
        verify(sorted({meme.id for meme in memes}))


class MemeRegionDataset(Dataset):
    """(meme, region record) pairs; records are read lazily from the (memory-mapped) store."""

    def __init__(self, memes: Sequence[Meme], regions: RegionSource) -> None:
        self.memes = list(memes)
        self.regions = regions

    def __len__(self) -> int:
        return len(self.memes)

    def __getitem__(self, index: int) -> tuple[Meme, RegionRecord]:
        meme = self.memes[index]
        return meme, self.regions[meme.id]


class Collator:
    """Runs the model's processor outside ``forward`` (so it runs in DataLoader workers on GPU machines)."""

    def __init__(self, processor: Any, zero_visual: bool = False) -> None:
        self.processor = processor
        self.zero_visual = zero_visual

    def __call__(self, items: Sequence[tuple[Meme, RegionRecord]]) -> dict[str, torch.Tensor]:
        batch = self.processor([m for m, _ in items], [r for _, r in items])
        if self.zero_visual:
            zero_visual_input(batch)
        return batch


def zero_visual_input(batch: dict[str, torch.Tensor]) -> None:
    """The text-only control: every visual feature and box coordinate set to 0 (masks kept); the CLIP
    heads' image vector too."""
    for key in ("visual_feats", "visual_boxes", "image_feats"):
        if key in batch:
            batch[key] = torch.zeros_like(batch[key])


def epoch_batches(
    num_items: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This rank's batches (lists of dataset indices) for ``epoch``; the last batch may be short."""
    sampler = DistributedSampler(
        range(num_items), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def make_loader(
    dataset: Dataset, batches: Sequence[Sequence[int]], collate: Collator, num_workers: int = 0
) -> DataLoader:
    """A loader over precomputed batches. Its own generator keeps it from drawing on torch's global RNG
    (which dropout uses), so evaluations and loader restarts do not shift the training randomness."""
    return DataLoader(
        dataset,
        batch_sampler=[list(b) for b in batches],
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )


def iterate_eval(
    dataset: Dataset, batch_size: int, collate: Collator, num_workers: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    yield from make_loader(dataset, batches, collate, num_workers)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }
