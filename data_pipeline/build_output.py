"""From build parts to a finished build: group-level split, shard layout, manifest.

Every builder streams its samples into one or more parts (`build_parts`); this module is the
only place that turns parts into shards, so all modalities share the same determinism,
atomicity and no-overwrite guarantees. The samples of all parts are read back merged in input
order, so a build made of N parts (`--part I/N`, then `bioxlstm data merge`) has the same
shards and manifest as one build, for any number of workers. Memory stays bounded: shards are
written one at a time from the parts' files, and the split needs only the ranks of the
validation groups.

A build that fails while writing (disk full, no permission) removes every file and folder it
created, so it leaves a finished build or nothing of its own; an interrupted one (Ctrl-C,
killed) leaves no manifest, and its rerun keeps a finished part (checked by sha256).
"""
from __future__ import annotations

import heapq
import shutil
from array import array
from collections import deque
from functools import partial
from pathlib import Path
from typing import Callable

from data_pipeline.build_parallel import OrderedPool
from data_pipeline.build_parts import (INVALID_EXAMPLES, RANK_BITS, PartWriter, iter_index, parse_part, part_name,
                                       read_part, require_part, spill_batch, stable_hash, synced_digest)
from data_pipeline.build_progress import build_progress
from data_pipeline.errors import BuildWriteError, ConfigError, InputFormatError, OutputExistsError
from data_pipeline.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, SPLITS, write_manifest
from data_pipeline.shards import ShardWriter, sha256_file

WORK_DIR = ".build"
BUILD_SPLITS = SPLITS + ("test",)  # 'test' only from explicit split files (BED, cluster lists)


def refuse_finished_build(out_dir: str | Path) -> None:
    """Builders call this before reading any input, so the refusal comes at once."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory; choose another --out")
    if (out / MANIFEST_NAME).exists():
        raise OutputExistsError(f"{out / MANIFEST_NAME} exists: {out} holds a finished build; "
                                "choose another --out or delete it yourself")


def _missing_dirs(out: Path) -> list[Path]:
    """`out` and the parents a build would create for it, deepest first."""
    missing = []
    while not out.exists() and out != out.parent:
        missing.append(out)
        out = out.parent
    return missing


def _remove_own_files(files: list[Path], created_dirs: list[Path]) -> None:
    """Undo a failed build: its shards, temporaries, manifest and work folder, then the folders it created."""
    for path in files:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            continue
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.partial").unlink(missing_ok=True)
    for folder in created_dirs:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty: someone else wrote there meanwhile; leave it and its parents


class BuildContext:
    """What a builder's `produce` gets: the worker pool, which groups this part owns, and the
    sink for encoded samples and main-side counters."""

    def __init__(self, writer: PartWriter, pool: OrderedPool, index: int, count: int, progress: bool):
        self.writer = writer
        self.pool = pool
        self.index, self.count = index, count
        self.show_progress = progress

    def owns(self, key: str) -> bool:
        return stable_hash(key) % self.count == self.index

    def owns_bucket(self, bucket: int) -> bool:
        return bucket % self.count == self.index

    def count_stat(self, name: str, value: int = 1) -> None:
        self.writer.counters[name] = self.writer.counters.get(name, 0) + value

    def encode(self, fn: Callable, batch_iter) -> None:
        """Run `fn(item) -> Encoded` over batches in the pool (the workers write the compressed
        bytes themselves); index the results in input order."""
        spill = partial(spill_batch, fn, str(self.writer.folder), self.writer.seed)
        for results in self.pool.map_batches(spill, batch_iter):
            for encoded in results:
                self.writer.add(encoded)

    def progress(self, total, desc: str, unit: str):
        return build_progress(total, desc, unit, self.show_progress)


def run_build(out_dir: str | Path, modality: str, produce: Callable[[BuildContext], dict], build_args: dict,
              val_fraction: float, seed: int, shard_mb: float, part: str | None = None, workers: int = 1,
              progress: bool = True) -> dict:
    """Build one part (`part='I/N'`: into `out_dir/part-I-of-N`) or the whole build (manifest).

    `produce(ctx)` streams the input into `ctx` and returns the part's fixed stats and tokenizer."""
    index, count = parse_part(part)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    out = Path(out_dir)
    refuse_finished_build(out)
    created_dirs = _missing_dirs(out)
    single = part is None
    folder = out / WORK_DIR / part_name(0, 1) if single else out / part_name(index, count)
    identity = {"modality": modality, "build_args": build_args, "part": index, "parts": count,
                "val_fraction": val_fraction, "seed": seed, "shard_bytes": int(shard_mb * 2**20),
                "input_stamps": _input_stamps(build_args)}
    written: list[Path] = [out / WORK_DIR] if single else [folder]
    try:
        with OrderedPool(workers) as pool:
            info = read_part(folder, digests_of=partial(_digests, pool))
            if info is None or any(info.get(k) != v for k, v in identity.items()):
                info = _produce_part(folder, produce, identity, seed, pool, progress)
            elif progress:
                print(f"{folder}: finished part kept (sha256 checked)")
            if not single:
                return info
            manifest = _assemble(out, [folder], [info], progress, written, pool)
        shutil.rmtree(out / WORK_DIR)
        return manifest
    except Exception as err:  # an interrupt (Ctrl-C, kill) keeps finished parts; a rerun completes the build
        _remove_own_files(written, created_dirs)
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            failed_on = written[-1].name if written else "the folder"
            raise BuildWriteError(f"{out}: cannot write the build ({reason}, writing {failed_on}); "
                                  "removed the files it had written; free disk space or choose "
                                  "another --out") from None
        raise


