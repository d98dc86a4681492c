"""Ordered, bounded parallel map for builds: results come back in input order, so the output
is the same for any number of worker processes; at most `2 * workers + 1` batches (or what the
caller says) are in flight, so memory does not grow with the input."""
from __future__ import annotations

import multiprocessing
from collections import deque
from functools import partial
from typing import Callable, Iterable, Iterator


def _apply(fn: Callable, batch: list) -> list:
    return [fn(item) for item in batch]


def batches(items: Iterable, size_of: Callable[[object], int], max_bytes: int = 4 << 20,
            max_items: int = 256) -> Iterator[list]:
    """Consecutive items grouped so one batch is worth a worker round trip."""
    batch, total = [], 0
    for item in items:
        batch.append(item)
        total += size_of(item)
        if total >= max_bytes or len(batch) >= max_items:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


class OrderedPool:
    """`map(fn, batches)` in `workers` processes (spawned: no inherited state), or inline for 1."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)

    def map(self, fn: Callable, batch_iter: Iterable[list], in_flight: int | None = None) -> Iterator[list]:
        """[fn(item) for item in batch] for every batch, in order."""
        return self.map_batches(partial(_apply, fn), batch_iter, in_flight)

    def map_batches(self, batch_fn: Callable, batch_iter: Iterable, in_flight: int | None = None) -> Iterator:
        """batch_fn(batch) for every batch, in order (a worker handles a whole batch at once);
        at most `in_flight` batches (default 2 * workers + 1) are handed out and not yet returned."""
        if self._pool is None:
            for batch in batch_iter:
                yield batch_fn(batch)
            return
        pending: deque = deque()
        limit = in_flight or 2 * self.workers + 1
        for batch in batch_iter:
            pending.append(self._pool.apply_async(batch_fn, (batch,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "OrderedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
