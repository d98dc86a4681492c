"""Byte ranges of an input file that worker processes read themselves.

A corpus-scale build is only parallel if the main process does not read the input: it cuts
each file into blocks that start right after a marker (a newline, or a newline before a FASTA
'>'), hands the (path, start, end) ranges to the workers, and each worker reads and decodes
its own range. Finding a boundary reads at most a few KiB around each nominal cut, so the
main process touches a negligible share of the bytes. Gzip inputs cannot be read from an
offset; `seekable_copy` decompresses them once, streamed, into the build's work folder.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

from data_pipeline.errors import InputFormatError
from data_pipeline.readers import _input_errors

BOM = b"\xef\xbb\xbf"
_PROBE = 1 << 12  # bytes read per look for a marker; lines are short, so one look almost always finds it


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def seekable_copy(path: str | Path, work_dir: Path) -> Path:
    """`path` itself if it is plain; else its decompressed copy in `work_dir` (reused when a
    finished copy is there: written under a temporary name and renamed when complete)."""
    path = Path(path)
    if not is_gzip(path):
        return path
    work_dir.mkdir(parents=True, exist_ok=True)
    stat = path.stat()
    target = work_dir / f"{path.name}.{stat.st_size}.{stat.st_mtime_ns}.plain"
    if target.exists():
        return target
    temp = target.with_name(f".{target.name}.partial")
    with gzip.open(path, "rb") as source, open(temp, "wb") as out:
        while True:
            with _input_errors(path):  # a damaged input; a full disk stays an OSError of the build
                block = source.read(1 << 22)
            if not block:
                break
            out.write(block)
    os.replace(temp, target)
    return target


def data_start(path: str | Path) -> int:
    """Offset of the first byte after an optional UTF-8 byte-order mark."""
    with open(path, "rb") as handle:
        return len(BOM) if handle.read(3) == BOM else 0


def blocks(path: str | Path, start: int, end: int, block_bytes: int, marker: bytes = b"\n") -> list[tuple[int, int]]:
    """Consecutive (start, end) ranges covering [start, end): every range but the first begins
    right after an occurrence of `marker` (so with b"\\n" at a line start, with b"\\n>" at a FASTA
    header's '>'), and is about `block_bytes` long; a range is never empty."""
    cuts = [start]
    with open(path, "rb") as handle:
        nominal = start + block_bytes
        while nominal < end:
            cut = _next_cut(handle, nominal, end, marker)
            if cut is None:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
            nominal = max(cut, nominal) + block_bytes
    cuts.append(end)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _next_cut(handle, position: int, end: int, marker: bytes) -> int | None:
    """The first offset >= `position` and < `end` that directly follows a marker's first byte
    (with b"\\n>": the offset of the '>'), or None."""
    at = position - 1
    while at < end:
        handle.seek(at)
        window = handle.read(min(_PROBE, end - at) + len(marker) - 1)
        found = window.find(marker)
        if found >= 0:
            return at + found + 1 if at + found + 1 < end else None
        if len(window) < len(marker):
            return None
        at += len(window) - len(marker) + 1
    return None


def read_range(path: str | Path, start: int, end: int, where: str | None = None) -> str:
    """The text of bytes [start, end) of `path`; a decoding error names the file and line."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = line_of(path, start + err.start)
        raise InputFormatError(f"{where or path} line {line}: not UTF-8 text ({err.reason}); "
                               "pass a plain or gzipped text file") from None


def line_of(path: str | Path, offset: int) -> int:
    """1-based line number of byte `offset`: only for error messages (reads the file up to it)."""
    lines = 1
    with open(path, "rb") as handle:
        remaining = offset
        while remaining > 0:
            data = handle.read(min(1 << 22, remaining))
            if not data:
                break
            lines += data.count(b"\n")
            remaining -= len(data)
    return lines
