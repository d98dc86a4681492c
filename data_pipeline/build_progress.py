"""The progress display of the data builds: a live bar on a terminal, plain lines in a log file.

One function, so every build shows and logs progress the same way (`data_pipeline.progress`).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

from data_pipeline.progress import Progress


def build_progress(total: Optional[int], desc: str, unit: str, enabled: bool = True) -> Progress:
    """A tqdm-like display (update(n), set_postfix(...), close(), context manager) of `total`
    units (None when unknown) for a build step described by `desc`; nothing shown when not
    `enabled`."""
    return Progress(total=total, desc=desc, unit=unit, disable=not enabled)


def track(iterable: Iterable, desc: str, unit: str, total: Optional[int] = None, enabled: bool = True) -> Iterator:
    """Iterate `iterable` with a build progress display, closed when the iteration ends."""
    with build_progress(total, desc, unit, enabled=enabled) as progress:
        yield from progress.wrap(iterable)
