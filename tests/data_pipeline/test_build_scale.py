"""Data builds at scale: the same bytes for any --workers and for --part + merge, a killed build
resumed, the paper's own input formats (genome + BED, OpenProteinSet tree, ICST, SMILES lists),
and memory that does not grow with the input."""
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline import build_output
from data_pipeline.build_dna import build_dna
from data_pipeline.build_molecules import build_molecules
from data_pipeline.build_output import merge_parts
from data_pipeline.build_protein import build_protein
from data_pipeline.demo import CLUSTERS, LAMBDA, PROTEINS
from data_pipeline.errors import InputFormatError
from data_pipeline.manifest import read_manifest
from launchers.main import main as bioxlstm
from tests.data_pipeline.shard_samples import read_samples

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ICST = FIXTURES / "icst_valid_4_domains.txt"
CHEMBL = FIXTURES / "chembl31_mini_train_300.smi"


def _lambda() -> str:
    with gzip.open(LAMBDA, "rt") as handle:
        return "".join(line.strip() for line in handle if not line.startswith(">"))


def _files(build: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(build.iterdir()) if p.is_file()}


def _samples(build: Path) -> dict:
    return read_samples(build)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    """Lambda cut into 3 records, one soft-masked stretch and one assembly gap (N-run)."""
    seq = _lambda()
    records = {"chrA": seq[:20000], "chrB": seq[20000:21000].lower() + seq[21000:36000] + "N" * 300 + seq[36000:40000],
               "chrC": seq[40000:]}
    path = tmp_path_factory.mktemp("genome") / "genome.fa"
    path.write_text("".join(f">{name} test\n" + "\n".join(s[i:i + 70] for i in range(0, len(s), 70)) + "\n"
                            for name, s in records.items()))
    return path


def _build_parts(build, count: int, root: Path, **kwargs) -> Path:
    for index in range(count):
        build(out=str(root / "parts"), part=f"{index}/{count}", progress=False, **kwargs)
    merge_parts(sorted((root / "parts").iterdir()), root / "merged", progress=False)
    return root / "merged"


CASES = {
    "dna": (lambda g: build_dna, lambda g: dict(inputs=[str(g)], window_len=2000, val_fraction=0.2,
                                                shard_mb=9000 / 2**20)),
    "protein": (lambda g: build_protein, lambda g: dict(inputs=[str(PROTEINS)], clusters=str(CLUSTERS),
                                                        min_members=3, max_clusters=120, shard_mb=20000 / 2**20)),
    "molecules": (lambda g: build_molecules, lambda g: dict(inputs=[str(ICST)], fmt="icst", val_fraction=0.3,
                                                            min_domain_size=2)),
    "scaffolds": (lambda g: build_molecules, lambda g: dict(inputs=[str(CHEMBL)], min_domain_size=1,
                                                            val_fraction=0.2, shard_mb=4000 / 2**20)),
}


@pytest.mark.slow
@pytest.mark.parametrize("modality", list(CASES))
def test_same_bytes_for_any_workers_and_for_parts_merged(modality, genome, tmp_path):
    build, kwargs = CASES[modality][0](genome), CASES[modality][1](genome)
    build(out=str(tmp_path / "w1"), progress=False, **kwargs)
    reference = _files(tmp_path / "w1")
    assert len(reference) >= 3 and "manifest.json" in reference
    for workers in ((2, 3) if modality == "dna" else (2,)):
        build(out=str(tmp_path / f"w{workers}"), workers=workers, progress=False, **kwargs)
        assert _files(tmp_path / f"w{workers}") == reference, f"--workers {workers}"
    merged = _build_parts(build, 3, tmp_path, **kwargs)
    assert _files(merged) == reference
    assert not (tmp_path / "w1" / ".build").exists()


