"""Protein clusters from FASTA + an MMseqs2 table: an external hash-partitioned join in the workers.

Neither input is held in memory, and the main process does not parse either: it cuts both
files into byte ranges (`byte_blocks`) and collects small results, while the worker processes
  1. parse table ranges and append each row to a member bucket (hash of the member name);
  2. parse FASTA ranges, append each sequence once to their own sequence spill, and each record's
     names (`accession_keys`) with the sequence's location to the member buckets;
  3. join each member bucket: every (table row, record) match goes to the cluster bucket of its
     representative, a record name that matches no row to the bucket of the record's name (a
     record is unclustered when none of its names matched); a table member without a record
     is an error naming its line;
  4. group each cluster bucket (owned by this `--part`): members in table order, `min_members`,
     `max_clusters` (cut-offs found by a summary pass over the buckets), encoded samples.
Bucket files are per worker process (`<kind><bucket>-<pid>`), opened for append and closed
per task, under the build's work folder, and removed when done; a bucket holds at most
`BUCKET_BYTES` of input (up to `MAX_BUCKETS` buckets, so beyond 4 GB of input a bucket grows),
which is what one join or group task holds in memory. Every `--part` reads and joins the whole
input (the cut-offs of `--max-clusters` need all of it) and groups only its own buckets.

Sample order: (cluster bucket, 0, first table row) for a cluster, (cluster bucket, 1, FASTA
record) for an unclustered sequence: the same for any number of workers or parts, but not the
table's order of clusters (builds before this join listed clusters in table order).
A row is identified by (table range, line in range), a record by (FASTA range over all inputs,
line in range), packed into one int each (range << 32 | line): sorting them is input order.
"""
from __future__ import annotations

import heapq
import os
import shutil
import zlib
from collections import Counter
from functools import lru_cache, partial
from pathlib import Path

from data_pipeline.build_parts import Encoded, encode_sample
from data_pipeline.byte_blocks import blocks, data_start, line_of, read_range, seekable_copy
from data_pipeline.errors import InputFormatError, UnknownSymbolError
from data_pipeline.readers import _fasta_record, accession_keys, skip_to_first_header
from data_pipeline.tokenizers import ProteinTokenizer

JOIN_DIR = "join"
BUCKET_BYTES = 4 << 20  # input bytes per bucket: what one join or group task holds in memory
MAX_BUCKETS = 1024  # bounds the files per bucket kind (buckets x workers); larger inputs get larger buckets
RANGE_BYTES = 1 << 20  # input bytes per read task (more for huge files: at most MAX_RANGES per file)
MAX_RANGES = 4096
_LINE_BITS = 32


@lru_cache(maxsize=None)
def protein_tokenizer(unknown: str) -> ProteinTokenizer:
    return ProteinTokenizer(unknown=unknown)


def _bucket(name: str, buckets: int) -> int:
    return zlib.crc32(name.encode("utf-8")) % buckets


def _split_id(ident: int) -> tuple[int, int]:
    return ident >> _LINE_BITS, ident & ((1 << _LINE_BITS) - 1)


def _text(path: str, source: str, start: int, end: int) -> str:
    """A range's text with universal newlines, as `open_text` reads it."""
    text = read_range(path, start, end, source)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _append(folder: Path, kind: str, lines: dict[int, list[str]]) -> None:
    """Append each bucket's lines to this process's file of that bucket (one file open at a time)."""
    pid = os.getpid()
    for bucket, bucket_lines in lines.items():
        with open(folder / f"{kind}{bucket:05d}-{pid}", "a", encoding="utf-8", newline="\n") as handle:
            handle.write("".join(bucket_lines))


def _bucket_lines(folder: Path, kind: str, bucket: int) -> tuple[list[Path], list[str]]:
    """The files of one bucket (every process's) and their lines (split at '\\n' only: names
    may hold other line-break characters such as '\\x0b')."""
    files = sorted(folder.glob(f"{kind}{bucket:05d}-*"))
    lines = []
    for path in files:
        lines.extend(path.read_bytes().decode("utf-8").split("\n")[:-1])
    return files, lines


# ------------------------------------------------------------------------- 1. + 2. read ranges
def read_range_task(task, folder: str, buckets: int) -> tuple[int, int]:
    """Worker: one range of the table or of a FASTA file -> (rows or records, newlines)."""
    kind, *where = task
    return (table_range if kind == "table" else fasta_range)(folder, buckets, *where)