def _input_stamps(build_args: dict) -> list:
    """(path, size, mtime) of every input file named in the arguments: a finished part is reused
    only if its inputs did not change since."""
    stamps = []
    for value in build_args.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and Path(item).exists():
                stat = Path(item).stat()
                stamps.append([item, stat.st_size, stat.st_mtime_ns])
    return stamps


def _produce_part(folder: Path, produce, identity: dict, seed: int, pool: OrderedPool, progress: bool) -> dict:
    writer = PartWriter(folder, seed)
    try:
        fixed = produce(BuildContext(writer, pool, identity["part"], identity["parts"], progress))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    files = writer.files()
    digests = _digests(pool, files, synced_digest)
    return writer.finish(dict(identity, **fixed), {f.name: d for f, d in zip(files, digests)})


def _digests(pool: OrderedPool, paths: list[Path], digest=sha256_file) -> list[str]:
    """`digest(path)` (sha256) of each file, one file per worker task."""
    return [value for batch in pool.map(digest, ([path] for path in paths)) for value in batch]


def merge_parts(parts: list[str | Path], out_dir: str | Path, progress: bool = True, workers: int = 1) -> dict:
    """One manifest (and the shards) from the finished parts of a `--part I/N` build."""
    out = Path(out_dir)
    refuse_finished_build(out)
    created_dirs = _missing_dirs(out)
    written: list[Path] = []
    try:
        with OrderedPool(workers) as pool:
            parts = [Path(p) for p in parts]
            return _assemble(out, parts, _check_parts(parts, pool), progress, written, pool)
    except Exception as err:
        _remove_own_files(written, created_dirs)
        if isinstance(err, OSError):
            raise BuildWriteError(f"{out}: cannot write the build ({err.strerror or err}); removed the files "
                                  "it had written; free disk space or choose another --out") from None
        raise


def _check_parts(parts: list[Path], pool: OrderedPool) -> list[dict]:
    """The part.json of each part, its files checked by sha256 (by the workers), and the parts
    checked to be all of one build."""
    if not parts:
        raise ConfigError("data merge: give the part folders of one build")
    infos = [require_part(p, partial(_digests, pool)) for p in parts]
    first = infos[0]
    same = ("modality", "build_args", "parts", "val_fraction", "seed", "shard_bytes")
    for path, info in zip(parts, infos):
        for key in same:
            if info.get(key) != first.get(key):
                raise ConfigError(f"{path}: {key} differs from {parts[0]}; merge the parts of one build")
    seen = sorted(info["part"] for info in infos)
    if seen != list(range(first["parts"])):
        count = first["parts"]
        missing = ", ".join(f"{m}/{count}" for m in sorted(set(range(count)) - set(seen))) or "(duplicates)"
        raise ConfigError(f"data merge: parts {missing} missing or given twice; build every --part I/{count} once")
    return infos


def _stats(infos: list[dict]) -> dict:
    stats = dict(infos[0].get("stats", {}))
    counters: dict = {}
    for info in infos:
        for key, value in info["counters"].items():
            counters[key] = counters.get(key, 0) + value
    stats.update(counters)
    examples = sorted((e for info in infos for e in info["examples"]), key=lambda e: e[0])
    if "invalid_examples" in stats or examples:
        stats["invalid_examples"] = [text for _, text in examples[:INVALID_EXAMPLES]]
    return stats


