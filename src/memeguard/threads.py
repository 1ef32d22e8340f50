"""Process-wide thread pools for per-item work that releases the GIL (PIL decoding, numpy and scipy).

One pool per purpose ("grid", "decode", ...), created on first use so importing starts no threads. Separate
pools keep a job of one purpose from waiting on a pool its own caller occupies (decoding in a batch, then
grid features of the same batch). One thread per core, at most 4: more threads only switch between each
other on the same cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

POOL_THREADS = min(
    4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools() -> None:
    """In a forked child the pools' threads do not exist: start new pools there rather than hang on them."""
    global _pools, _pools_lock
    _pools, _pools_lock = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def map_in_threads(function: Callable[[T], R], items: Sequence[T], purpose: str = "batch") -> list[R]:
    """``[function(item) for item in items]``, spread over the ``purpose`` pool when there are several;
    the results and any exception are exactly those of the loop (the first failing item's exception)."""
    if len(items) < 2 or POOL_THREADS < 2:
        return [function(item) for item in items]
    with _pools_lock:
        pool = _pools.get(purpose)
        if pool is None:
            pool = _pools[purpose] = ThreadPoolExecutor(
                POOL_THREADS, thread_name_prefix=f"memeguard-{purpose}"
            )
    return list(pool.map(function, items))
