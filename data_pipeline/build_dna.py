"""DNA shards from FASTA/FASTA.gz: one sample per contiguous window of a record, or per BED interval.

Long N-runs (assembly gaps) cut a record into segments, so no window is mostly unknown
bases; short N-runs stay as N tokens. A segment is cut into windows of `window_len` bases from
its start; a last window shorter than `min_window_len` is dropped (and counted). Windows of one
record are written consecutively and kept in one shard where possible. The split is by window
(`--split-by window`, default: the demo genome is a single record) or by whole record; with
`--bed` the intervals and their splits come from the BED file (the DNA-xLSTM / Caduceus
human-sequences.bed layout).

Two parallel passes, both in the worker processes: `fasta_scan` finds the records and their
N-runs block by block; then each worker reads the bases of its windows from the file itself,
normalizes (upper case, IUPAC -> N) and compresses them. The main process only joins the
scan's small results and hands out window lists, so adding workers speeds up the whole build;
no process holds a chromosome. A gzipped genome is decompressed once into the work folder
(it cannot be read from an offset). A part owns whole records.
"""
from __future__ import annotations

import shutil
from functools import lru_cache, partial
from pathlib import Path

from data_pipeline.build_output import run_build
from data_pipeline.build_parallel import batches
from data_pipeline.build_parts import Encoded, encode_sample
from data_pipeline.byte_blocks import seekable_copy
from data_pipeline.errors import ConfigError, InputFormatError
from data_pipeline.fasta_scan import read_bases, scan_fasta
from data_pipeline.readers import read_bed, require_files
from data_pipeline.tokenizers import DNATokenizer

@lru_cache(maxsize=None)
def _tokenizer(unknown: str) -> DNATokenizer:
    return DNATokenizer(unknown=unknown)


def _record_key(path, record) -> str:
    """What names a record across files: the owner of a part, the split group of `--split-by record`."""
    return f"{Path(path).name}:{record.name}"


def _encode_windows(task, unknown: str) -> Encoded:
    """Worker side: read one piece's windows from the file, normalize and compress each."""
    path, piece, windows = task
    bases = read_bases(path, piece, piece.first, max(w[3] for w in windows))
    samples = []
    for order, name, start, end, where, split_group, layout_group, split in windows:
        normalized = _tokenizer(unknown).normalize_bytes(bases[start - piece.first:end - piece.first], unknown, where)
        samples.append(encode_sample(order, name, [normalized], len(normalized), split_group, layout_group, split))
    return Encoded(samples)


def segment_windows(length: int, runs: list, window_len: int, min_window_len: int, dropped: list):
    """(start, end) of the windows of a record of `length` bases whose N-runs are `runs`, one at a
    time (a chromosome has thousands); the bases of too-short tails are added to `dropped[0]`.
    Each segment between runs is cut from its start."""
    for segment_start, segment_end in _segments(length, runs):
        for begin in range(segment_start, segment_end, window_len):
            end = min(begin + window_len, segment_end)
            if end - begin >= min_window_len:
                yield begin, end
            else:
                dropped[0] += end - begin


def _segments(length: int, runs: list):
    begin = 0
    for run_start, run_end in runs:
        if run_start > begin:
            yield begin, run_start
        begin = run_end
    if length > begin:
        yield begin, length


def _scanned(ctx, inputs, plain, min_n_run, check_unknown, bar):
    """(file index, record index, input path, plain path, record) of every record, scanned;
    with `check_unknown`, the first unknown symbol of each record is found too."""
    first_unknown = _tokenizer("error").first_unknown if check_unknown else None
    for file_index, (path, readable) in enumerate(zip(inputs, plain)):
        records = scan_fasta(readable, ctx.pool, min_n_run, first_unknown, source=str(path), bar=bar)
        for record_index, record in enumerate(records):
            yield file_index, record_index, path, readable, record


def _refuse_unknown(record, unknown: str) -> None:
    if record.unknown is not None and unknown == "error":
        position, symbol = record.unknown
        raise _tokenizer(unknown).unknown_error(symbol, position, record.where)


def _by_piece(readable, record, windows):
    """Tasks (path, piece, windows starting in it) in record order, from `windows` (an iterator,
    sorted by start): one piece's windows are held at a time."""
    pieces = iter(record.pieces)
    piece, own = next(pieces), []
    for window in windows:
        while window[2] >= piece.first + piece.length:
            if own:
                yield str(readable), piece, own
                own = []
            piece = next(pieces)
        own.append(window)
    if own:
        yield str(readable), piece, own


def _window_tasks(ctx, scanned, window_len, min_window_len, split_by, unknown):
    for file_index, record_index, path, readable, record in scanned:
        record_key = _record_key(path, record)
        if not ctx.owns(record_key):
            continue
        _refuse_unknown(record, unknown)
        ctx.count_stat("records")
        ctx.count_stat("bases", record.length)
        ctx.count_stat("n_run_bases", sum(end - start for start, end in record.runs))
        dropped = [0]
        cuts = segment_windows(record.length, record.runs, window_len, min_window_len, dropped)
        yield from _by_piece(readable, record, _windows(file_index, record_index, record, record_key, cuts, split_by))
        ctx.count_stat("dropped_short_bases", dropped[0])


