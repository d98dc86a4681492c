"""A multi-record FASTA (a genome) scanned in parallel: its records, where each stretch of their
sequence lies in the file, and their runs of non-ACGT symbols.

The main process cuts the file into line-aligned blocks (`byte_blocks`); a worker reads one
block and reports its header lines, and for each stretch of sequence in it: the byte offset,
the number of bases (whitespace removed), the runs of symbols other than A/C/G/T (those long
enough to matter, and any touching the stretch's ends, which may continue in the next block)
and the first symbol the tokenizer does not know. The main process joins the blocks in file
order into `ScannedRecord`s, with the same records, line numbers and errors as
`readers.read_fasta`. A record's bases are read back later from any coordinate with
`read_bases`, by whichever worker needs them; no process ever holds a whole chromosome.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.byte_blocks import blocks, data_start, read_range
from data_pipeline.errors import InputFormatError

BLOCK_BYTES = 4 << 20
_MASK = bytes(46 if chr(i) in "ACGTacgt" else 78 for i in range(256))  # base '.', anything else 'N'

_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.split() splits ASCII text on


@dataclass
class Piece:
    """A stretch of one record's sequence that starts in one block."""

    offset: int  # byte offset in the file of its first line
    first: int  # record coordinate of its first base
    length: int  # bases


@dataclass
class ScannedRecord:
    name: str
    line: int  # header line
    source: str
    pieces: list = field(default_factory=list)
    length: int = 0
    runs: list = field(default_factory=list)  # (start, end) of non-ACGT runs >= min_run, in order
    unknown: tuple | None = None  # (record position, symbol) of the first unknown symbol

    @property
    def where(self) -> str:
        return f"{self.source} record {self.name!r} (line {self.line})"


def _bases(raw: bytes) -> tuple[bytes, str | None]:
    """The bases of lines of sequence, whitespace removed (as `"".join(line.split())` does):
    ASCII bytes, and for non-ASCII input also the text (each non-ASCII character is then one
    '?' in the bytes, so positions and lengths count characters)."""
    if raw.isascii():
        return raw.translate(None, _ASCII_WHITESPACE), None
    text = "".join(raw.decode("utf-8").split())
    return text.encode("ascii", "replace"), text


def scan_block(task) -> dict:
    """Worker side: headers and sequence stretches of bytes [start, end) (a line-aligned block)."""
    path, start, end, min_run, first_unknown, source = task
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    if not data.isascii():
        read_range(path, start, end, source)  # one error naming the line if it is not UTF-8
    events = []
    pos = 0
    while pos < len(data):
        if data.startswith(b">", pos):
            stop = data.find(b"\n", pos)
            stop = len(data) if stop < 0 else stop
            events.append(("header", data.count(b"\n", 0, pos), data[pos:stop].decode("utf-8").rstrip("\r")))
            pos = stop + 1
            continue
        stop = _next_header(data, pos)
        raw = data[pos:stop]
        blank_lines = len(raw) - len(raw.lstrip(_ASCII_WHITESPACE))
        line = data.count(b"\n", 0, pos + blank_lines)
        if not raw.translate(None, b"ACGTacgt\n"):  # bases and newlines only (most blocks): no copy
            events.append(("seq", line, start + pos, len(raw) - raw.count(b"\n"), [], None))
            pos = stop
            continue
        bases, text = _bases(raw)
        others = bases.translate(None, b"ACGTacgt")  # usually a few N-runs: cheap to check
        unknown = None
        if first_unknown is not None and others and first_unknown(others.decode("ascii", "replace")):
            unknown = first_unknown(text if text is not None else bases.decode("ascii"))
        runs = _runs(bases, min_run, others) if others and min_run is not None else []
        events.append(("seq", line, start + pos, len(bases), runs, unknown))
        pos = stop
    return {"newlines": data.count(b"\n"), "events": events}


def _next_header(data: bytes, pos: int) -> int:
    """Offset of the next line that starts with '>' after `pos`, or the end: '>' is rare in a
    genome, so a one-byte search (memchr) beats searching for b"\\n>" (~20x on 8 MB)."""
    at = data.find(b">", pos + 1)
    while at >= 0 and data[at - 1] != 10:
        at = data.find(b">", at + 1)
    return len(data) if at < 0 else at


def _runs(bases: bytes, min_run: int, others: bytes) -> list:
    """Non-ACGT runs that are long enough, or touch an end of the stretch (they may continue).
    `others` are the non-ACGT symbols: when they are all 'N' (assembly gaps) the runs are found
    in the bases themselves, else in a byte mask (bases '.', others 'N'); both with bytes.find,
    ~50x faster than a regex."""
    if not others.translate(None, b"N"):
        return _n_runs(bases, min_run)
    mask = bases.translate(_MASK)
    last = len(mask)
    runs, at = [], 0
    while at < last:
        start = at if mask[at] == 78 else (mask.find(b"N" * min_run, at) if min_run <= last - at else -1)
        if start < 0:
            break
        end = mask.find(b".", start)
        end = last if end < 0 else end
        runs.append((start, end))
        at = end
    if mask[-1] == 78 and (not runs or runs[-1][1] != last):
        runs.append((mask.rfind(b".") + 1, last))
    return runs