def test_dna_parts_split_by_record_and_merge_checks_the_set(genome, tmp_path):
    kwargs = dict(window_len=2000, val_fraction=0.2, progress=False)
    for index in (0, 1):
        build_dna([str(genome)], str(tmp_path / "parts"), part=f"{index}/2", **kwargs)
    infos = [json.loads((p / "part.json").read_text()) for p in sorted((tmp_path / "parts").iterdir())]
    assert sum(i["counters"]["records"] for i in infos) == 3  # whole records: each is in one part
    with pytest.raises(Exception, match="parts 1/2 missing"):
        merge_parts([tmp_path / "parts" / "part-00000-of-00002"], tmp_path / "merged", progress=False)
    assert not (tmp_path / "merged").exists()
    # a finished part is kept (sha256 checked) ...
    payload = next((tmp_path / "parts" / "part-00000-of-00002").glob("payload-*.bin"))
    before = payload.stat().st_mtime_ns
    build_dna([str(genome)], str(tmp_path / "parts"), part="0/2", **kwargs)
    assert payload.stat().st_mtime_ns == before
    # ... and redone when its files no longer match part.json
    payload.write_bytes(payload.read_bytes()[:-1] + b"!")
    build_dna([str(genome)], str(tmp_path / "parts"), part="0/2", **kwargs)
    assert payload.stat().st_mtime_ns != before
    # ... and when an input changed since (size or mtime)
    redone = payload.stat().st_mtime_ns
    stat = genome.stat()
    os.utime(genome, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        build_dna([str(genome)], str(tmp_path / "parts"), part="0/2", **kwargs)
    finally:
        os.utime(genome, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert payload.stat().st_mtime_ns != redone
    build_dna([str(genome)], str(tmp_path / "parts"), part="0/2", **kwargs)  # stamps as part 1/2's again
    code = bioxlstm(["data", "merge", str(tmp_path / "parts"), "--out", str(tmp_path / "cli"), "--no-progress"])
    assert code == 0
    build_dna([str(genome)], str(tmp_path / "single"), **kwargs)
    assert _files(tmp_path / "cli") == _files(tmp_path / "single")
    assert sum(i["samples"] for i in infos) == sum(s["samples"] for s in read_manifest(tmp_path / "single")["splits"].values())


KILL_CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from data_pipeline import build_parts, shards
from data_pipeline.build_dna import build_dna
target, where = {kill_after}, {where!r}
calls = [0]
def killing(original):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no finally
        return original(*args, **kwargs)
    return wrapper
if where == "produce":
    build_parts.PartWriter.add = killing(build_parts.PartWriter.add)
else:
    shards.ShardWriter.write = killing(shards.ShardWriter.write)
build_dna([{genome!r}], {out!r}, window_len=2000, val_fraction=0.2, shard_mb=9000 / 2**20, workers={workers},
          progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where,workers", [("produce", 2), ("assemble", 1)])
def test_killed_build_resumes_to_the_uninterrupted_result(where, workers, genome, tmp_path, monkeypatch):
    build_dna([str(genome)], str(tmp_path / "clean"), window_len=2000, val_fraction=0.2, shard_mb=9000 / 2**20,
              progress=False)
    out = tmp_path / "killed"
    # produce: the second of three records' results (one per record here); assemble: the fifth sample
    code = KILL_CHILD.format(repo=str(REPO), kill_after=2 if where == "produce" else 5, where=where, genome=str(genome), out=str(out),
                             workers=workers)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr
    assert not (out / "manifest.json").exists()  # nothing reads as finished
    part = out / ".build" / "part-00000-of-00001"
    assert (part / "part.json").exists() == (where == "assemble")
    if where == "assemble":
        assert list(out.glob("train-*.tar"))  # shards written before the kill

        def redo(*args):
            raise AssertionError("the finished part was produced again")

        monkeypatch.setattr(build_output, "_produce_part", redo)  # the rerun must keep the finished part
    build_dna([str(genome)], str(out), window_len=2000, val_fraction=0.2, shard_mb=9000 / 2**20, progress=False)
    assert _files(out) == _files(tmp_path / "clean")
    assert not (out / ".build").exists() and not list(out.glob(".*"))


def test_block_fasta_readers_agree_with_the_line_reader(tmp_path):
    """The block-based readers the builds use give read_fasta's records, or its error, on fresh
    random FASTA-like text (blank lines, empty records, nameless headers, '>' inside a line,
    whitespace in sequences, no final newline), for block sizes that cut lines anywhere."""
    from data_pipeline.build_parallel import OrderedPool
    from data_pipeline.fasta_scan import read_bases, scan_fasta
    from data_pipeline.readers import fasta_records, read_fasta

    rng = random.Random()
    path = tmp_path / "x.fa"

    def outcome(read):
        try:
            return read()
        except InputFormatError as err:
            return str(err)

    for _ in range(150):
        parts = []
        for _ in range(rng.randint(0, 6)):
            kind = rng.random()
            if kind < 0.6:
                parts.append(">" + rng.choice(["", " ", "n1", "sp|P1|X desc", "r"]) + "\n" + "\n".join(
                    "".join(rng.choice("ACDE \t") for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(0, 3)))
                    + "\n")
            else:
                parts.append(rng.choice(["\n", "\n\n", "ACD>EF\n"]))
        path.write_text("".join(parts).rstrip("\n") if rng.random() < 0.3 else "".join(parts))
        expected = outcome(lambda: [(r.name, r.sequence, r.line) for r in read_fasta(path)])
        for size in (3, 11, 1 << 20):
            assert outcome(lambda: list(fasta_records(path, size))) == expected
            with OrderedPool(1) as pool:
                assert outcome(lambda: [(r.name, read_bases(path, r.pieces[0], 0, r.length).decode(), r.line)
                                        for r in scan_fasta(path, pool, block_bytes=size)]) == expected


def test_cluster_table_ranges_keep_every_row_and_its_line(tmp_path):
    """The table cut into ~64-byte ranges, each read by `table_range` as a worker does: every row
    lands once in the bucket of its member, and its id names its line, on a fresh shuffled
    table (a representative's rows apart) with blank lines, CRLF line ends and a byte-order mark."""
    from data_pipeline import protein_join
    from data_pipeline.byte_blocks import blocks, data_start

    rng = random.Random()
    rows = [(f"rep{c}", f"m{c}_{k}") for c in range(200) for k in range(rng.randint(1, 4))]
    rng.shuffle(rows)
    lines = []
    for rep, member in rows:
        lines.extend([""] * (rng.random() < 0.1) + [f"{rep}\t{member}"])
    path = tmp_path / "clusters.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    folder = tmp_path / "join"
    folder.mkdir()
    ranges = blocks(path, data_start(path), path.stat().st_size, 64)
    assert len(ranges) > 50
    first_lines = [1]
    for index, (start, end) in enumerate(ranges):
        _, newlines = protein_join.table_range(str(folder), 7, str(path), "clusters.tsv", index, start, end)
        first_lines.append(first_lines[-1] + newlines)
    found = []
    for bucket in range(7):
        for spill in folder.glob(f"m{bucket:05d}-*"):
            for entry in spill.read_text().splitlines():
                _, member, row, rep = entry.split("\t")
                assert protein_join._bucket(member, 7) == bucket
                index, number = protein_join._split_id(int(row))
                found.append((first_lines[index] + number, rep, member))
    assert sorted(found) == [(n, *text.split("\t")) for n, text in enumerate(lines, start=1) if text]


# ----------------------------------------------------------------------------------- BED
BED = "chrA\t0\t5000\ttrain\nchrA\t4000\t9000\tvalid\nchrB\t100\t1100\ttest\nchrB\t19000\t19300\ttrain\nchrC\t10\t60\ttrain\n"


def test_bed_intervals_become_exactly_those_samples_and_splits(genome, tmp_path):
    bed = tmp_path / "human-sequences.bed"
    bed.write_text(BED)
    gz = tmp_path / "genome.fa.gz"
    gz.write_bytes(gzip.compress(genome.read_bytes()))
    manifest = build_dna([str(gz)], str(tmp_path / "out"), bed=str(bed), shard_mb=3000 / 2**20, progress=False)
    records = {}
    for line in genome.read_text().split(">")[1:]:
        head, *rows = line.split("\n")
        records[head.split()[0]] = "".join(rows)
    samples = _samples(tmp_path / "out")
    expected = {"train": [("chrA", 0, 5000), ("chrB", 19000, 19300), ("chrC", 10, 60)],
                "validation": [("chrA", 4000, 9000)], "test": [("chrB", 100, 1100)]}
    for split, intervals in expected.items():
        got = sorted((meta["name"], seqs[0]) for meta, seqs in samples[split])
        assert got == sorted((f"{c}:{s}-{e}", records[c][s:e].upper()) for c, s, e in intervals)
    assert samples["test"][0][1][0][:900] == records["chrB"][100:1000].upper()  # soft-masked -> upper case
    assert manifest["stats"]["intervals_validation"] == 1 and manifest["splits"]["test"]["samples"] == 1
    # the gzip input's decompressed copy does not outlive the encoding (a part keeps only its samples)
    build_dna([str(gz)], str(tmp_path / "parts"), bed=str(bed), part="0/2", progress=False)
    assert sorted(p.name for p in (tmp_path / "parts" / "part-00000-of-00002").iterdir() if p.is_dir()) == []


@pytest.mark.parametrize("content,message", [
    ("chrA\t0\t100\n", "line 1: 3 tab-separated columns, expected 4"),
    ("chrA\t0\t100\ttrain\nchrA\t5\t50\tholdout\n", "line 2: split 'holdout' is not one of train, valid, test"),
    ("chrA\t0\t100\ttrain\nchrZ\t5\t50\ttest\n", "line 2: chromosome 'chrZ' is not in the FASTA input"),
    ("chrC\t0\t100\ttrain\nchrC\t8000\t9000\tvalid\n", "line 2: interval chrC:8000-9000 runs past the end of chrC"),
    ("chrA\t50\t10\ttrain\n", "line 1: interval chrA:50-10 is empty or negative"),
])
def test_malformed_bed_is_one_error_naming_file_and_line(content, message, genome, tmp_path):
    bed = tmp_path / "bad.bed"
    bed.write_text(content)
    with pytest.raises(InputFormatError) as raised:
        build_dna([str(genome)], str(tmp_path / "out"), bed=str(bed), progress=False)
    assert str(raised.value).startswith(f"{bed} line") and message in str(raised.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- OpenProteinSet tree
def _uniprot(n: int) -> list[str]:
    sequences, current = [], []
    with gzip.open(PROTEINS, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                if current:
                    sequences.append("".join(current))
                    if len(sequences) == n:
                        break
                current = []
            else:
                current.append(line.strip())
    return sequences


def _a3m_tree(root: Path) -> dict:
    """3 clusters of real UniProt sequences as A3M: the query, and hits with gaps ('-') and
    lower-case insertions, as HHblits writes them. Returns cluster -> expected members."""
    rng = random.Random(3)
    expected = {}
    seqs = _uniprot(9)
    for c, cluster in enumerate(["A0A009", "B1C2D3", "Q9XYZ1"]):
        lines, members = [], []
        for m, seq in enumerate(seqs[3 * c:3 * c + 3]):
            seq = seq[:120]
            aligned = list(seq)
            if m:
                for i in rng.sample(range(len(seq)), 10):
                    aligned[i] = aligned[i].lower()  # insertion relative to the query
                aligned.insert(7, "-")
                aligned.insert(40, "--")
            lines.append(f">{cluster}_{m} hit\n{''.join(aligned)}\n")
            members.append(seq)
        folder = root / cluster / "a3m"
        folder.mkdir(parents=True)
        (folder / "uniclust30.a3m").write_text("".join(lines))
        expected[cluster] = members
    return expected


def test_openproteinset_tree_with_split_lists(tmp_path):
    expected = _a3m_tree(tmp_path / "tree")
    (tmp_path / "valid.txt").write_text("B1C2D3\n")
    (tmp_path / "cluster_testing_set.txt").write_text("\nQ9XYZ1\n")
    manifest = build_protein([str(tmp_path / "tree")], str(tmp_path / "out"), validation_list=str(tmp_path / "valid.txt"),
                             test_list=str(tmp_path / "cluster_testing_set.txt"), progress=False)
    samples = _samples(tmp_path / "out")
    assert {split: [(m["name"], s) for m, s in rows] for split, rows in samples.items()} == {
        "train": [("A0A009", expected["A0A009"])], "validation": [("B1C2D3", expected["B1C2D3"])],
        "test": [("Q9XYZ1", expected["Q9XYZ1"])]}
    assert manifest["stats"]["family_files"] == 3


def test_openproteinset_tree_errors_name_the_place(tmp_path):
    _a3m_tree(tmp_path / "tree")
    (tmp_path / "list.txt").write_text("A0A009\nNOPE\n")
    with pytest.raises(InputFormatError, match=r"list.txt line 2: cluster 'NOPE' is not in the input"):
        build_protein([str(tmp_path / "tree")], str(tmp_path / "o1"), test_list=str(tmp_path / "list.txt"),
                      progress=False)
    (tmp_path / "tree" / "ZZZ" / "a3m").mkdir(parents=True)
    with pytest.raises(InputFormatError, match=r"ZZZ: no a3m/uniclust30.a3m in this cluster folder"):
        build_protein([str(tmp_path / "tree")], str(tmp_path / "o2"), progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ----------------------------------------------------------------------------- molecules
def _canonical(smiles: str):
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def test_icst_domains_are_lines_and_smiles_lists_are_molecules(tmp_path):
    lines = ICST.read_text().splitlines()
    broken = tmp_path / "icst.txt"
    broken.write_text("\n".join(lines[:3] + [lines[3] + ".C1CC"]) + "\n")  # an unclosed ring in domain 4
    manifest = build_molecules([str(broken)], str(tmp_path / "icst"), fmt="icst", val_fraction=0, progress=False)
    rows = _samples(tmp_path / "icst")["train"]
    assert [m["name"] for m, _ in rows] == [f"icst.txt:{i}" for i in range(1, 5)]
    for (meta, molecules), line in zip(rows, lines):
        assert molecules == [_canonical(s) for s in line.split(".")] and meta["sequences"] == 30
    assert manifest["stats"]["invalid_smiles"] == 1 and "icst.txt:4: 'C1CC'" in manifest["stats"]["invalid_examples"][0]
    assert manifest["stats"]["molecules_read"] == 121

    manifest = build_molecules([str(CHEMBL)], str(tmp_path / "chembl"), fmt="smiles", val_fraction=0.1, progress=False)
    samples = _samples(tmp_path / "chembl")
    assert sum(len(r) for r in samples.values()) == 300 == manifest["stats"]["domains"]
    assert all(len(molecules) == 1 for rows in samples.values() for _, molecules in rows)
    assert sorted(m[0] for rows in samples.values() for _, m in rows) == sorted(
        _canonical(s) for s in CHEMBL.read_text().split())


# --------------------------------------------------------------------------------- memory
# VmHWM, not ru_maxrss: a child's ru_maxrss keeps the RSS of the (pytest) process it was forked
# from, which hid the build's own peak under pytest's
MEMORY_CHILD = """
import re, sys
sys.path.insert(0, {repo!r})
from data_pipeline.build_dna import build_dna
build_dna([{fasta!r}], {out!r}, progress=False)
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_input(tmp_path):
    """One record of 24 and of 48 Mbp (a whole-record reader holds 3-4 bytes per base, 80+ MB
    more): peak RSS of the two build processes within 10%. (Smaller inputs do not reach the
    steady state of the bounded buffers, three 8 MB blocks: 12 Mbp peaks ~9 MB lower.)"""
    rng = random.Random(0)
    peaks = []
    for mbp in (24, 48):
        fasta = tmp_path / f"g{mbp}.fa"
        block = "".join(rng.choice("ACGTacgt") for _ in range(100_000))
        with open(fasta, "w") as handle:
            handle.write(">chr1\n")
            for i in range(mbp * 10):
                handle.write("\n".join(block[j:j + 80] for j in range(0, len(block), 80)) + "\n")
        code = MEMORY_CHILD.format(repo=str(REPO), fasta=str(fasta), out=str(tmp_path / f"out{mbp}"))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        peaks.append(int(run.stdout.split()[-1]))
        assert read_manifest(tmp_path / f"out{mbp}")["stats"]["bases"] == mbp * 1_000_000
    assert peaks[1] < 1.1 * peaks[0], peaks


@pytest.mark.parametrize("rank_bits", [1, 12])
def test_validation_split_is_the_smallest_ranked_groups(rank_bits, genome, tmp_path, monkeypatch):
    """The split threshold comes from the parts' rank counts plus one bucket's ranks; it must pick
    exactly the round(val_fraction * groups) groups of smallest seeded sha256 rank, computed here
    independently (2 buckets: hundreds of ranks share one; 4096: a few), also over merged parts."""
    import hashlib

    from data_pipeline import build_parts

    monkeypatch.setattr(build_parts, "RANK_BITS", rank_bits)
    monkeypatch.setattr(build_output, "RANK_BITS", rank_bits)
    seed = random.randrange(1000)
    kwargs = dict(inputs=[str(genome)], window_len=150, val_fraction=0.23, seed=seed)
    merged = _build_parts(build_dna, 3, tmp_path, **kwargs)
    build_dna(out=str(tmp_path / "single"), progress=False, **kwargs)
    samples = _samples(tmp_path / "single")
    names = [meta["name"] for rows in samples.values() for meta, _ in rows]
    rank = {name: int(hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()[:16], 16) for name in names}
    n_val = round(0.23 * len(names))
    assert len(names) > 250 and {meta["name"] for meta, _ in samples["validation"]} == set(
        sorted(names, key=rank.get)[:n_val])
    assert _files(merged) == _files(tmp_path / "single")


WORKER_DIES = """
import signal, sys
sys.path.insert(0, {repo!r})
from data_pipeline.build_parallel import OrderedPool
from data_pipeline.errors import WorkerDiedError
with OrderedPool(2) as pool:
    assert list(pool.map(abs, [[-1, 2], [-3]])) == [[1, 2], [3]]
    try:
        list(pool.map(signal.raise_signal, [[signal.SIGKILL]]))  # the worker running it is killed
    except WorkerDiedError as err:
        print("stopped:", err)
"""


def test_a_killed_worker_stops_the_build_with_one_error():
    """multiprocessing.Pool waited forever for the result of a killed worker (an OOM kill on a
    cluster node would have hung the build); the pool now raises one error."""
    run = subprocess.run([sys.executable, "-c", WORKER_DIES.format(repo=str(REPO))], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("stopped: a build worker process died") and "rerun the same command" in run.stdout