def _windows(file_index, record_index, record, record_key, cuts, split_by):
    """The window items `_encode_windows` takes, one cut at a time."""
    for start, end in cuts:
        name = f"{record_key}:{start}-{end}"
        yield ((file_index, record_index, start), name, start, end, f"{record.where} window {start}-{end}",
               name if split_by == "window" else record_key, record_key, None)


def _bed_tasks(ctx, scanned, bed_path, inputs):
    intervals = read_bed(bed_path)
    found: set[str] = set()
    for file_index, record_index, path, readable, record in scanned:
        if record.name not in intervals or record.name in found:
            continue
        found.add(record.name)
        record_key = _record_key(path, record)
        if not ctx.owns(record_key):
            continue
        ctx.count_stat("records")
        ctx.count_stat("bases", record.length)
        windows = []
        for index, interval in enumerate(intervals[record.name]):
            if interval.end > record.length:
                raise InputFormatError(f"{bed_path} line {interval.line}: interval {interval.chrom}:{interval.start}-"
                                       f"{interval.end} runs past the end of {interval.chrom} ({record.length} bases "
                                       f"in {path}); fix the BED or pass the genome it was made for")
            ctx.count_stat(f"intervals_{interval.split}")
            name = f"{record.name}:{interval.start}-{interval.end}"
            windows.append(((file_index, record_index, index), name, interval.start, interval.end,
                            f"{record.where} interval {interval.start}-{interval.end} "
                            f"({bed_path} line {interval.line})",
                            name, record_key, interval.split))
        yield from _by_piece(readable, record, windows)
    missing = sorted((chrom_intervals[0].line, chrom) for chrom, chrom_intervals in intervals.items()
                     if chrom not in found)
    if missing:
        line, chrom = missing[0]
        raise InputFormatError(f"{bed_path} line {line}: chromosome {chrom!r} is not in the FASTA input "
                               f"({', '.join(map(str, inputs))}); pass the genome the BED was made for")


def _size(task) -> int:
    return sum(w[3] - w[2] for w in task[2])


def _counted(batch_iter, bar):
    """The batches, advancing `bar` by their bases as they are handed out."""
    for batch in batch_iter:
        bar.update(sum(map(_size, batch)))
        yield batch


def build_dna(inputs: list[str], out: str, window_len: int = 32768, min_window_len: int = 128,
              min_n_run: int = 100, split_by: str = "window", unknown: str = "error",
              val_fraction: float = 0.05, seed: int = 0, shard_mb: float = 64.0,
              progress: bool = True, bed: str | None = None, workers: int = 1,
              part: str | None = None) -> dict:
    if split_by not in ("window", "record"):
        raise ConfigError(f"--split-by {split_by!r}: choose 'window' or 'record'")
    if window_len < min_window_len or min_window_len < 1:
        raise ConfigError(f"--window-len {window_len} must be >= --min-window-len {min_window_len} >= 1")
    if min_n_run < 1:  # N{0,} matches everywhere: every base would become its own segment
        raise ConfigError(f"--min-n-run {min_n_run} must be >= 1")
    require_files(inputs + ([bed] if bed else []))
    tokenizer = DNATokenizer(unknown=unknown)
    args = {"inputs": [str(p) for p in inputs], "window_len": window_len,
            "min_window_len": min_window_len, "min_n_run": min_n_run, "split_by": split_by,
            "unknown": unknown, "val_fraction": val_fraction, "seed": seed, "shard_mb": shard_mb}
    if bed:
        args = {"inputs": [str(p) for p in inputs], "bed": str(bed), "unknown": unknown, "seed": seed,
                "shard_mb": shard_mb}

    def produce(ctx) -> dict:
        for name in ("records", "bases") + (("n_run_bases", "dropped_short_bases") if not bed else ()):
            ctx.count_stat(name, 0)
        copies = ctx.writer.folder / "inputs"  # decompressed gzip inputs, removed when encoded
        try:
            plain = [seekable_copy(p, copies) for p in inputs]
            with ctx.progress(sum(Path(p).stat().st_size for p in plain), "scanning FASTA", "B") as bar:
                # windows: unknown symbols anywhere in a record are refused (in N-runs too); BED: in
                # the intervals only, when they are encoded; BED needs no runs
                scanned = list(_scanned(ctx, inputs, plain, None if bed else min_n_run,
                                        unknown == "error" and not bed, bar))
            owned = sum(record.length for _, _, path, _, record in scanned if ctx.owns(_record_key(path, record)))
            with ctx.progress(owned, "encoding windows", "base") as bar:
                tasks = (_bed_tasks(ctx, scanned, bed, inputs) if bed else
                         _window_tasks(ctx, scanned, window_len, min_window_len, split_by, unknown))
                ctx.encode(partial(_encode_windows, unknown=unknown), _counted(batches(tasks, _size), bar))
        finally:
            shutil.rmtree(copies, ignore_errors=True)
        hint = (f"no interval of {bed} found" if bed else
                f"no window of >= --min-window-len={min_window_len} bases outside N-runs of "
                f">= --min-n-run={min_n_run}; lower --min-window-len or add input")
        return {"tokenizer": tokenizer.to_dict(), "stats": {}, "empty_hint": hint,
                "explicit_splits": ["train", "validation", "test"] if bed else []}

    return run_build(out, "dna", produce, args, val_fraction, seed, shard_mb, part, workers, progress)