_N_STEPS = [b"N" * (1 << k) for k in range(16, -1, -1)]


def _n_runs(bases: bytes, min_run: int) -> list:
    """`_runs` where the only non-ACGT symbol is 'N': each run's start by memchr, its end by
    comparing ever shorter stretches of N (a 5 kbp gap costs ~15 comparisons)."""
    runs, at, last = [], 0, len(bases)
    while True:
        start = bases.find(b"N", at)
        if start < 0:
            return runs
        end = start + 1
        for step in _N_STEPS:
            while bases.startswith(step, end):
                end += len(step)
        if end - start >= min_run or start == 0 or end == last:
            runs.append((start, end))
        at = end


def scan_fasta(path: str | Path, pool, min_run: int | None = None, first_unknown=None, source: str | None = None,
               block_bytes: int | None = None, bar=None) -> list[ScannedRecord]:
    """Every record of a plain (seekable) FASTA file, scanned by `pool`'s workers.

    `first_unknown(bases) -> (index, symbol) | None` (picklable) finds symbols to refuse; runs are
    joined across blocks and kept when at least `min_run` long (None: runs are not looked for).
    `source` names the file in records and errors (the original of a decompressed copy)."""
    source = source or str(path)
    start = data_start(path)
    ranges = blocks(path, start, Path(path).stat().st_size, block_bytes or BLOCK_BYTES)
    tasks = ([(str(path), a, b, min_run, first_unknown, source)] for a, b in ranges)
    joiner = _Joiner(source, min_run)
    line = 1
    for (a, b), (result,) in zip(ranges, pool.map(scan_block, tasks)):
        joiner.add(result["events"], line)
        line += result["newlines"]
        if bar is not None:
            bar.update(b - a)
    return joiner.finish()


class _Joiner:
    """Blocks' events, in file order, into records: the checks and messages of read_fasta."""

    def __init__(self, source: str, min_run: int):
        self.source, self.min_run = source, min_run
        self.records: list[ScannedRecord] = []
        self.open_run: tuple | None = None  # (start, end) of a run touching the last stretch's end

    def add(self, events: list, first_line: int) -> None:
        for event in events:
            if event[0] == "header":
                self._header(first_line + event[1], event[2])
            else:
                self._stretch(first_line + event[1], *event[2:])

    def _header(self, number: int, text: str) -> None:
        self._close_record()
        name = text[1:].split(maxsplit=1)[0] if text[1:].strip() else ""
        if not name:
            raise InputFormatError(f"{self.source} line {number}: header without a name; "
                                   "write '>name' before each sequence")
        self.records.append(ScannedRecord(name, number, self.source))

    def _stretch(self, number: int, offset: int, length: int, runs: list, unknown) -> None:
        if not length:
            return
        if not self.records:
            raise InputFormatError(f"{self.source} line {number}: sequence before the first '>' "
                                   "header; this is not FASTA")
        record = self.records[-1]
        first = record.length
        record.pieces.append(Piece(offset, first, length))
        record.length += length
        if unknown is not None and record.unknown is None:
            record.unknown = (first + unknown[0], unknown[1])
        for run_start, run_end in runs:
            run_start, run_end = first + run_start, first + run_end
            if self.open_run is not None:
                if self.open_run[1] == run_start:  # the run goes on from the previous stretch
                    run_start = self.open_run[0]
                else:
                    self._keep(self.open_run)
                self.open_run = None
            if run_end == record.length:
                self.open_run = (run_start, run_end)
            else:
                self._keep((run_start, run_end))
        if self.open_run is not None and self.open_run[1] != record.length:
            self._keep(self.open_run)
            self.open_run = None

    def _keep(self, run: tuple) -> None:
        if run[1] - run[0] >= self.min_run:
            self.records[-1].runs.append(run)

    def _close_record(self) -> None:
        if self.open_run is not None:
            self._keep(self.open_run)
            self.open_run = None
        if self.records and not self.records[-1].length:
            record = self.records[-1]
            raise InputFormatError(f"{self.source} line {record.line}: record {record.name!r} has no sequence; "
                                   "remove the empty record")

    def finish(self) -> list[ScannedRecord]:
        self._close_record()
        if not self.records:
            raise InputFormatError(f"{self.source}: no FASTA records ('>' headers) found; check the file")
        return self.records


def read_bases(path: str | Path, piece: Piece, start: int, end: int) -> bytes:
    """Bases [start, end) of a record (record coordinates) as ASCII bytes (see `_bases`), reading
    from `piece` (which holds `start`) on; the caller guarantees `end` does not pass the record's end."""
    need = end - piece.first
    chunks, have = [], 0
    offset = piece.offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        while have < need:
            data = handle.read(max(1 << 16, (need - have) + (need - have) // 32 + 4096))
            if not data:
                raise InputFormatError(f"{path}: ended while reading bases {start}-{end}; the file changed "
                                       "during the build")
            if not data.isascii():  # whole lines, so a UTF-8 character is never cut
                data += handle.readline()
            chunk = _bases(data)[0]
            chunks.append(chunk)
            have += len(chunk)
    chunks[-1] = chunks[-1][:len(chunks[-1]) - (have - need)]  # one join, no copy of the whole again
    bases = b"".join(chunks)
    return bases if start == piece.first else bases[start - piece.first:]
