"""The one place data builds make a progress display (so its look changes in one place).

`build_progress(total, desc, unit)` returns an object with `update(n)` and `close()`.
"""
from __future__ import annotations


def build_progress(total: int | None, desc: str, unit: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=not enabled,
                mininterval=1.0)
