"""Run an extractor over every image of a Hateful Memes folder into feature store(s).

Resumable by construction: each variant's store is opened with a :class:`FeatureStoreWriter`, which
recovers whatever a killed run left behind; only images missing from some store are decoded again,
and a record is only added to the stores that lack it, so no image is ever stored twice.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memeguard.data.meme import Meme
from memeguard.errors import DataError, FeatureStoreError
from memeguard.features.extractor import Extractor
from memeguard.features.store import FeatureStoreWriter

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def unique_memes(data_dir: str | os.PathLike[str], splits: Sequence[str] | None = None) -> list[Meme]:
    """Every meme of the chosen (default: all official) splits, each id once, in first-seen order."""
    from memeguard.data.hm import load_dataset

    dataset = load_dataset(data_dir, tuple(splits) if splits else None)
    seen: dict[int, tuple[str, Meme]] = {}
    for split, memes in dataset.items():
        for meme in memes:
            if meme.id in seen and seen[meme.id][1].img != meme.img:
                first_split, first = seen[meme.id]
                raise DataError(
                    f"meme id {meme.id} points at {first.img!r} in {first_split} "
                    f"but at {meme.img!r} in {split}"
                )
            seen.setdefault(meme.id, (split, meme))
    return [meme for _, meme in seen.values()]


def store_paths(out: str | os.PathLike[str], variants: Sequence[str]) -> dict[str, Path]:
    """One variant -> OUT is the store; several -> OUT/<variant> each."""
    out = Path(out)
    if not variants:
        raise FeatureStoreError("extractor declares no variants")
    if len(variants) == 1:
        return {variants[0]: out}
    return {variant: out / variant for variant in variants}


@contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def extract_features(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    extractor: Extractor,
    batch_size: int | None = None,
    splits: Sequence[str] | None = None,
    progress: bool = True,
    dtype: str = "float16",
) -> dict[str, Path]:
    """Extract every (deduplicated) meme image once; returns {variant: finalised store path}.

    A full disk (ENOSPC) stops the run as one line: the store stays resumable (what an interrupted
    write left is recovered on reopening, as after a kill), so the same command continues it.
    """
    memes = unique_memes(data_dir, splits)
    paths = store_paths(out, extractor.variants())
    batch_size = int(batch_size or getattr(extractor, "batch_size", 8) or 8)
    base_meta = {key: value for key, value in extractor.meta().items() if key != "store"}
    base_meta.setdefault("extractor", extractor.name)
    # Facts about the whole dataset an extractor may record (CLIP: captions cut to 77 tokens); asked
    # about every meme up front, so the meta of a resumed store is the same as an uninterrupted one's.
    dataset_meta = getattr(extractor, "dataset_meta", None)
    if callable(dataset_meta):
        base_meta.update(dataset_meta([meme.text for meme in memes]))
    writers: dict[str, FeatureStoreWriter] = {}
    try:
        with ExitStack() as stack:
            for variant, path in paths.items():
                meta = {**base_meta, "variant": variant, "dataset": str(Path(data_dir).resolve())}
                writer = FeatureStoreWriter(path, dtype=dtype, meta=meta)
                stack.callback(writer.close)  # on error: release, leaving a resumable store
                writers[variant] = writer
            _extract_missing(data_dir, memes, extractor, writers, batch_size, progress)
            for writer in writers.values():
                writer.finalize()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = min((len(writer) for writer in writers.values()), default=0)
        raise FeatureStoreError(
            f"disk full while writing {out}; the {kept} memes written are kept; "
            "free space and rerun the same command to resume"
        ) from None
    return paths


def _extract_missing(
    data_dir: str | os.PathLike[str],
    memes: list[Meme],
    extractor: Extractor,
    writers: dict[str, FeatureStoreWriter],
    batch_size: int,
    progress: bool,
) -> None:
    """Extract, in batches, the memes some store lacks; each record goes only to the stores lacking it."""
    from memeguard.data.hm import image_path
    from memeguard.data.images import open_image
    from memeguard.threads import map_in_threads

    def decode(meme: Meme) -> Image.Image:
        return open_image(image_path(data_dir, meme), context=f"meme id {meme.id}")

    todo = [meme for meme in memes if any(meme.id not in writer for writer in writers.values())]
    with _progress(progress and bool(todo), len(todo), f"{extractor.name} features") as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            # PIL decodes without the GIL: a batch is decoded on every core (the same images, in order;
            # the first bad image's error, as in a loop)
            images = map_in_threads(decode, batch, purpose="decode")
            results = extractor.extract(images, [m.id for m in batch], [m.text for m in batch])
            _store_batch(results, batch, writers)
            if advance is not None:
                advance(len(batch))


def _store_batch(
    results: dict[str, list[Any]], batch: list[Meme], writers: dict[str, FeatureStoreWriter]
) -> None:
    expected = [meme.id for meme in batch]
    for variant, writer in writers.items():
        if variant not in results:
            raise FeatureStoreError(f"extractor returned no records for variant {variant!r}")
        records = results[variant]
        if [int(record.meme_id) for record in records] != expected:
            raise FeatureStoreError(f"extractor returned records for the wrong ids in variant {variant!r}")
        for record in records:
            writer.add(record)  # a no-op for ids this variant already has