def table_range(folder: str, buckets: int, path: str, source: str, index: int, start: int, end: int):
    """Rows of one table range into member buckets; returns (rows, newlines)."""
    text = _text(path, source, start, end)
    lines: dict[int, list[str]] = {}
    rows = 0
    for number, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise InputFormatError(f"{source} line {line_of(path, start) + number}: expected "
                                   f"'representative<TAB>member', got {line.strip()[:60]!r}")
        rep, member = fields
        lines.setdefault(_bucket(member, buckets), []).append(f"T\t{member}\t{index << _LINE_BITS | number}\t{rep}\n")
        rows += 1
    _append(Path(folder), "m", lines)
    return rows, text.count("\n")


def fasta_range(folder: str, buckets: int, path: str, source: str, index: int, start: int, end: int):
    """Records of one FASTA range (it starts at a header, or is a file's first range):
    sequences into this process's spill, record names into member buckets. Returns
    (records, newlines). The same errors as `readers.fasta_records`."""
    text = _text(path, source, start, end)
    newlines = text.count("\n")
    number = 0  # lines of the range before the current record
    if not text.startswith(">"):  # only a file's first range (line_of is cheap there): blank lines first
        first_line = line_of(path, start)
        text, line = skip_to_first_header(text, source, first_line)
        number = line - first_line
    if not text:
        return 0, newlines
    folder = Path(folder)
    pid = os.getpid()
    lines: dict[int, list[str]] = {}
    pieces: list[bytes] = []
    with open(folder / f"s{pid}", "ab") as spill:
        offset = spill.seek(0, os.SEEK_END)
        for chunk in text.split("\n>"):
            try:
                name, sequence, _ = _fasta_record(chunk, source, number)
            except InputFormatError:  # the same error again, now with the line in the file
                _fasta_record(chunk, source, line_of(path, start) + number)
                raise
            data = sequence.encode("utf-8")
            keys = accession_keys(name)
            for key in keys:
                lines.setdefault(_bucket(key, buckets), []).append(
                    f"R\t{key}\t{index << _LINE_BITS | number}\t{len(keys)}\t{name}\t{pid}\t{offset}\t{len(data)}\n")
            pieces.append(data)
            offset += len(data)
            number += chunk.count("\n") + 1
        spill.write(b"".join(pieces))
    _append(folder, "m", lines)
    return len(pieces), newlines


# ------------------------------------------------------------------------- 3. join
def join_bucket(bucket: int, folder: str, buckets: int) -> tuple[int, str] | None:
    """Worker: match one member bucket's table rows to records; route each match to the cluster
    bucket of its representative and each unmatched record name to that of the record's name.
    Returns the first table row (id, member) whose member no record has, or None.
    Lines: T member row rep | R key record keys name pid offset length (the record part after
    the key is copied as is into M rep row record ... and U record ... lines)."""
    folder = Path(folder)
    files, entries = _bucket_lines(folder, "m", bucket)
    rows: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        if entry[0] == "T":
            _, member, row, rep = entry.split("\t")
            rows.setdefault(member, []).append((row, rep))
    matched = set()
    lines: dict[int, list[str]] = {}
    for entry in entries:
        if entry[0] != "R":
            continue
        _, key, record = entry.split("\t", 2)
        found = rows.get(key)
        if found:
            matched.add(key)
            for row, rep in found:
                lines.setdefault(_bucket(rep, buckets), []).append(f"M\t{rep}\t{row}\t{record}\n")
        else:
            name = record.split("\t", 3)[2]
            lines.setdefault(_bucket(name, buckets), []).append(f"U\t{record}\n")
    _append(folder, "c", lines)
    for path in files:
        path.unlink()
    missing = [(int(row), member) for member, found in rows.items() if member not in matched for row, _ in found]
    return min(missing) if missing else None


# ------------------------------------------------------------------------- 4. group
def _cluster_bucket(folder: Path, bucket: int):
    """{representative: [(row, record, name, location)]}, {record: (name, location)} of the
    unclustered records (none of their names matched a row), and the bucket's files."""
    files, entries = _bucket_lines(folder, "c", bucket)
    clusters: dict[str, list] = {}
    misses: Counter = Counter()
    unmatched: dict[int, tuple] = {}
    for entry in entries:
        if entry[0] == "M":
            _, rep, row, record, _, name, pid, offset, length = entry.split("\t")
            clusters.setdefault(rep, []).append((int(row), int(record), name, (pid, int(offset), int(length))))
        else:
            _, record, keys, name, pid, offset, length = entry.split("\t")
            record = int(record)
            misses[record] += 1
            if misses[record] == int(keys):
                unmatched[record] = (name, (pid, int(offset), int(length)))
    return clusters, unmatched, files


def _rows(members: list) -> tuple[int, int]:
    """(table rows, first row) of a cluster: a row matched by two records counts once."""
    rows = {m[0] for m in members}
    return len(rows), min(rows)


