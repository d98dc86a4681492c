"""Data builds at corpus scale: wall time and peak RSS per modality, two sizes 10x apart, 1 and 2 workers.

Synthetic inputs are generated here (a soft-masked genome with N-runs; random proteins with a
cluster table; real SMILES from the demo file repeated). Each build runs in a fresh child
process; peak RSS is VmHWM of the build's main process and the largest of its worker
processes (read every 20 ms while they live; not ru_maxrss, which a child inherits from the
process it was forked from), CPU seconds are the main process's and all workers' together
(how much of the work the workers took; on a loaded machine the wall time says little).
A probe before and after measures what 2 processes can get on the machine. Usage:

    python bench/data_build.py --out /tmp/bench_data [--sizes small|large|both] [--modalities dna,protein,molecules]

Prints one JSON line per build and a markdown table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {  # modality -> (small, large): 10x apart
    "dna": (40_000_000, 400_000_000),  # bases
    "protein": (100_000, 1_000_000),  # sequences
    "molecules": (20_000, 200_000),  # SMILES lines
}


def make_genome(path: Path, bases: int, records: int = 4, seed: int = 0) -> None:
    """`records` chromosomes: random ACGT, every 7th 10 kbp block soft-masked, a 5 kbp N gap per 1 Mbp."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGT", dtype=np.uint8)
    per_record = bases // records
    with open(path, "wb") as handle:
        for r in range(records):
            handle.write(f">chr{r + 1} synthetic\n".encode())
            for start in range(0, per_record, 1_000_000):
                n = min(1_000_000, per_record - start)
                block = alphabet[rng.integers(0, 4, n)]
                for masked in range(0, n, 70_000):
                    block[masked:masked + 10_000] += 32  # lower case
                block[n // 2:n // 2 + 5_000] = ord("N")
                lines = [block[i:i + 60].tobytes() for i in range(0, n, 60)]
                handle.write(b"\n".join(lines) + b"\n")


def make_proteins(fasta: Path, table: Path, sequences: int, seed: int = 0) -> None:
    """Random sequences (50-550 aa) in clusters of 1-8 members (table in MMseqs2 layout)."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    with open(fasta, "wb") as seq_out, open(table, "w") as table_out:
        index = 0
        while index < sequences:
            size = int(min(rng.integers(1, 9), sequences - index))
            rep = f"UP{index:09d}"
            for member in range(index, index + size):
                name = f"UP{member:09d}"
                length = int(rng.integers(50, 551))
                seq = alphabet[rng.integers(0, 20, length)].tobytes()
                seq_out.write(b">" + name.encode() + b"\n" + b"\n".join(seq[i:i + 60] for i in range(0, length, 60)) + b"\n")
                table_out.write(f"{rep}\t{name}\n")
            index += size


def make_smiles(path: Path, lines: int) -> None:
    from data_pipeline.demo import MOLECULES

    with gzip.open(MOLECULES, "rt") as handle:
        source = [line.split()[0] for line in handle if line.strip()]
    with open(path, "w") as out:
        for i in range(lines):
            out.write(source[i % len(source)] + "\n")


CHILD = """
import json, os, re, resource, sys, threading, time
sys.path.insert(0, {repo!r})

def peak_kb(pid):
    try:
        return int(re.search(r"VmHWM:\\s+(\\d+)", open(f"/proc/{{pid}}/status").read()).group(1))
    except (OSError, AttributeError):
        return 0

worker_peaks, done = {{}}, threading.Event()

def watch_workers():  # VmHWM of every child process, read every 20 ms while it lives
    while not done.wait(0.02):
        for task in os.listdir("/proc/self/task"):
            try:
                children = open(f"/proc/self/task/{{task}}/children").read().split()
            except OSError:
                continue
            for pid in children:
                worker_peaks[pid] = max(worker_peaks.get(pid, 0), peak_kb(pid))

threading.Thread(target=watch_workers, daemon=True).start()
start = time.perf_counter()
{call}
wall = time.perf_counter() - start
done.set()
main, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"wall_s": wall, "main_rss_mb": peak_kb("self") / 1024,
                  "worker_rss_mb": max(worker_peaks.values(), default=0) / 1024,
                  "main_cpu_s": main.ru_utime + main.ru_stime, "worker_cpu_s": workers.ru_utime + workers.ru_stime}}))