def _tokenizer(infos: list[dict]) -> dict:
    if infos[0].get("tokenizer") is not None:
        return infos[0]["tokenizer"]
    from data_pipeline.tokenizers import SmilesTokenizer

    return SmilesTokenizer(sorted({t for info in infos for t in info["vocab"]})).to_dict()


def _merged(parts: list[Path]):
    """(entry, part position) of every sample of all parts, in input order."""
    return heapq.merge(*(_tagged(part, position) for position, part in enumerate(parts)),
                       key=lambda item: item[0][0])


def _tagged(part: Path, position: int):
    for entry in iter_index(part):
        yield entry, position


def _validation_threshold(parts: list[Path], infos: list[dict]) -> int:
    """Groups ordered by their seeded hash; the first round(val_fraction * groups) (at least one
    when val_fraction > 0) go to validation. Returns the largest validation rank (-1: none)."""
    groups = sum(info["hashed_groups"] for info in infos)
    val_fraction = infos[0]["val_fraction"]
    n_val = 0
    if val_fraction > 0 and groups > 1:
        n_val = min(groups - 1, max(1, round(val_fraction * groups)))
    if n_val == 0:
        return -1
    # the parts counted their ranks by top bits: find the bucket holding the n_val-th smallest, then
    # read only that bucket's ranks (a few per 4096th of the groups) instead of keeping n_val of them
    counts = [sum(column) for column in zip(*(info["rank_counts"] for info in infos))]
    below = 0
    for bucket, count in enumerate(counts):
        if below + count >= n_val:
            break
        below += count
    shift = 64 - RANK_BITS
    ranks = sorted(entry[2] for part in parts for entry in iter_index(part)
                   if entry[1] is None and entry[3] and entry[2] >> shift == bucket)
    return ranks[n_val - below - 1]


def _split_of(entry: list, threshold: int) -> str:
    if entry[1] is not None:
        return entry[1]
    return "validation" if entry[2] <= threshold else "train"


class _Shard:
    """The samples of one shard as compact arrays (24 bytes a sample instead of a Python list
    of eleven objects each, which made a 64 MB shard of proteins hold ~20 MB of index)."""

    def __init__(self):
        self.paths: list[str] = []  # payload files, by id
        self._ids: dict = {}
        self.file_ids, self.offsets = array("I"), array("Q")
        self.seq_lens, self.meta_lens, self.tokens = array("I"), array("I"), array("I")
        self.groups = 0
        self.raw_bytes = 0

    def add(self, sample: tuple) -> None:
        path, offset, seq_len, meta_len, tokens, new_group, raw_bytes, _ = sample
        if path not in self._ids:
            self._ids[path] = len(self.paths)
            self.paths.append(path)
        self.file_ids.append(self._ids[path])
        self.offsets.append(offset)
        self.seq_lens.append(seq_len)
        self.meta_lens.append(meta_len)
        self.tokens.append(tokens)
        self.groups += new_group
        self.raw_bytes += raw_bytes

    def __len__(self) -> int:
        return len(self.tokens)

    def task(self, path: Path) -> tuple:
        """What a worker needs to write the shard at `path` (`_write_shard`)."""
        return str(path), self.paths, self.file_ids, self.offsets, self.seq_lens, self.meta_lens


class _ShardLayout:
    """Consecutive samples of one split into shards of about `shard_bytes` raw bytes; a layout
    group (a DNA record) starts a new shard rather than straddle two when it fits in one.
    Fed one sample at a time, holding one layout group's samples and one shard's."""

    def __init__(self, shard_bytes: int):
        self.shard_bytes = shard_bytes
        self.current = _Shard()
        self.run: list = []

    def add(self, sample: tuple) -> list:
        """Shards completed by this sample (usually none)."""
        done = []
        if self.run and sample[7] != self.run[-1][7]:
            done = self._place_run()
        self.run.append(sample)
        return done

    def finish(self) -> list:
        done = self._place_run() if self.run else []
        if len(self.current):
            done.append(self.current)
        return done

    def _place_run(self) -> list:
        done = []
        run_bytes = sum(sample[6] for sample in self.run)
        for position, sample in enumerate(self.run):
            size = sample[6]
            if len(self.current) and (self.current.raw_bytes + size > self.shard_bytes
                                      or (position == 0 and run_bytes <= self.shard_bytes
                                          and self.current.raw_bytes + run_bytes > self.shard_bytes)):
                done.append(self.current)
                self.current = _Shard()
            self.current.add(sample)
        self.run = []
        return done