def bucket_summary(bucket: int, folder: str, min_members: int, limit: int) -> tuple[list[int], list[int]]:
    """Worker, for --max-clusters: the first `limit` kept clusters' first rows and the first
    `limit` unclustered records of one cluster bucket (the main process merges the cut-offs)."""
    clusters, unmatched, _ = _cluster_bucket(Path(folder), bucket)
    firsts = (first for size, first in map(_rows, clusters.values()) if size >= min_members)
    return heapq.nsmallest(limit, firsts), heapq.nsmallest(limit, unmatched) if min_members <= 1 else []


def group_bucket(bucket: int, folder: str, min_members: int, cluster_cut: int | None, record_cut: int | None,
                 places: tuple, unknown: str) -> Encoded:
    """Worker: the samples of one cluster bucket, in (bucket, kind, first row or record) order.
    A cut is the last first-row / record id kept (None: all); `places` = (input names, input
    of each FASTA range, first line of each FASTA range) to name records in errors."""
    folder = Path(folder)
    clusters, unmatched, files = _cluster_bucket(folder, bucket)
    items = []
    for rep, members in clusters.items():
        size, first = _rows(members)
        if size >= min_members and (cluster_cut is None or first <= cluster_cut):
            members.sort(key=lambda m: m[:2])
            items.append(((bucket, 0, first), rep, [m[1:] for m in members]))
    if min_members <= 1:
        items.extend(((bucket, 1, record), name, [(record, name, location)])
                     for record, (name, location) in unmatched.items() if record_cut is None or record <= record_cut)
    items.sort(key=lambda item: item[0])
    tokenizer = protein_tokenizer(unknown)
    samples = []
    with _Spills(folder) as spills:
        for order, name, members in items:
            sequences = [_normalized(tokenizer, spills.read(location), unknown, record, member, places)
                         for record, member, location in members]
            samples.append(encode_sample(order, name, sequences, sum(map(len, sequences)), name, name))
    for path in files:
        path.unlink()
    return Encoded(samples, counters={"clusters": len(samples), "clusters_in_table": len(clusters),
                                      "unclustered_sequences": len(unmatched)})


def _normalized(tokenizer, text: str, unknown: str, record: int, name: str, places: tuple) -> str:
    try:
        return tokenizer.normalize(text, unknown)
    except UnknownSymbolError:  # the same error again, now naming the record (only built on error)
        return tokenizer.normalize(text, unknown, _where(record, name, places))


def _where(record: int, name: str, places: tuple) -> str:
    sources, range_input, range_line = places
    index, number = _split_id(record)
    return f"{sources[range_input[index]]} record {name!r} (line {range_line[index] + number})"


