"""DNA windows from the parallel block scan equal an independent whole-record cut.

The build reads a genome in blocks (down to a few dozen bytes here, so block edges fall inside
lines, N-runs and records) and finds N-runs per block; the reference below reads each record
whole with a regex. Fresh random genomes every run: soft-masked bases, IUPAC codes, N-runs of
every length around --min-n-run, records of one base, blank lines, CRLF and spaces in lines.
"""
import random
import re

import pytest

from data_pipeline import fasta_scan
from data_pipeline.build_dna import build_dna
from data_pipeline.manifest import read_manifest
from tests.data_pipeline.shard_samples import read_samples

IUPAC = "RYKMSWBDHVN"


def _random_genome(rng: random.Random, min_n_run: int) -> tuple[str, dict]:
    """Half the genomes have only upper-case N besides ACGTacgt (the scan's fast path for gaps);
    N-runs are often one shorter than, as long as, or one longer than --min-n-run."""
    records = {}
    only_n = rng.random() < 0.5
    for index in range(rng.randint(1, 5)):
        pieces = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.5:
                pieces.append("".join(rng.choice("ACGTacgt") for _ in range(rng.randint(1, 120))))
            elif kind < 0.8 or only_n:
                length = rng.choice([max(1, min_n_run - 1), min_n_run, min_n_run + 1, rng.randint(1, 30)])
                pieces.append(rng.choice("N" if only_n else "Nn") * length)
            else:
                pieces.append("".join(rng.choice(IUPAC + IUPAC.lower()) for _ in range(rng.randint(1, 4))))
        records[f"chr{index}"] = "".join(pieces)
    text = []
    for name, sequence in records.items():
        width = rng.randint(1, 80)
        lines = [sequence[i:i + width] for i in range(0, len(sequence), width)]
        newline = "\r\n" if rng.random() < 0.2 else "\n"
        body = newline.join(line if rng.random() < 0.9 else " " + line + "\t" for line in lines)
        text.append(f">{name} random record{newline}{body}{newline}" + ("\n" if rng.random() < 0.2 else ""))
    return "".join(text), records


def _reference(records: dict, window_len: int, min_window_len: int, min_n_run: int) -> tuple[list, dict]:
    """(name, bases) of every window, cut from whole records; the build's base counters."""
    windows, stats = [], {"bases": 0, "n_run_bases": 0, "dropped_short_bases": 0}
    for name, sequence in records.items():
        stats["bases"] += len(sequence)
        runs = [m.span() for m in re.finditer("[^ACGTacgt]+", sequence) if m.end() - m.start() >= min_n_run]
        stats["n_run_bases"] += sum(end - start for start, end in runs)
        edges = [0] + [x for run in runs for x in run] + [len(sequence)]
        for begin, finish in zip(edges[::2], edges[1::2]):
            for start in range(begin, finish, window_len):
                end = min(start + window_len, finish)
                if end - start < min_window_len:
                    stats["dropped_short_bases"] += end - start
                    continue
                bases = "".join(c if c in "ACGT" else "N" for c in sequence[start:end].upper())
                windows.append((f"genome.fa:{name}:{start}-{end}", bases))
    return windows, stats


def _windows(build) -> list:
    return [(meta["name"], "\n".join(sequences)) for rows in read_samples(build).values() for meta, sequences in rows]


@pytest.mark.parametrize("trial", range(8))
def test_windows_equal_a_whole_record_cut(trial, tmp_path, monkeypatch):
    rng = random.Random()
    expected = []
    while not expected:  # a genome with at least one window (almost always the first)
        min_n_run = rng.randint(1, 12)
        text, records = _random_genome(rng, min_n_run)
        window_len = rng.randint(8, 60)
        min_window_len = rng.randint(1, window_len)
        expected, stats = _reference(records, window_len, min_window_len, min_n_run)
    path = tmp_path / "genome.fa"
    path.write_bytes(text.encode())
    monkeypatch.setattr(fasta_scan, "BLOCK_BYTES", rng.choice([7, 31, 64, 250, 1 << 20]))
    build_dna([str(path)], str(tmp_path / "out"), window_len=window_len, min_window_len=min_window_len,
              min_n_run=min_n_run, unknown="error", val_fraction=0.0, shard_mb=1e-3, progress=False)
    assert sorted(_windows(tmp_path / "out")) == sorted(expected)
    built = read_manifest(tmp_path / "out")["stats"]
    assert {key: built[key] for key in stats} == stats
    assert built["records"] == len(records)
