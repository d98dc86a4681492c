"""Progress for a terminal and for a log file: a live bar on a TTY, plain lines otherwise.

tqdm redraws its bar with carriage returns every 0.1 s; in a SLURM log file each redraw is kept,
and a multi-day run writes hundreds of MB of frames. `Progress` shows tqdm's live bar when its
stream is a terminal, and otherwise writes one plain line per `interval_s` (and one at the end)
with the same figures: count/total, percentage, elapsed, remaining, rate and the postfix.

The interval: the caller's value (e.g. train.progress_interval_s), else the environment variable
BIOXLSTM_PROGRESS_INTERVAL_S, else 60 s. Used by the trainer and, through
`data_pipeline.build_progress`, by the data builds (this module lives in the lowest layer that
both use).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional, TextIO

INTERVAL_ENV = "BIOXLSTM_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 60.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class ProgressIntervalError(ValueError):
    user_facing = True


def progress_interval_s(configured: Optional[float] = None) -> float:
    """The plain-line interval: `configured`, else $BIOXLSTM_PROGRESS_INTERVAL_S, else 60 s."""
    if configured is not None:
        value, where = configured, "the configured progress interval (train.progress_interval_s)"
    elif os.environ.get(INTERVAL_ENV):
        value, where = os.environ[INTERVAL_ENV], INTERVAL_ENV
    else:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ProgressIntervalError(f"{where}={value!r}: must be a number of seconds > 0, e.g. 60")
    return seconds


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # closed or not a real stream
        return False


class Progress:
    """A tqdm-like progress display: update(n), set_postfix(...), write(line), close(), and a
    context manager. `disable=True` shows nothing (e.g. on ranks other than 0)."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, interval_s: Optional[float] = None, file: Optional[TextIO] = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.unit_scale = unit == "B"            # bytes read as kB / MB / GB
        self.n = self.initial = initial
        self.disable = disable
        self.file = file
        self.interval_s = progress_interval_s(interval_s)
        self.postfix: dict = {}
        self._started = self._last_line = time.monotonic()
        self._lines_at_n = None                  # n of the last plain line
        self._closed = False
        self._bar = None
        if not disable and _is_terminal(self._stream()):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=self.unit_scale,
                             dynamic_ncols=True, file=self._stream())

    def _stream(self) -> TextIO:
        return self.file if self.file is not None else sys.stderr

    @property
    def live(self) -> bool:
        """Whether this is tqdm's live bar (a terminal) rather than plain lines."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.disable and time.monotonic() - self._last_line >= self.interval_s:
            self._write_line()

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=refresh)

    def write(self, message: str) -> None:
        """A message line that does not break the bar; printed even when the display is
        disabled, and to stdout unless a `file` was given, as tqdm.write does."""
        stream = self.file if self.file is not None else sys.stdout
        if self._bar is not None:
            self._bar.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    def format_line(self) -> str:
        """The plain line: the same figures as the live bar, without the bar itself."""
        from tqdm import tqdm

        postfix = ", ".join(f"{key}={value}" for key, value in self.postfix.items())
        return tqdm.format_meter(self.n, self.total, time.monotonic() - self._started, prefix=self.desc,
                                 unit=self.unit, unit_scale=self.unit_scale, initial=self.initial, postfix=postfix or None,
                                 bar_format=LINE_FORMAT if self.total else LINE_FORMAT_NO_TOTAL)

    def _write_line(self) -> None:
        print(self.format_line(), file=self._stream(), flush=True)
        self._last_line, self._lines_at_n = time.monotonic(), self.n

    def close(self) -> None:
        """End the display; in plain-line mode, one last line with the final figures."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disable and self._lines_at_n != self.n:
            self._write_line()

    def wrap(self, iterable: Iterable) -> Iterator:
        """Yield from `iterable`, counting one per item (tqdm(iterable) in this class's words)."""
        for item in iterable:
            yield item
            self.update(1)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