class _Spills:
    """The sequence spills, read with pread (an mmap would count every page touched in the RSS)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, int] = {}

    def read(self, location: tuple) -> str:
        pid, offset, length = location
        if pid not in self.files:
            self.files[pid] = os.open(self.folder / f"s{pid}", os.O_RDONLY)
        return os.pread(self.files[pid], length, offset).decode("utf-8")

    def __enter__(self) -> "_Spills":
        return self

    def __exit__(self, *exc) -> None:
        for descriptor in self.files.values():
            os.close(descriptor)


# ------------------------------------------------------------------------- main side
def _ranges(path: Path, marker: bytes) -> list[tuple[int, int]]:
    size = path.stat().st_size
    return blocks(path, data_start(path), size, max(RANGE_BYTES, size // MAX_RANGES), marker)


class _Smallest:
    """The `limit` smallest ids offered in ascending runs: a max-heap of at most `limit` ids."""

    def __init__(self, limit: int):
        self.limit = limit
        self._heap: list[int] = []  # negated ids

    def offer(self, ascending: list[int]) -> None:
        for value in ascending:
            if len(self._heap) < self.limit:
                heapq.heappush(self._heap, -value)
            elif self._heap and value < -self._heap[0]:
                heapq.heapreplace(self._heap, -value)
            else:
                break  # the rest of the run is larger still

    def cut(self, count: int) -> tuple[int | None, int]:
        """(the largest id kept when keeping the first `count`: None for all, -1 for none; how many)."""
        kept = sorted(-value for value in self._heap)[:max(0, count)]
        if count <= 0:
            return -1, 0
        return (kept[-1] if len(kept) == count else None), len(kept)


def _read_inputs(ctx, folder: Path, buckets: int, table: str, table_copy: Path, inputs: list[str],
                 copies: list[Path]) -> tuple[list[int], tuple]:
    """Passes 1 and 2 in the pool (table ranges first, so its errors come first). Returns the
    first line of each table range and the places of the FASTA ranges (see `group_bucket`)."""
    table_ranges = _ranges(table_copy, b"\n")
    if not table_ranges:
        raise InputFormatError(f"{table}: empty cluster table")
    fasta_ranges = []  # (input, range) of every FASTA range: its index is the record ids' range part
    for position, path in enumerate(copies):
        ranges = _ranges(path, b"\n>") or [(0, 0)]  # an empty file: one empty range, no records
        fasta_ranges += [(position, range_) for range_ in ranges]
    tasks = [[("table", str(table_copy), table, index, *range_)] for index, range_ in enumerate(table_ranges)]
    tasks += [[("fasta", str(copies[position]), str(inputs[position]), index, *range_)]
              for index, (position, range_) in enumerate(fasta_ranges)]
    bar = ctx.progress(sum(end - start for [(*_, start, end)] in tasks), "reading cluster table and FASTA", "B")
    results = ctx.pool.map(partial(read_range_task, folder=str(folder), buckets=buckets), tasks)
    table_lines, rows = [1], 0
    for start, end in table_ranges:
        [(count, newlines)] = next(results)
        bar.update(end - start)
        rows += count
        table_lines.append(table_lines[-1] + newlines)
    if not rows:
        raise InputFormatError(f"{table}: empty cluster table")
    range_line, records, line = [], 0, 1  # first line of each FASTA range in its file
    for index, (position, (start, end)) in enumerate(fasta_ranges):
        [(count, newlines)] = next(results)
        bar.update(end - start)
        if index % ctx.count == ctx.index:
            ctx.count_stat("sequences", count)
        range_line.append(line)
        records, line = records + count, line + newlines
        if index + 1 == len(fasta_ranges) or fasta_ranges[index + 1][0] != position:  # the file's last range
            if not records:
                raise InputFormatError(f"{inputs[position]}: no FASTA records ('>' headers) found; check the file")
            records, line = 0, 1
    bar.close()
    return table_lines, ([str(p) for p in inputs], [position for position, _ in fasta_ranges], range_line)


def cluster_samples(ctx, inputs: list[str], table: str, min_members: int, max_clusters: int | None,
                    unknown: str) -> None:
    """Join `table` with the FASTA `inputs` in the workers and feed the clusters this part owns
    to `ctx.encode`."""
    folder = ctx.writer.folder / JOIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    table_copy = seekable_copy(table, folder)
    copies = [seekable_copy(path, folder) for path in inputs]
    total = table_copy.stat().st_size + sum(p.stat().st_size for p in copies)
    buckets = max(1, min(MAX_BUCKETS, -(-total // BUCKET_BYTES)))  # at most BUCKET_BYTES each
    table_lines, places = _read_inputs(ctx, folder, buckets, table, table_copy, inputs, copies)
    owned = [b for b in range(buckets) if ctx.owns_bucket(b)]
    bar = ctx.progress(buckets * (2 if max_clusters is not None else 1) + len(owned), "joining clusters", "bucket")

    def each_bucket(fn, which):
        for [result] in ctx.pool.map(partial(fn, folder=str(folder)), ([b] for b in which)):
            bar.update(1)
            yield result

    def each_handed_out(which):  # ctx.encode takes the batches; the bar counts them as handed out
        for bucket in which:
            bar.update(1)
            yield [bucket]

    missing = [m for m in each_bucket(partial(join_bucket, buckets=buckets), range(buckets)) if m is not None]
    if missing:
        row, member = min(missing)
        index, number = _split_id(row)
        raise InputFormatError(f"{table} line {table_lines[index] + number}: member {member!r} is not in the "
                               f"FASTA input ({', '.join(map(str, inputs))}); pass the FASTA the clusters "
                               "were computed from")
    cluster_cut = record_cut = None
    if max_clusters is not None:  # the first max_clusters kept clusters, then unclustered records
        firsts, records = _Smallest(max_clusters), _Smallest(max_clusters)
        for bucket_firsts, bucket_records in each_bucket(partial(bucket_summary, min_members=min_members,
                                                                 limit=max_clusters), range(buckets)):
            firsts.offer(bucket_firsts)
            records.offer(bucket_records)
        cluster_cut, kept = firsts.cut(max_clusters)
        record_cut, _ = records.cut(max_clusters - kept)
    group = partial(group_bucket, folder=str(folder), min_members=min_members, cluster_cut=cluster_cut,
                    record_cut=record_cut, places=places, unknown=unknown)
    ctx.encode(group, each_handed_out(owned))
    bar.close()
    shutil.rmtree(folder, ignore_errors=True)
