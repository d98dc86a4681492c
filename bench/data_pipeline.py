"""CPU throughput of the data pipeline on the bundled demo data.

    python bench/data_pipeline.py                 # all modalities
    python bench/data_pipeline.py --modality dna --context-len 2048 --batches 100
    python bench/data_pipeline.py --share        # loss-bearing share, packing off and on

Build throughput = raw (uncompressed) input megabytes per second of `data build`, RDKit
validation and scaffold grouping included for molecules. Loader throughput = loss-bearing
tokens/s of one logical worker (one process): shard read + zstd + tokenize + format + pack into
tensors, with packing off and on. Share = loss-bearing tokens / row positions over the first
max(16, 2^21 / S) rows of the train stream, at S = 2^11, 2^13, 2^15, 2^17.
"""
import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.build_dna import build_dna  # noqa: E402
from data_pipeline.build_molecules import build_molecules  # noqa: E402
from data_pipeline.build_protein import build_protein  # noqa: E402
from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.demo import CLUSTERS, GENOME, LAMBDA, MOLECULES, PROTEINS  # noqa: E402
from data_pipeline.loader import build_loader  # noqa: E402


def raw_bytes(path: Path, max_lines: int | None = None) -> int:
    with gzip.open(path, "rb") as handle:
        if max_lines is None:
            return sum(len(block) for block in iter(lambda: handle.read(1 << 20), b""))
        return sum(len(line) for line, _ in zip(handle, range(max_lines)))


def build(modality: str, out: Path, molecules: int) -> tuple[float, float]:
    start = time.perf_counter()
    if modality == "dna":
        build_dna([str(LAMBDA), str(GENOME)], str(out), progress=False)
        size = raw_bytes(LAMBDA) + raw_bytes(GENOME)
    elif modality == "protein":
        build_protein([str(PROTEINS)], str(out), clusters=str(CLUSTERS), progress=False)
        size = raw_bytes(PROTEINS) + raw_bytes(CLUSTERS)
    else:
        build_molecules([str(MOLECULES)], str(out), max_molecules=molecules, progress=False)
        size = raw_bytes(MOLECULES, molecules)
    return size / 2**20, time.perf_counter() - start


def _loader(modality: str, shards: Path, context_len: int, batch: int, packing: bool):
    cfg = DataConfig(modality=modality, shards=str(shards), num_workers=1, objective="clm",
                     verify_checksums=False, packing=packing)
    return build_loader(cfg, "train", context_len, batch)


def load(modality: str, shards: Path, context_len: int, batch: int, batches: int, packing: bool) -> float:
    stream = iter(_loader(modality, shards, context_len, batch, packing))
    next(stream)  # opens shards
    start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += int((next(stream)["labels"] != -100).sum())
    return tokens / (time.perf_counter() - start)


SHARE_LENGTHS = (2 ** 11, 2 ** 13, 2 ** 15, 2 ** 17)


def loss_share(modality: str, shards: Path, context_len: int, packing: bool) -> float:
    """Loss-bearing tokens per row position over the first max(16, 2^21 / S) rows."""
    stream = iter(_loader(modality, shards, context_len, 1, packing))
    rows = max(16, 2 ** 21 // context_len)
    loss = sum(int((next(stream)["labels"] != -100).sum()) for _ in range(rows))
    return loss / (rows * context_len)


def share_table(root: Path, modalities: list, molecules: int) -> None:
    print(f"{'modality':<10} {'packing':<8} " + " ".join(f"{f'2^{S.bit_length() - 1}':>7}" for S in SHARE_LENGTHS))
    for modality in modalities:
        out = root / modality
        build(modality, out, molecules)
        for packing in (False, True):
            shares = [loss_share(modality, out, S, packing) for S in SHARE_LENGTHS]
            print(f"{modality:<10} {'on' if packing else 'off':<8} " + " ".join(f"{100 * x:>6.1f}%" for x in shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", choices=("dna", "protein", "molecules", "all"), default="all")
    parser.add_argument("--context-len", type=int, default=1024, help="loader context length (default 1024)")
    parser.add_argument("--micro-batch", type=int, default=8, help="loader micro-batch size (default 8)")
    parser.add_argument("--batches", type=int, default=50, help="batches timed per loader (default 50)")
    parser.add_argument("--molecules", type=int, default=20000, help="SMILES read for the molecule build")
    parser.add_argument("--share", action="store_true",
                        help="print the share of loss-bearing tokens at 2^11..2^17 with packing off and on")
    args = parser.parse_args()
    modalities = ["dna", "protein", "molecules"] if args.modality == "all" else [args.modality]
    if args.share:
        with tempfile.TemporaryDirectory() as root:
            share_table(Path(root), modalities, args.molecules)
        return
    print(f"{'modality':<10} {'input MB':>9} {'build s':>8} {'build MB/s':>11} "
          f"{'loader tok/s/worker unpacked':>29} {'packed':>10}")
    with tempfile.TemporaryDirectory() as root:
        for modality in modalities:
            out = Path(root) / modality
            megabytes, seconds = build(modality, out, args.molecules)
            rates = [load(modality, out, args.context_len, args.micro_batch, args.batches, packing)
                     for packing in (False, True)]
            print(f"{modality:<10} {megabytes:>9.2f} {seconds:>8.2f} {megabytes / seconds:>11.2f} "
                  f"{rates[0]:>29,.0f} {rates[1]:>10,.0f}")
    print(f"(context {args.context_len}, micro-batch {args.micro_batch}, {args.batches} batches, "
          f"{os.cpu_count()} CPUs, loss-bearing tokens counted)")


if __name__ == "__main__":
    main()
