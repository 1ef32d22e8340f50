"""The batched path's parallel per-meme work: same results as one at a time, and really on several threads."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest
from serving_helpers import png_bytes, synthetic_image

from memeguard import threads
from memeguard.serving.batching import Job
from memeguard.threads import map_in_threads


def test_map_in_threads_keeps_order_and_values() -> None:
    items = list(range(37))
    assert map_in_threads(lambda k: k * k, items) == [k * k for k in items]
    assert map_in_threads(lambda k: k, []) == [] and map_in_threads(str, [5]) == ["5"]


def test_map_in_threads_raises_the_first_failing_items_error() -> None:
    def work(k: int) -> int:
        if k == 1:
            time.sleep(0.05)  # fails after item 2 has already failed
            raise ValueError("item 1")
        if k == 2:
            raise KeyError("item 2")
        return k

    with pytest.raises(ValueError, match="item 1"):
        map_in_threads(work, [0, 1, 2, 3])


@pytest.mark.skipif(threads.POOL_THREADS < 2, reason="one core: the pool runs the loop")
def test_map_in_threads_runs_items_at_the_same_time() -> None:
    barrier = threading.Barrier(2, timeout=10)  # passes only when two items are in flight at once
    assert map_in_threads(lambda k: barrier.wait() >= 0 and k, [0, 1]) == [0, 1]


def test_a_batch_scores_like_one_meme_at_a_time_and_a_bad_job_fails_alone(served, scorer) -> None:
    pytest.importorskip("fastapi")
    from memeguard.serving.http import Meme, score_jobs

    paths = [served.image(i) for i in served.ids[:4]]
    jobs = [
        Job([Meme(p.read_bytes(), t, f"job {k}")], 1, 1)
        for k, (p, t) in enumerate(zip(paths, served.texts[:4], strict=True))
    ]
    jobs.insert(2, Job([Meme(b"not an image", "x", "job bad")], 1, 1))
    jobs.append(Job([Meme(png_bytes(synthetic_image(9, (50, 40))), "two", "pair 0")] * 2, 1, 1))
    outcomes = score_jobs(scorer, jobs)
    bad = outcomes.pop(2)
    assert bad.status == 422 and bad.message.startswith("job bad:")
    alone = [scorer.score(path, text).proba for path, text in zip(paths, served.texts, strict=False)]
    assert max(alone) - min(alone) > 1e-4  # distinct memes: a mixed-up batch could not pass
    assert [outcome[0].proba for outcome in outcomes[:4]] == pytest.approx(alone, abs=1e-6)
    pair = outcomes[-1]
    pair_alone = scorer.score(png_bytes(synthetic_image(9, (50, 40))), "two").proba
    assert [r.proba for r in pair] == pytest.approx([pair_alone, pair_alone], abs=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_the_pools_work_in_a_forked_child() -> None:
    """A child forked after the pools started must not wait on threads that only exist in its parent."""
    from PIL import Image

    from memeguard.features.grid import GridExtractor

    images = [Image.new("RGB", (40, 30), (k * 40, 0, 0)) for k in range(3)]
    expected = [r.features.tobytes() for r in GridExtractor().extract(images, [0, 1, 2])["default"]]
    assert map_in_threads(abs, [-1, -2]) == [1, 2]  # both pools exist now
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(_child_work, (images,))
        assert result.get(timeout=60) == ([1, 2], expected)


def _child_work(images: list) -> tuple[list[int], list[bytes]]:
    from memeguard.features.grid import GridExtractor

    features = GridExtractor().extract(images, [0, 1, 2])["default"]
    return map_in_threads(abs, [-1, -2]), [r.features.tobytes() for r in features]
