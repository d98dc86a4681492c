"""Ordered, bounded parallel map for builds: results come back in input order, so the output
is the same for any number of worker processes; at most `2 * workers + 1` batches (or what the
caller says) are in flight, so memory does not grow with the input."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Callable, Iterable, Iterator

from data_pipeline.errors import WorkerDiedError


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
    """`map(fn, batches)` in `workers` processes (spawned: no inherited state), or inline for 1.

    A concurrent.futures pool, not multiprocessing.Pool: when a worker dies (killed, out of
    memory) the build stops with one error instead of waiting forever for its result."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))

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
            pending.append(self._pool.submit(batch_fn, batch))
            if len(pending) >= limit:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())

    def close(self, finished: bool = True) -> None:
        """Shut the workers down; when the build did not finish, stop them at once (a task still
        running would go on writing into a work folder that is being removed)."""
        if self._pool is None:
            return
        if not finished:
            for process in list(getattr(self._pool, "_processes", {}).values()):  # no public kill before 3.14
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> "OrderedPool":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(finished=exc_type is None)


def _exit_with_parent(parent: int) -> None:
    """Worker side: leave when the build's process is gone (killed with SIGKILL, nothing told the
    workers); a concurrent.futures worker would otherwise wait for work forever."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _result(future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise WorkerDiedError("a build worker process died before finishing its task (killed, or out of "
                              "memory? check `dmesg`); nothing was finished: rerun the same command, "
                              "finished parts are kept, or use fewer --workers") from None
