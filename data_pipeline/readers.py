"""Readers for raw sequence files: FASTA (plain or .gz), A3M and Stockholm alignments.

Each reader yields `SequenceRecord`s and raises `InputFormatError` naming the file and line
for malformed input, so a builder never writes a shard from a half-understood file.
"""
from __future__ import annotations

import gzip
import io
import string
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_pipeline.errors import InputFormatError


@dataclass(frozen=True)
class SequenceRecord:
    """One named sequence; `name` is the first word of the header, `line` where it starts."""

    name: str
    sequence: str
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source} record {self.name!r} (line {self.line})"


# Upper-casing ASCII only: str.upper() would turn e.g. 'ı' into 'I' or 'ﬀ' into 'FF' and let
# a non-ASCII character pass as residues.
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def ascii_upper(text: str) -> str:
    return text.translate(_ASCII_UPPER)


def require_files(paths) -> None:
    """Fail before any work if an input is missing (builders stat inputs for progress bars)."""
    for path in paths:
        if not Path(path).is_file():
            raise InputFormatError(f"{path}: no such file; check the path")


@contextmanager
def open_text(path: str | Path) -> Iterator[io.TextIOBase]:
    """`with open_text(path) as handle`: text of a plain or gzip file (detected by magic bytes,
    not by extension), UTF-8 with an optional byte-order mark. Every way opening or reading it
    fails (missing, truncated or corrupt gzip, not UTF-8, I/O error) is one InputFormatError
    naming the file, also when it happens while the caller reads."""
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"{path}: no such file; check the path")
    with _input_errors(path):
        with open(path, "rb") as handle:
            magic = handle.read(2)
        if magic == b"\x1f\x8b":
            text = io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors="strict")
        else:
            text = open(path, encoding="utf-8-sig")
        with text:
            yield text


