"""Micro-batching: concurrent requests share one extractor + model pass.

One meme through a small model costs mostly fixed overhead (Python, kernel launches), so 32 memes in one
pass cost little more than one. Requests put a job (their memes) on a queue and await its future; each of
``workers`` loops takes the oldest job, then adds more while they fit in ``max_batch`` memes and the pixel
budget, waiting at most ``max_wait_s`` for them, and scores the batch in a thread (images are decoded
there too, so at most ``workers`` batches of decoded pixels exist at once). Under load the queue fills
while a batch runs, so batches grow with load; a full queue is refused at once (503 + ``Retry-After``)
rather than letting latency grow without bound. ``close`` stops intake and lets the workers drain it.

Inside a batch, per-meme work that releases the GIL (image decoding; the grid extractor does the same for
its features) runs on every core through ``map_in_threads``: batching is what lets one request's memes and
its neighbours' share the cores, where one meme at a time can only use one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class _Stop:
    """Put on the queue once per worker at shutdown (behind every job queued before it)."""


_STOP = _Stop()


class QueueFull(Exception):
    """The queue holds as many memes or bytes as it may; the client should retry later."""


class ShuttingDown(Exception):
    """The service is draining its queue for shutdown and takes no new work."""


@dataclass
class Job:
    """One request's memes: ``items`` as the scoring function wants them, with their cost."""

    items: Sequence[Any]
    pixels: int
    nbytes: int
    future: asyncio.Future[list[Any]] = field(repr=False, default=None)  # type: ignore[assignment]


class MicroBatcher:
    """Batches jobs for ``score_jobs(jobs) -> [results or exception, per job]`` (run in a thread)."""

    def __init__(
        self,
        score_jobs: Callable[[list[Job]], list[Any]],
        max_batch: int,
        max_batch_pixels: int,
        max_wait_s: float,
        max_queue: int,
        max_queue_bytes: int,
        workers: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.score_jobs = score_jobs
        self.max_batch, self.max_batch_pixels, self.max_wait_s = max_batch, max_batch_pixels, max_wait_s
        self.max_queue, self.max_queue_bytes, self.workers = max_queue, max_queue_bytes, workers
        self.on_batch = on_batch or (lambda size: None)
        self.queued_memes = 0
        self.queued_bytes = 0
        self.closing = False
        self._queue: asyncio.Queue[Job | _Stop] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self.closing

    def start(self) -> None:
        """Start the worker loops on the running event loop (done lazily by the first ``submit``)."""
        if self._tasks:
            return
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def submit(self, job: Job) -> list[Any]:
        """Queue ``job`` and wait for its results; QueueFull or ShuttingDown when it cannot be taken."""
        if self.closing:
            raise ShuttingDown("the service is shutting down")
        memes, nbytes = self.queued_memes + len(job.items), self.queued_bytes + job.nbytes
        if self.queued_memes and (memes > self.max_queue or nbytes > self.max_queue_bytes):
            raise QueueFull(f"the queue is full ({self.queued_memes} memes waiting)")
        self.start()
        assert self._queue is not None
        job.future = asyncio.get_running_loop().create_future()
        self.queued_memes, self.queued_bytes = memes, nbytes
        self._queue.put_nowait(job)
        return await job.future

    async def close(self) -> None:
        """Refuse new jobs, let the workers finish every queued one, then stop them."""
        self.closing = True
        if not self._tasks:
            return
        assert self._queue is not None
        for _ in self._tasks:
            self._queue.put_nowait(_STOP)
        await asyncio.gather(*self._tasks)

    async def _work(self) -> None:
        carried: Job | _Stop | None = None
        while True:
            head = carried if carried is not None else await self._next(None)
            if head is _STOP:
                return
            batch, carried = await self._collect(head)
            await self._run(batch)
            if carried is _STOP:
                return

    async def _next(self, timeout: float | None) -> Job | _Stop:
        assert self._queue is not None
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _collect(self, head: Job) -> tuple[list[Job], Job | _Stop | None]:
        """``head`` + the jobs arriving within ``max_wait_s`` that fit; the first that does not is carried."""
        batch, memes, pixels = [head], len(head.items), head.pixels
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while memes < self.max_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await self._next(remaining)  # type: ignore[union-attr]
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if (
                job is _STOP
                or memes + len(job.items) > self.max_batch
                or pixels + job.pixels > self.max_batch_pixels
            ):
                return batch, job
            batch.append(job)
            memes, pixels = memes + len(job.items), pixels + job.pixels
        return batch, None

    async def _run(self, batch: list[Job]) -> None:
        for job in batch:
            self.queued_memes -= len(job.items)
            self.queued_bytes -= job.nbytes
        self.on_batch(sum(len(job.items) for job in batch))
        try:
            outcomes = await asyncio.to_thread(self.score_jobs, batch)
        except Exception as exc:  # noqa: BLE001 - a bug in scoring must fail these requests, not the worker
            outcomes = [exc] * len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():  # the client went away
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