def _shards(entries, parts: list[Path], splits: list[str], threshold: int, shard_bytes: int):
    """(split, _Shard) in one pass over the merged index: every split is laid out at once, each
    in input order; a split's shards come in their order."""
    layouts = {split: _ShardLayout(shard_bytes) for split in splits}
    paths: dict = {}  # (part position, payload file) -> path: one Path join per file, not per sample
    for entry, position in entries:
        key = (position, entry[7])
        if key not in paths:
            paths[key] = str(parts[position] / entry[7])
        # (payload path, offset, seq_len, meta_len, tokens, new_group, raw_bytes, layout hash)
        sample = (paths[key], entry[8], entry[9], entry[10], entry[6], entry[3], entry[5], entry[4])
        split = _split_of(entry, threshold)
        for shard in layouts[split].add(sample):
            yield split, shard
    for split in splits:
        for shard in layouts[split].finish():
            yield split, shard


def _assemble(out: Path, parts: list[Path], infos: list[dict], progress: bool, written: list[Path],
              pool: OrderedPool) -> dict:
    """Split, write every shard atomically (in the workers), then the manifest; `written` grows
    before each file is opened. `infos` are the parts' checked part.json."""
    first = infos[0]
    if sum(info["samples"] for info in infos) == 0:
        raise InputFormatError(f"{', '.join(map(str, first['build_args'].get('inputs', [])))}: nothing to "
                               f"build: {first.get('empty_hint', 'no samples')}")
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.partial"):
        leftover.unlink()
    threshold = _validation_threshold(parts, infos)
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "modality": first["modality"],
        "tokenizer": _tokenizer(infos), "build_args": first["build_args"], "stats": _stats(infos),
        "seed": first["seed"], "val_fraction": first["val_fraction"], "splits": {},
    }
    explicit = {s for info in infos for s in info.get("explicit_splits", [])}
    splits = [split for split in BUILD_SPLITS if split != "test" or split in explicit]
    bar = build_progress(sum(info["samples"] for info in infos), f"writing {first['modality']} shards",
                         "sample", progress)
    try:
        manifest["splits"] = _write_shards(out, _shards(_merged(parts), parts, splits, threshold,
                                                        first["shard_bytes"]), splits, bar, written, pool)
        written.append(out / MANIFEST_NAME)
        write_manifest(out, manifest)
    finally:
        bar.close()
    return manifest


def _write_shards(out: Path, shards, splits: list[str], bar, written: list[Path], pool: OrderedPool) -> dict:
    """Every shard written by the workers; the manifest's splits with their shards in order
    (`sample_tokens` as array('I'), which `write_manifest` writes as a list)."""
    result = {split: {"shards": [], "samples": 0, "tokens": 0, "groups": 0} for split in splits}
    in_flight: deque = deque()  # (split, token counts) of each shard handed out, in order

    def tasks():
        for split, shard in shards:
            name = f"{split}-{len(result[split]['shards']) + sum(s == split for s, _ in in_flight):05d}.tar"
            written.append(out / name)
            result[split]["groups"] += shard.groups
            in_flight.append((split, shard.tokens))
            yield [shard.task(out / name)]

    for name, digest, size in (r for batch in pool.map(_write_shard, tasks(), in_flight=pool.workers + 1)
                               for r in batch):
        split, sample_tokens = in_flight.popleft()
        entry = {"name": name, "sha256": digest, "bytes": size, "samples": len(sample_tokens),
                 "tokens": sum(sample_tokens), "sample_tokens": sample_tokens}
        result[split]["shards"].append(entry)
        result[split]["samples"] += entry["samples"]
        result[split]["tokens"] += entry["tokens"]
        bar.update(len(sample_tokens))
    return result


def _write_shard(task) -> tuple[str, str, int]:
    """Worker side: one shard from its samples' places in the payload files -> (name, sha256, bytes).
    Sample keys are `<shard stem>-<index>`, the stem being the shard's file name without `.tar`."""
    path, payloads, file_ids, offsets, seq_lens, meta_lens = task
    path = Path(path)
    handles = [open(payload, "rb") for payload in payloads]
    try:
        with ShardWriter(path) as writer:
            for sample_index, (file_id, offset, seq_len, meta_len) in enumerate(zip(file_ids, offsets, seq_lens,
                                                                                      meta_lens)):
                handle = handles[file_id]
                handle.seek(offset)
                seq_zst = handle.read(seq_len)
                meta_zst = handle.read(meta_len)
                writer.write(f"{path.stem}-{sample_index:06d}", seq_zst, meta_zst)
    finally:
        for handle in handles:
            handle.close()
    return path.name, writer.sha256, path.stat().st_size
