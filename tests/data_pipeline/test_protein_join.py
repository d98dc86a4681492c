"""Protein builds with a cluster table (the on-disk join in `data_pipeline/protein_join.py`):
the samples equal a plain-dict join, any workers / parts give the same bytes, bad input is one
error naming file and line, and memory does not grow with the input."""
import gzip
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline import protein_join
from data_pipeline.build_output import merge_parts
from data_pipeline.build_protein import build_protein
from data_pipeline.errors import InputFormatError, UnknownSymbolError
from data_pipeline.manifest import read_manifest
from tests.data_pipeline.shard_samples import read_samples

REPO = Path(__file__).resolve().parents[2]
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture
def small_pieces(monkeypatch):
    """Ranges of ~300 bytes and buckets of ~2 KB: many of each even for a small input."""
    monkeypatch.setattr(protein_join, "RANGE_BYTES", 300)
    monkeypatch.setattr(protein_join, "BUCKET_BYTES", 2000)


def _corpus(rng: random.Random, clusters: int = 60):
    """(records, table rows): UniProt-style and plain names; tables name members by accession or
    full name; some members in two clusters, rows of a cluster not together, some records in
    no cluster, and two records that share an accession."""
    records = []
    for index in range(clusters * 3):
        accession = f"Q{index:05d}"
        name = f"sp|{accession}|P{index}_HUMAN" if index == 0 or rng.random() < 0.5 else f"plain{index}"
        records.append((name, "".join(rng.choice(RESIDUES) for _ in range(rng.randint(5, 60)))))
    records.append(("tr|Q00000|DUP", "MKV"))  # a second record answering to Q00000
    table_name = {name: (name.split("|")[1] if "|" in name and rng.random() < 0.7 else name)
                  for name, _ in records if name != "tr|Q00000|DUP"}
    table_name[records[0][0]] = "Q00000"  # listed by accession, clustered: both records are members
    names = list(table_name)[1:]
    rng.shuffle(names)
    names.insert(rng.randrange(len(names) * 3 // 4), records[0][0])
    clustered, unclustered = names[: len(names) * 3 // 4], names[len(names) * 3 // 4:]
    rows = []
    reps = clustered[:clusters]
    for position, name in enumerate(clustered):
        rep = reps[position % clusters] if position >= clusters else name
        rows.append((table_name[rep], table_name[name]))
    for name in rng.sample(clustered, 10):  # also in a second cluster
        rep = rng.choice([r for r in reps if r != name])
        rows.append((table_name[rep], table_name[name]))
    rng.shuffle(rows)
    return records, rows, unclustered


def _write(folder: Path, records, rows, gz: bool = False, files: int = 1) -> tuple[list[str], Path]:
    """The records as `files` FASTA files (the last one gzipped with `gz`) and the table."""
    paths = []
    for index in range(files):
        share = records[index * len(records) // files:(index + 1) * len(records) // files]
        text = "".join(f">{name} some description\n" + "\n".join(seq[i:i + 25] for i in range(0, len(seq), 25))
                       + "\n" for name, seq in share).encode()
        last = gz and index == files - 1
        paths.append(folder / (f"seqs{index}.fa.gz" if last else f"seqs{index}.fa"))
        paths[-1].write_bytes(gzip.compress(text) if last else text)
    table = folder / "clusters.tsv"
    table.write_text("".join(f"{rep}\t{member}\n" for rep, member in rows))
    return [str(p) for p in paths], table


def _expected(records, rows, min_members: int, max_clusters):
    """The join as plain dicts and lists, straight from the definition."""
    by_key: dict[str, list[str]] = {}
    for name, seq in records:
        keys = [name] + ([name.split("|")[1]] if "|" in name else [])
        for key in keys:
            by_key.setdefault(key, []).append(seq)
    members: dict[str, list[str]] = {}
    for rep, member in rows:
        members.setdefault(rep, []).extend(by_key[member])
    sizes = {rep: sum(1 for r, _ in rows if r == rep) for rep in members}
    kept = [rep for rep in members if sizes[rep] >= min_members]  # dicts keep first-appearance order
    budget = None
    if max_clusters is not None:
        kept, budget = kept[:max_clusters], max(0, max_clusters - len(kept))
    members_named = {m for _, m in rows}
    alone = [(name, seq) for name, seq in records
             if name not in members_named and not ("|" in name and name.split("|")[1] in members_named)]
    samples = [(rep, members[rep]) for rep in kept]
    if min_members <= 1:
        samples += [(name, [seq]) for name, seq in alone][:budget]
    return sorted(samples), len(alone), len(members)


def _samples(build: Path) -> list:
    return sorted((meta["name"], sequences) for rows in read_samples(build).values() for meta, sequences in rows)


@pytest.mark.parametrize("min_members,max_clusters", [(1, None), (3, None), (1, 50), (1, 75), (2, 7), (1, 0)])
def test_join_equals_a_plain_dict_join(min_members, max_clusters, small_pieces, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    records, rows, _ = _corpus(rng)
    fastas, table = _write(tmp_path, records, rows, gz=max_clusters is None, files=2)  # gzip: read from a copy
    expected, alone, in_table = _expected(records, rows, min_members, max_clusters)
    if not expected:
        with pytest.raises(InputFormatError, match="nothing to build"):
            build_protein(fastas, str(tmp_path / "out"), clusters=str(table), min_members=min_members,
                          max_clusters=max_clusters, progress=False)
        return
    manifest = build_protein(fastas, str(tmp_path / "out"), clusters=str(table), min_members=min_members,
                             max_clusters=max_clusters, val_fraction=0.2, progress=False)
    assert _samples(tmp_path / "out") == expected, f"seed {seed}"
    stats = manifest["stats"]
    assert (stats["sequences"], stats["unclustered_sequences"], stats["clusters_in_table"], stats["clusters"]) == (
        len(records), alone, in_table, len(expected)), f"seed {seed}"
    assert not any((tmp_path / "out").glob(".build")) and sorted(os.listdir(tmp_path)) == sorted(
        ["out", table.name] + [Path(p).name for p in fastas])


@pytest.mark.slow
def test_any_workers_and_parts_give_the_same_bytes(small_pieces, tmp_path):
    records, rows, _ = _corpus(random.Random(), clusters=100)
    fastas, table = _write(tmp_path, records, rows)
    kwargs = dict(clusters=str(table), max_clusters=150, val_fraction=0.2, shard_mb=3000 / 2**20, progress=False)
    build_protein(fastas, str(tmp_path / "w1"), **kwargs)
    reference = {p.name: p.read_bytes() for p in (tmp_path / "w1").iterdir()}
    assert len(reference) >= 4
    for workers in (2, 3):
        build_protein(fastas, str(tmp_path / f"w{workers}"), workers=workers, **kwargs)
        assert {p.name: p.read_bytes() for p in (tmp_path / f"w{workers}").iterdir()} == reference, workers
    for index in range(3):
        build_protein(fastas, str(tmp_path / "parts"), part=f"{index}/3", workers=2, **kwargs)
    merge_parts(sorted((tmp_path / "parts").iterdir()), tmp_path / "merged", progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()} == reference


def _table_with(rows, line: int | None = None, text: str = "") -> str:
    """The table with a blank first line (line numbers count it), `text` inserted as line `line`."""
    lines = [""] + [f"{rep}\t{member}" for rep, member in rows]
    if line is not None:
        lines.insert(line - 1, text)
    return "\n".join(lines) + "\n"


def _fasta_lines(records) -> list[str]:
    return [line for name, seq in records for line in (f">{name}", seq)]


@pytest.mark.parametrize("damage", ["table_row", "missing_member", "no_name", "empty_record", "before_header",
                                    "unknown_residue", "not_utf8"])
def test_bad_input_is_one_error_naming_file_and_line(damage, small_pieces, tmp_path):
    records, rows, _ = _corpus(random.Random(), clusters=40)
    fasta_lines = _fasta_lines(records)
    table_text = _table_with(rows)
    expected = None
    if damage == "table_row":
        table_text = _table_with(rows, 57, "repOnly")
        expected = r"clusters.tsv line 57: expected 'representative<TAB>member', got 'repOnly'"
    elif damage == "missing_member":
        table_text = _table_with(rows, 61, "someRep\tnotInTheFasta")
        expected = r"clusters.tsv line 61: member 'notInTheFasta' is not in the FASTA input .*seqs.fa\)"
    elif damage == "no_name":
        fasta_lines.insert(150, ">")
        expected = r"seqs.fa line 151: header without a name"
    elif damage == "empty_record":
        fasta_lines.insert(150, ">lonely")
        expected = r"seqs.fa line 151: record 'lonely' has no sequence"
    elif damage == "before_header":
        fasta_lines.insert(0, "MKV")
        expected = r"seqs.fa line 1: sequence before the first '>' header"
    elif damage == "unknown_residue":
        name, _ = records[80]
        fasta_lines[161] = "MK*V"
        expected = rf"'\*' at position 2 in .*seqs.fa record '{name.replace('|', '[|]')}' \(line 161\)"
    fasta = tmp_path / "seqs.fa"
    fasta.write_bytes("\n".join(fasta_lines).encode() + b"\n")
    if damage == "not_utf8":
        fasta.write_bytes(fasta.read_bytes().replace(b"\n>", b"\n>\xff", 1))
        expected = r"seqs.fa line 3: not UTF-8 text"
    table = tmp_path / "clusters.tsv"
    table.write_text(table_text)
    error = UnknownSymbolError if damage == "unknown_residue" else InputFormatError
    with pytest.raises(error, match=expected) as caught:
        build_protein([str(fasta)], str(tmp_path / "out"), clusters=str(table), progress=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()


# VmHWM, not ru_maxrss: a child's ru_maxrss keeps the RSS of the (pytest) process it was forked from
def test_a_record_of_the_second_fasta_is_named_by_its_file_and_line(small_pieces, tmp_path):
    records, rows, _ = _corpus(random.Random())
    name = records[150][0]
    records[150] = (name, "MKV" * 30 + "*")
    fastas, table = _write(tmp_path, records, rows, files=2)
    line = next(n for n, text in enumerate(Path(fastas[1]).read_text().splitlines(), start=1)
                if text.startswith(f">{name} "))
    with pytest.raises(UnknownSymbolError, match=rf"'\*' at position 90 in .*seqs1.fa record "
                                                 rf"'{re.escape(name)}' \(line {line}\)"):
        build_protein(fastas, str(tmp_path / "out"), clusters=str(table), progress=False)


MEMORY_CHILD = """
import re, sys
sys.path.insert(0, {repo!r})
from data_pipeline import protein_join
from data_pipeline.build_protein import build_protein
protein_join.BUCKET_BYTES = 1 << 20  # ~14 and ~28 buckets: both inputs hold the same bytes per bucket
build_protein([{fasta!r}], {out!r}, clusters={table!r}, shard_mb=2, progress=False)
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_input(tmp_path):
    """40k and 80k proteins (13 and 26 MB of FASTA) with a table of clusters of 1-8: peak RSS of the
    two build processes within 10% (the table held as arrays grew 20 bytes a row; a whole
    FASTA in memory would add 13+ MB)."""
    rng = random.Random(0)
    letters = bytes.maketrans(bytes(range(256)), (RESIDUES.encode() * 13)[:256])
    peaks = []
    for count in (40_000, 80_000):
        fasta, table = tmp_path / f"p{count}.fa", tmp_path / f"p{count}.tsv"
        with open(fasta, "wb") as seq_out, open(table, "w") as table_out:
            index = 0
            while index < count:
                size = min(rng.randint(1, 8), count - index)
                for member in range(index, index + size):
                    seq = os.urandom(rng.randint(50, 550)).translate(letters)
                    lines = b"\n".join(seq[i:i + 60] for i in range(0, len(seq), 60))
                    seq_out.write(b">UP%09d\n" % member + lines + b"\n")
                    table_out.write(f"UP{index:09d}\tUP{member:09d}\n")
                index += size
        code = MEMORY_CHILD.format(repo=str(REPO), fasta=str(fasta), table=str(table),
                                   out=str(tmp_path / f"out{count}"))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        peaks.append(int(run.stdout.split()[-1]))
        assert read_manifest(tmp_path / f"out{count}")["stats"]["sequences"] == count
    assert peaks[1] < 1.1 * peaks[0], peaks
