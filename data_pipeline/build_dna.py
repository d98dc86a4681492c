"""DNA shards from FASTA/FASTA.gz: one sample per contiguous window of a record, or per BED interval.

Long N-runs (assembly gaps) cut a record into segments, so no window is mostly unknown
bases; short N-runs stay as N tokens. Windows of one record are written consecutively and
kept in one shard where possible. The split is by window (`--split-by window`, default: the
demo genome is a single record) or by whole record; with `--bed` the intervals and their
splits come from the BED file (the DNA-xLSTM / Caduceus human-sequences.bed layout).

Records stream through in chunks (a chromosome is never held whole); worker processes
normalize (upper case, IUPAC -> N) and compress the windows; a part owns whole records.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from data_pipeline.build_output import run_build
from data_pipeline.build_parallel import batches
from data_pipeline.build_parts import Encoded, encode_sample
from data_pipeline.errors import ConfigError, InputFormatError
from data_pipeline.readers import read_bed, require_files, stream_fasta
from data_pipeline.tokenizers import DNATokenizer

_BASE = re.compile("[ACGTacgt]")
_DROP_BASES = str.maketrans("", "", "ACGTacgt")
_tokenizers: dict = {}


def _tokenizer(unknown: str) -> DNATokenizer:
    if unknown not in _tokenizers:
        _tokenizers[unknown] = DNATokenizer(unknown=unknown)
    return _tokenizers[unknown]


def _encode_window(item, unknown: str) -> Encoded:
    """Worker side: normalize (refusing or replacing unknown symbols) and compress one window."""
    order, name, text, where, split_group, layout_group, split = item
    normalized = _tokenizer(unknown).normalize(text, unknown, where)
    return Encoded([encode_sample(order, name, [normalized], len(normalized), split_group, layout_group, split)])


class _WindowCutter:
    """Windows of `window_len` bases between N-runs of >= `min_n_run`, from a record that arrives
    in chunks: the same windows as cutting the whole record at once. A run counts as N if it
    holds no A/C/G/T (IUPAC codes and replaced symbols are N after normalization)."""

    def __init__(self, window_len: int, min_window_len: int, min_n_run: int, validate):
        self.window_len, self.min_window_len, self.min_n_run = window_len, min_window_len, min_n_run
        self.long_run = re.compile(f"[^ACGTacgt]{{{min_n_run}}}")
        self.validate = validate  # checks the symbols of skipped N-runs
        self.buf, self.offset, self.pos, self.skipping = "", 0, 0, False
        self.n_run_bases = self.dropped_short_bases = 0

    def feed(self, chunk: str, final: bool = False):
        """(start, end, text) of every window that is complete after this chunk. Works on an
        offset into the buffer: slicing the buffer per window would copy it per window."""
        buf = self.buf = self.buf[self.offset:] + chunk
        self.offset = 0
        limit = self.window_len + self.min_n_run - 1
        while True:
            at = self.offset
            if self.skipping:
                base = _BASE.search(buf, at)
                stop = len(buf) if base is None else base.start()
                self.validate(buf[at:stop])
                self.n_run_bases += stop - at
                self.pos += stop - at
                self.offset = at = stop
                if base is None:
                    return
                self.skipping = False
            remaining = len(buf) - at
            if remaining == 0 or (remaining < limit and not final):
                return
            region_end = min(len(buf), at + limit)
            # most windows hold only bases: deleting them (one C pass) is 40x faster than the regex
            hit = self.long_run.search(buf, at, region_end) if buf[at:region_end].translate(_DROP_BASES) else None
            if hit is None or hit.start() - at >= self.window_len:
                end = min(remaining, self.window_len)
                if end < self.window_len and not final:
                    return
            else:
                end = hit.start() - at
                self.skipping = True
            if end >= self.min_window_len:
                yield self.pos, self.pos + end, buf[at:at + end]
            else:
                self.dropped_short_bases += end
            self.pos += end
            self.offset = at + end


def _window_items(ctx, inputs, window_len, min_window_len, min_n_run, split_by, unknown, bar):
    for file_index, path in enumerate(inputs):
        for record_index, record in enumerate(stream_fasta(path)):
            record_key = f"{Path(path).name}:{record.name}"
            if not ctx.owns(record_key):
                continue
            ctx.count_stat("records")
            where = record.where
            cutter = _WindowCutter(window_len, min_window_len, min_n_run,
                                   lambda text: _tokenizer(unknown).normalize(text, unknown, where))
            for chunk in record.chunks:
                ctx.count_stat("bases", len(chunk))
                bar.update(len(chunk))
                yield from _windows(cutter.feed(chunk), file_index, record_index, record_key, where, split_by)
            yield from _windows(cutter.feed("", final=True), file_index, record_index, record_key, where, split_by)
            ctx.count_stat("n_run_bases", cutter.n_run_bases)
            ctx.count_stat("dropped_short_bases", cutter.dropped_short_bases)


def _windows(cut, file_index, record_index, record_key, where, split_by):
    for start, end, text in cut:
        name = f"{record_key}:{start}-{end}"
        yield ((file_index, record_index, start), name, text, f"{where} window {start}-{end}",
               name if split_by == "window" else record_key, record_key, None)


def _bed_items(ctx, inputs, bed_path, bar):
    intervals = read_bed(bed_path)
    found: set[str] = set()
    for file_index, path in enumerate(inputs):
        for record_index, record in enumerate(stream_fasta(path)):
            if record.name not in intervals or record.name in found:
                continue
            found.add(record.name)
            record_key = f"{Path(path).name}:{record.name}"
            if not ctx.owns(record_key):
                continue
            ctx.count_stat("records")
            wanted = intervals[record.name]
            buf, buf_start, next_index = "", 0, 0
            for chunk in record.chunks:
                ctx.count_stat("bases", len(chunk))
                bar.update(len(chunk))
                buf += chunk
                while next_index < len(wanted) and wanted[next_index].end <= buf_start + len(buf):
                    interval = wanted[next_index]
                    name = f"{record.name}:{interval.start}-{interval.end}"
                    ctx.count_stat(f"intervals_{interval.split}")
                    yield ((file_index, record_index, next_index), name,
                           buf[interval.start - buf_start:interval.end - buf_start],
                           f"{record.where} interval {interval.start}-{interval.end} ({bed_path} line {interval.line})",
                           name, record_key, interval.split)
                    next_index += 1
                keep_from = wanted[next_index].start if next_index < len(wanted) else buf_start + len(buf)
                if keep_from > buf_start:
                    buf = buf[keep_from - buf_start:]
                    buf_start = keep_from
            if next_index < len(wanted):
                bad = wanted[next_index]
                length = buf_start + len(buf)
                raise InputFormatError(f"{bed_path} line {bad.line}: interval {bad.chrom}:{bad.start}-{bad.end} "
                                       f"runs past the end of {bad.chrom} ({length} bases in {path}); fix the BED "
                                       "or pass the genome it was made for")
    missing = sorted((chrom_intervals[0].line, chrom) for chrom, chrom_intervals in intervals.items()
                     if chrom not in found)
    if missing:
        line, chrom = missing[0]
        raise InputFormatError(f"{bed_path} line {line}: chromosome {chrom!r} is not in the FASTA input "
                               f"({', '.join(map(str, inputs))}); pass the genome the BED was made for")


def _size(item) -> int:
    return len(item[2])


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
        total = None if any(Path(p).name.endswith(".gz") for p in inputs) else sum(Path(p).stat().st_size for p in inputs)
        bar = ctx.progress(total, "reading FASTA", "B")
        try:
            for name in ("records", "bases") + (("n_run_bases", "dropped_short_bases") if not bed else ()):
                ctx.count_stat(name, 0)
            items = (_bed_items(ctx, inputs, bed, bar) if bed else
                     _window_items(ctx, inputs, window_len, min_window_len, min_n_run, split_by, unknown, bar))
            ctx.encode(partial(_encode_window, unknown=unknown), batches(items, _size))
        finally:
            bar.close()
        hint = (f"no interval of {bed} found" if bed else
                f"no window of >= --min-window-len={min_window_len} bases outside N-runs of "
                f">= --min-n-run={min_n_run}; lower --min-window-len or add input")
        return {"tokenizer": tokenizer.to_dict(), "stats": {}, "empty_hint": hint,
                "explicit_splits": ["train", "validation", "test"] if bed else []}

    return run_build(out, "dna", produce, args, val_fraction, seed, shard_mb, part, workers, progress)
