"""Aggregation the paper uses: a mean over families / domains with a 95% interval.

Every figure an evaluation reports is a `Figure`: the value, how many items it averages, and
the half-width of its normal 95% interval (1.96 std / sqrt(n), std with n - 1; DESIGN.md
section 12), so a reader never sees a number without its n.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

Z95 = 1.96


@dataclass(frozen=True)
class Figure:
    value: Optional[float]          # None: nothing to average (n = 0)
    n: int
    interval: Optional[float] = None   # half-width of the 95% interval; None for a single item

    def to_dict(self) -> dict:
        return {"value": self.value, "n": self.n, "interval95": self.interval}

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return "-"
        body = f"{self.value:.{digits}f}"
        if self.interval is not None:
            body += f" ± {self.interval:.{digits}f}"
        return f"{body} (n={self.n})"


def mean_interval(values: Iterable[Optional[float]]) -> Figure:
    """Mean of the finite values with 1.96 std / sqrt(n); None and NaN entries are not items."""
    items = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(items)
    if n == 0:
        return Figure(None, 0, None)
    mean = math.fsum(items) / n
    if n == 1:
        return Figure(mean, 1, None)
    variance = math.fsum((x - mean) ** 2 for x in items) / (n - 1)
    return Figure(mean, n, Z95 * math.sqrt(variance) / math.sqrt(n))


def single(value: Optional[float], n: int) -> Figure:
    """A figure that is one number computed over n items (a rate, a distance), no interval."""
    return Figure(None if value is None or not math.isfinite(value) else float(value), n, None)