"""


def run_build(call: str) -> dict:
    code = CHILD.format(repo=str(REPO), call=call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(modality: str, size_index: int, workers: int, root: Path) -> dict:
    size = SIZES[modality][size_index]
    inputs = root / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    out = root / f"{modality}-{size}-w{workers}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    if modality == "dna":
        fasta = inputs / f"genome_{size}.fa"
        if not fasta.exists():
            make_genome(fasta, size)
        call = (f"from data_pipeline.build_dna import build_dna\n"
                f"build_dna([{str(fasta)!r}], {str(out)!r}, workers={workers}, progress=False)")
        input_bytes = fasta.stat().st_size
    elif modality == "protein":
        fasta, table = inputs / f"proteins_{size}.fa", inputs / f"proteins_{size}.tsv"
        if not fasta.exists():
            make_proteins(fasta, table, size)
        call = (f"from data_pipeline.build_protein import build_protein\n"
                f"build_protein([{str(fasta)!r}], {str(out)!r}, clusters={str(table)!r}, workers={workers}, "
                f"progress=False)")
        input_bytes = fasta.stat().st_size + table.stat().st_size
    else:
        smi = inputs / f"smiles_{size}.smi"
        if not smi.exists():
            make_smiles(smi, size)
        call = (f"from data_pipeline.build_molecules import build_molecules\n"
                f"build_molecules([{str(smi)!r}], {str(out)!r}, workers={workers}, progress=False)")
        input_bytes = smi.stat().st_size
    result = run_build(call)
    manifest = json.loads((out / "manifest.json").read_text())
    samples = sum(s["samples"] for s in manifest["splits"].values())
    return dict(modality=modality, size=size, workers=workers, input_mb=round(input_bytes / 2**20, 1),
                samples=samples, wall_s=round(result["wall_s"], 2), main_rss_mb=round(result["main_rss_mb"]),
                worker_rss_mb=round(result["worker_rss_mb"]), main_cpu_s=round(result["main_cpu_s"], 2),
                worker_cpu_s=round(result["worker_cpu_s"], 2),
                mb_per_s=round(input_bytes / 2**20 / result["wall_s"], 2), units_per_s=round(size / result["wall_s"]))


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def parallel_capacity(n: int = 20_000_000) -> dict:
    """What 2 processes can get on this machine now: a pure-Python loop split in two halves
    (1.0 = no spare core; 2.0 = two free cores). Read the worker speedups against it."""
    import multiprocessing
    import os

    start = time.perf_counter()
    _spin(n)
    one = time.perf_counter() - start
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [10, 10])
        start = time.perf_counter()
        pool.map(_spin, [n // 2, n // 2])
        two = time.perf_counter() - start
    return {"probe": "2-process speedup of a pure CPU loop", "speedup": round(one / two, 2),
            "loadavg": [round(x, 1) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_data_build")
    parser.add_argument("--sizes", choices=("small", "large", "both"), default="both")
    parser.add_argument("--modalities", default="dna,protein,molecules")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    root = Path(args.out)
    sizes = {"small": [0], "large": [1], "both": [0, 1]}[args.sizes]
    print(json.dumps(parallel_capacity()), flush=True)
    rows = []
    for modality in args.modalities.split(","):
        for size_index in sizes:
            for workers in map(int, args.workers.split(",")):
                row = bench(modality, size_index, workers, root)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(json.dumps(parallel_capacity()), flush=True)
    print("\n| modality | input | size | workers | samples | wall s | MB/s | size/s | CPU s main / workers "
          "| peak RSS main / worker MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['modality']} | {r['input_mb']} MB | {r['size']:,} | {r['workers']} | {r['samples']:,} | "
              f"{r['wall_s']} | {r['mb_per_s']} | {r['units_per_s']:,} | {r['main_cpu_s']} / {r['worker_cpu_s']} | "
              f"{r['main_rss_mb']} / {r['worker_rss_mb']} |")


if __name__ == "__main__":
    main()