@contextmanager
def _input_errors(path: Path):
    """Turn the ways reading a text input fails into one InputFormatError naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise InputFormatError(f"{path}: truncated or corrupt gzip ({err}); re-download the file") from None
    except UnicodeDecodeError as err:
        raise InputFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                               "pass a plain or gzipped text file") from None
    except OSError as err:
        raise InputFormatError(f"{path}: cannot read ({err.strerror or err}); check the file") from None


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip("\r\n")


def read_fasta(path: str | Path, alignment: bool = False) -> Iterator[SequenceRecord]:
    """Multi-record FASTA. With `alignment=True` (A3M), insertions are upper-cased and gaps removed."""
    source = str(path)
    name = None
    start = 0
    chunks: list[str] = []
    seen_any = False

    def finish() -> SequenceRecord:
        sequence = "".join(chunks)
        if alignment:
            sequence = ascii_upper(sequence.replace("-", "").replace(".", ""))
        if not sequence:
            raise InputFormatError(f"{source} line {start}: record {name!r} has no sequence; "
                                   "remove the empty record")
        return SequenceRecord(name, sequence, source, start)

    for number, line in _lines(path):
        if line.startswith(">"):
            if name is not None:
                yield finish()
            name = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
            if not name:
                raise InputFormatError(f"{source} line {number}: header without a name; "
                                       "write '>name' before each sequence")
            start, chunks, seen_any = number, [], True
        elif line.startswith("#") and alignment and name is None:
            continue  # A3M files may open with a '#' comment line
        elif line.strip():
            if name is None:
                raise InputFormatError(f"{source} line {number}: sequence before the first '>' "
                                       "header; this is not FASTA")
            chunks.append("".join(line.split()))
    if name is not None:
        yield finish()
    if not seen_any:
        raise InputFormatError(f"{source}: no FASTA records ('>' headers) found; check the file")


def read_stockholm(path: str | Path) -> Iterator[SequenceRecord]:
    """Stockholm alignment: sequences may span several blocks; gaps removed, upper-cased."""
    source = str(path)
    order: list[str] = []
    pieces: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    header_seen = False
    for number, line in _lines(path):
        if line.startswith("# STOCKHOLM"):
            header_seen = True
            continue
        if not line.strip() or line.startswith("#") or line.startswith("//"):
            continue
        if not header_seen:
            raise InputFormatError(f"{source} line {number}: missing '# STOCKHOLM 1.0' header")
        parts = line.split()
        if len(parts) != 2:
            raise InputFormatError(f"{source} line {number}: expected 'name sequence', got "
                                   f"{len(parts)} fields")
        name, aligned = parts
        if name not in pieces:
            order.append(name)
            pieces[name] = []
            first_line[name] = number
        pieces[name].append(aligned)
    if not order:
        raise InputFormatError(f"{source}: no sequences in Stockholm file")
    for name in order:
        sequence = ascii_upper("".join(pieces[name]).replace("-", "").replace(".", ""))
        if not sequence:
            raise InputFormatError(f"{source} line {first_line[name]}: sequence {name!r} is all gaps")
        yield SequenceRecord(name, sequence, source, first_line[name])


def read_family_file(path: str | Path) -> list[SequenceRecord]:
    """All sequences of one protein family file, format chosen by extension."""
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".sto", ".stockholm", ".stk"):
        return list(read_stockholm(path))
    if suffix == ".a3m":
        return list(read_fasta(path, alignment=True))
    return list(read_fasta(path))


def accession_keys(name: str) -> list[str]:
    """Names a cluster table may use for a FASTA header word: `sp|P12345|X_HUMAN` -> P12345 too."""
    keys = [name]
    parts = name.split("|")
    if len(parts) >= 2 and parts[1]:
        keys.append(parts[1])
    return keys


_WHITESPACE = " \t\r\v\f"


def fasta_records(path: str | Path, block_chars: int = 1 << 22) -> Iterator[tuple[str, str, int]]:
    """(name, sequence, header line) of every record, for files of many short records (proteins):
    whole blocks are split at line-initial '>' with str methods, a few microseconds per record
    instead of a Python loop per line. The same errors as `read_fasta` (no alignment handling)."""
    source = str(path)
    with open_text(path) as handle:
        pending, line, seen = None, 1, False
        while True:
            block = handle.read(block_chars)
            if block and not block.endswith("\n"):
                block += handle.readline()
            if pending is None:  # before the first header: only blank lines allowed
                text, line = skip_to_first_header(block, source, line)
                if not text:
                    if not block:
                        break
                    continue
                pending = ""
                block = text
            chunks = (pending + block).split("\n>")
            pending = chunks.pop() if block else None
            for chunk in chunks:
                seen = True
                yield _fasta_record(chunk, source, line)
                line += chunk.count("\n") + 1
            if not block:
                break
    if not seen:
        raise InputFormatError(f"{source}: no FASTA records ('>' headers) found; check the file")


def skip_to_first_header(text: str, source: str, line: int) -> tuple[str, int]:
    """`text` from its first '>' on and the line number there (`line` is that of its start); only
    blank lines may come before the first header."""
    while text and not text.startswith(">"):
        head, newline, text = text.partition("\n")
        if head.strip():
            raise InputFormatError(f"{source} line {line}: sequence before the first '>' header; this is not FASTA")
        line += bool(newline)
    return text, line


def _fasta_record(chunk: str, source: str, line: int) -> tuple[str, str, int]:
    header, _, body = chunk.partition("\n")
    header = header[1:] if header.startswith(">") else header
    name = header.split(maxsplit=1)[0] if header.strip() else ""
    if not name:
        raise InputFormatError(f"{source} line {line}: header without a name; write '>name' before each sequence")
    sequence = body.replace("\n", "")
    if any(c in sequence for c in _WHITESPACE):
        sequence = "".join(sequence.split())
    if not sequence:
        raise InputFormatError(f"{source} line {line}: record {name!r} has no sequence; remove the empty record")
    return name, sequence, line


BED_SPLITS = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class BedInterval:
    chrom: str
    start: int
    end: int
    split: str  # train / validation / test
    line: int


def read_bed(path: str | Path) -> dict[str, list[BedInterval]]:
    """`chrom<TAB>start<TAB>end<TAB>split` lines (0-based, end exclusive; split train / valid /
    test, the DNA-xLSTM and Caduceus human-sequences.bed layout) -> intervals per chromosome,
    sorted by (start, end). Small: one entry per interval, not per base."""
    intervals: dict[str, list[BedInterval]] = {}
    for number, line in _lines(path):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise InputFormatError(f"{path} line {number}: {len(fields)} tab-separated columns, expected 4 "
                                   "(chrom, start, end, split)")
        chrom, start, end, split = (f.strip() for f in fields)
        if split not in BED_SPLITS:
            raise InputFormatError(f"{path} line {number}: split {split!r} is not one of train, valid, test")
        try:
            start_i, end_i = int(start), int(end)
        except ValueError:
            raise InputFormatError(f"{path} line {number}: start/end {start!r}, {end!r} are not integers") from None
        if not chrom or start_i < 0 or end_i <= start_i:
            raise InputFormatError(f"{path} line {number}: interval {chrom}:{start}-{end} is empty or "
                                   "negative; need 0 <= start < end")
        intervals.setdefault(chrom, []).append(BedInterval(chrom, start_i, end_i, BED_SPLITS[split], number))
    if not intervals:
        raise InputFormatError(f"{path}: no intervals; expected 'chrom<TAB>start<TAB>end<TAB>split' lines")
    for chrom_intervals in intervals.values():
        chrom_intervals.sort(key=lambda i: (i.start, i.end, i.line))
    return intervals
