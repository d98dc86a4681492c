"""DNA shards from FASTA/FASTA.gz: one sample per contiguous window of a record.

Long N-runs (assembly gaps) cut a record into segments, so no window is mostly unknown
bases; short N-runs stay as N tokens. Windows of one record are written consecutively and
kept in one shard where possible. The split is by window (`--split-by window`, default: the
demo genome is a single record) or by whole record.
"""
from __future__ import annotations

import re
from pathlib import Path

from data_pipeline.build_progress import build_progress

from data_pipeline.build_output import Sample, refuse_finished_build, require_samples, write_build
from data_pipeline.errors import ConfigError
from data_pipeline.readers import read_fasta, require_files
from data_pipeline.tokenizers import DNATokenizer


def _segments(sequence: str, min_n_run: int):
    """(start, end) of the stretches between N-runs of length >= min_n_run."""
    start = 0
    for run in re.finditer(f"N{{{min_n_run},}}", sequence):
        if run.start() > start:
            yield start, run.start()
        start = run.end()
    if start < len(sequence):
        yield start, len(sequence)


def dna_samples(inputs: list[str], window_len: int = 32768, min_window_len: int = 128,
                min_n_run: int = 100, split_by: str = "window", unknown: str = "error",
                progress: bool = True) -> tuple[list[Sample], dict]:
    if split_by not in ("window", "record"):
        raise ConfigError(f"--split-by {split_by!r}: choose 'window' or 'record'")
    if window_len < min_window_len or min_window_len < 1:
        raise ConfigError(f"--window-len {window_len} must be >= --min-window-len {min_window_len} >= 1")
    if min_n_run < 1:  # N{0,} matches everywhere: every base would become its own segment
        raise ConfigError(f"--min-n-run {min_n_run} must be >= 1")
    require_files(inputs)
    tokenizer = DNATokenizer(unknown=unknown)
    samples: list[Sample] = []
    stats = {"records": 0, "bases": 0, "n_run_bases": 0, "dropped_short_bases": 0}
    bar = build_progress(sum(Path(p).stat().st_size for p in inputs), "reading FASTA", "B",
                         disable=not progress)
    for path in inputs:
        for record in read_fasta(path):
            stats["records"] += 1
            stats["bases"] += len(record.sequence)
            ids = tokenizer.encode_bytes(record.sequence, unknown, where=record.where)
            normalized = tokenizer.decode(ids)  # upper case, IUPAC codes and replacements as N
            record_key = f"{Path(path).name}:{record.name}"
            covered = 0
            for seg_start, seg_end in _segments(normalized, min_n_run):
                covered += seg_end - seg_start
                for start in range(seg_start, seg_end, window_len):
                    end = min(start + window_len, seg_end)
                    if end - start < min_window_len:
                        stats["dropped_short_bases"] += end - start
                        continue
                    name = f"{record_key}:{start}-{end}"
                    samples.append(Sample(name, [normalized[start:end]], end - start,
                                          split_group=name if split_by == "window" else record_key,
                                          layout_group=record_key))
            stats["n_run_bases"] += len(normalized) - covered
        bar.update(Path(path).stat().st_size)
    bar.close()
    return samples, stats


def build_dna(inputs: list[str], out: str, window_len: int = 32768, min_window_len: int = 128,
              min_n_run: int = 100, split_by: str = "window", unknown: str = "error",
              val_fraction: float = 0.05, seed: int = 0, shard_mb: float = 64.0,
              progress: bool = True) -> dict:
    refuse_finished_build(out)
    samples, stats = dna_samples(inputs, window_len, min_window_len, min_n_run, split_by,
                                 unknown, progress)
    require_samples(samples, inputs, f"no window of >= --min-window-len={min_window_len} bases outside "
                    f"N-runs of >= --min-n-run={min_n_run} ({stats['bases']} bases read); "
                    "lower --min-window-len or add input")
    args = {"inputs": [str(p) for p in inputs], "window_len": window_len,
            "min_window_len": min_window_len, "min_n_run": min_n_run, "split_by": split_by,
            "unknown": unknown, "val_fraction": val_fraction, "seed": seed, "shard_mb": shard_mb}
    return write_build(out, "dna", samples, DNATokenizer(unknown=unknown), args, stats,
                       val_fraction, seed, int(shard_mb * 2**20), progress)
