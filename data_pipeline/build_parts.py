"""A build part: the encoded samples of one share of the input, spilled to disk.

Builders stream samples (in a fixed input order) through worker processes that normalize,
count and zstd-compress them; each worker appends the compressed members to its own
`payload-<pid>.bin` (`spill_batch`: the bytes never pass through the main process), and the
main process's `PartWriter` writes one JSON line per sample to `index.jsonl` (where its bytes
are), then `part.json` (counts, stats and the sha256 of every file) last. A part folder
without a valid `part.json` is unfinished and is redone; a finished one is kept and reused.
`--part I/N` owns the groups whose stable hash is I mod N, so the parts of a build are disjoint
and their merge is the whole build.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from data_pipeline.errors import ConfigError, ManifestError
from data_pipeline.shards import ZSTD_LEVEL, sha256_file

PART_FORMAT = "bioxlstm-build-part-2"  # 2: one payload file per worker, split ranks counted by RANK_BITS
RANK_BITS = 12  # split ranks are 64-bit; their top 12 bits count them into 4096 buckets
PART_FILE = "part.json"
INDEX_FILE = "index.jsonl"
PAYLOAD_GLOB = "payload-*.bin"
INVALID_EXAMPLES = 20

_compressor = None
_spills: dict = {}  # part folder -> this process's open payload file


def stable_hash(text: str) -> int:
    """64-bit hash that is the same in every process and run (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def group_rank(group: str, seed: int) -> int:
    """The split rank of a group: the first 64 bits of the sha256 the split always used."""
    return int(hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()[:16], 16)


def parse_part(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N); None -> the whole build (0, 1)."""
    if text is None:
        return 0, 1
    try:
        index, count = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--part {text!r}: write I/N, e.g. 0/8 for the first of 8 parts") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--part {text!r}: need 0 <= I < N")
    return index, count


def part_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}"


@dataclass
class Encoded:
    """What a worker returns for one input item: its samples (maybe none) and counters."""

    samples: list = field(default_factory=list)  # EncodedSample tuples, see encode_sample
    counters: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # [order, text] of invalid input, first few
    vocab: set = field(default_factory=set)


def encode_sample(order: tuple, name: str, sequences: list[str], tokens: int, split_group: str,
                  layout_group: str, split: str | None = None) -> tuple:
    """Compress one sample's members exactly as the shard holds them (worker side)."""
    global _compressor
    if _compressor is None:
        _compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    text = "\n".join(sequences).encode("ascii")
    meta = json.dumps({"name": name, "group": split_group, "sequences": len(sequences), "tokens": tokens},
                      sort_keys=True, separators=(",", ":")).encode()
    raw_bytes = sum(len(s) + 1 for s in sequences)
    return (list(order), split, split_group, layout_group, raw_bytes, tokens,
            _compressor.compress(text), _compressor.compress(meta))


def spill_batch(fn, folder: str, seed: int, batch: list) -> list[Encoded]:
    """Worker side: `fn(item) -> Encoded` for each item, the compressed members appended to this
    process's payload file of the part and replaced by their place (file, offset, lengths); the
    group's split rank and the layout hash are computed here too, off the main process."""
    results = [fn(item) for item in batch]
    handle = _spills.get(folder)
    if handle is None:
        handle = _spills[folder] = open(Path(folder) / f"payload-{os.getpid()}.bin", "ab")
    name = Path(handle.name).name
    offset = handle.tell()
    for encoded in results:
        placed = []
        for order, split, group, layout, raw_bytes, tokens, seq_zst, meta_zst in encoded.samples:
            handle.write(seq_zst)
            handle.write(meta_zst)
            rank = group_rank(group, seed) if split is None else 0
            placed.append((order, split, group, rank, stable_hash(layout), raw_bytes, tokens,
                           name, offset, len(seq_zst), len(meta_zst)))
            offset += len(seq_zst) + len(meta_zst)
        encoded.samples = placed
    handle.flush()  # the main process indexes these bytes as soon as the results arrive
    return results


def close_spills(folder: Path) -> None:
    """Close this process's payload file of `folder` (the inline, one-worker build writes there too)."""
    handle = _spills.pop(str(folder), None)
    if handle is not None:
        handle.close()


class PartWriter:
    """Appends encoded samples of one part; `finish()` writes part.json, the finished mark."""

    def __init__(self, folder: Path, seed: int):
        self.folder = folder
        self.seed = seed
        if folder.exists():
            shutil.rmtree(folder)  # unfinished leftovers of an interrupted run
        close_spills(folder)
        folder.mkdir(parents=True)
        self._index = open(folder / INDEX_FILE, "w", encoding="utf-8")
        self.samples = 0
        self.groups = 0
        self.hashed_groups = 0  # groups split by hash (not by an explicit split file)
        self.counters: dict = {}
        self.examples: list = []
        self.vocab: set = set()
        self._previous_group = None
        self._previous_order = None
        self.rank_counts = [0] * (1 << RANK_BITS)  # hashed groups per rank bucket: the split's threshold

    def add(self, encoded: Encoded) -> None:
        for key, value in encoded.counters.items():
            self.counters[key] = self.counters.get(key, 0) + value
        self.examples.extend(encoded.examples)
        del self.examples[INVALID_EXAMPLES:]
        self.vocab |= encoded.vocab
        for sample in encoded.samples:
            order, split, group, rank, layout_hash, raw_bytes, tokens, file, offset, seq_len, meta_len = sample
            if self._previous_order is not None and order <= self._previous_order:
                raise AssertionError(f"samples out of order: {order} after {self._previous_order}")
            self._previous_order = order
            new_group = group != self._previous_group
            self._previous_group = group
            self.groups += new_group
            if new_group and split is None:
                self.hashed_groups += 1
                self.rank_counts[rank >> (64 - RANK_BITS)] += 1
            self._index.write(json.dumps([order, split, rank, int(new_group), layout_hash, raw_bytes, tokens,
                                          file, offset, seq_len, meta_len]) + "\n")
            self.samples += 1

    def files(self) -> list[Path]:
        """The part's data files (its payload files and index), in a fixed order."""
        return sorted(self.folder.glob(PAYLOAD_GLOB)) + [self.folder / INDEX_FILE]

    def finish(self, info: dict, digests: dict[str, str]) -> dict:
        """Write part.json, the finished mark; `digests` are the `synced_digest` of `files()`
        (computed in the workers), taken after `close()`."""
        part = dict(info, format=PART_FORMAT, samples=self.samples, groups=self.groups,
                    hashed_groups=self.hashed_groups, rank_counts=self.rank_counts,
                    counters=self.counters, examples=self.examples, vocab=sorted(self.vocab),
                    files=digests)
        temp = self.folder / f".{PART_FILE}.partial"
        temp.write_text(json.dumps(part, indent=1, sort_keys=True) + "\n")
        os.replace(temp, self.folder / PART_FILE)
        return part

    def close(self) -> None:
        """Stop writing; `synced_digest` then puts each of `files()` on disk and hashes it."""
        close_spills(self.folder)
        self._index.close()

    def abort(self) -> None:
        close_spills(self.folder)
        self._index.close()


def read_part(folder: Path, check_files: bool = True, digests_of=None) -> dict | None:
    """The part.json of a finished part whose files match their sha256, else None.
    `digests_of(paths) -> [sha256]` may hash them in parallel (default: one after another)."""
    try:
        part = json.loads((folder / PART_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(part, dict) or part.get("format") != PART_FORMAT:
        return None
    if check_files:
        files = part.get("files", {})
        paths = [folder / name for name in files]
        if not all(path.is_file() for path in paths):
            return None
        if list((digests_of or _serial_digests)(paths)) != list(files.values()):
            return None
    return part


def synced_digest(path: Path) -> str:
    """fsync a finished part file, then its sha256 (run by the workers, one file each)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return sha256_file(path)


def _serial_digests(paths: list[Path]) -> list[str]:
    return [sha256_file(path) for path in paths]


def require_part(folder: Path, digests_of=None) -> dict:
    part = read_part(Path(folder), digests_of=digests_of)
    if part is None:
        raise ManifestError(f"{folder}: not a finished build part (no valid {PART_FILE}, or its files "
                            "changed); rerun its `bioxlstm data build ... --part I/N`")
    return part


def iter_index(folder: Path):
    """(order, split, rank, new_group, layout, raw_bytes, tokens, file, offset, seq_len, meta_len) per sample."""
    with open(folder / INDEX_FILE, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)
