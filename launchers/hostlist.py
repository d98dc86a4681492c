"""Expand SLURM hostlist expressions (SLURM_JOB_NODELIST) into host names.

Rank 0's host becomes MASTER_ADDR for every task, so every task must expand the list the same
way without asking the controller. Handles what SLURM writes: `gpu[001-004,007]`,
`node-a[1-2],node-b3`, several bracket groups in one name (`r[1-2]n[01-02]`, expanded as a
product, leftmost group slowest), zero padding taken from the lower bound as SLURM does.
`scontrol show hostnames` is used only as a fallback for forms this parser does not know.
"""
from __future__ import annotations

import shutil
import subprocess

from launchers.errors import HostlistError


def expand_hostlist(nodelist: str) -> list[str]:
    """`gpu[001-003],cpu7` -> ['gpu001', 'gpu002', 'gpu003', 'cpu7'] (order kept)."""
    text = nodelist.strip()
    if not text:
        raise HostlistError("SLURM_JOB_NODELIST is empty: the task was not started by SLURM with an allocation")
    hosts: list[str] = []
    for item in _split_top_level(text, nodelist):
        hosts.extend(_expand_item(item, nodelist))
    return hosts


def resolve_hostnames(nodelist: str) -> list[str]:
    """Expand with our parser; on a form it rejects, ask `scontrol show hostnames` if present."""
    try:
        return expand_hostlist(nodelist)
    except HostlistError:
        scontrol = shutil.which("scontrol")
        if scontrol is None:
            raise
        result = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                timeout=60, check=False)
        hosts = result.stdout.split()
        if result.returncode != 0 or not hosts:
            raise
        return hosts


def _split_top_level(text: str, original: str) -> list[str]:
    """Split on commas outside brackets."""
    items, depth, start = [], 0, 0
    for pos, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"SLURM_JOB_NODELIST {original!r}: nested '[' at position {pos}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"SLURM_JOB_NODELIST {original!r}: ']' without '[' at position {pos}")
        elif char == "," and depth == 0:
            items.append(text[start:pos])
            start = pos + 1
    if depth != 0:
        raise HostlistError(f"SLURM_JOB_NODELIST {original!r}: '[' is never closed")
    items.append(text[start:])
    for item in items:
        if not item.strip():
            raise HostlistError(f"SLURM_JOB_NODELIST {original!r}: empty host name between commas")
    return [item.strip() for item in items]


def _expand_item(item: str, original: str) -> list[str]:
    """One host name with zero or more bracket groups -> product of the groups."""
    names = [""]
    pos = 0
    while pos < len(item):
        open_pos = item.find("[", pos)
        if open_pos == -1:
            names = [name + item[pos:] for name in names]
            break
        close_pos = item.index("]", open_pos)
        literal = item[pos:open_pos]
        suffixes = _expand_ranges(item[open_pos + 1:close_pos], original)
        names = [name + literal + suffix for name in names for suffix in suffixes]
        pos = close_pos + 1
    return names


def _expand_ranges(ranges: str, original: str) -> list[str]:
    """`001-003,7` -> ['001', '002', '003', '7']."""
    values: list[str] = []
    for part in ranges.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise HostlistError(f"SLURM_JOB_NODELIST {original!r}: range {part!r} is not N or N-M")
        if not sep:
            values.append(low)
            continue
        if int(high) < int(low):
            raise HostlistError(f"SLURM_JOB_NODELIST {original!r}: range {part!r} runs backwards")
        width = len(low)
        values.extend(f"{number:0{width}d}" for number in range(int(low), int(high) + 1))
    return values
