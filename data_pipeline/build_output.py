"""From grouped samples to a finished build: group-level split, shard layout, manifest.

Every builder produces `Sample`s (one per cluster / domain / DNA window) tagged with the
group that decides its split; this module is the only place that writes a build, so all
modalities share the same determinism, atomicity and no-overwrite guarantees. A build that
fails while writing (disk full, no permission) removes every file and folder it created, so
it leaves a finished build or nothing of its own; an interrupted one leaves finished shards
but no manifest.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.build_progress import build_progress

from data_pipeline.errors import BuildWriteError, InputFormatError, OutputExistsError
from data_pipeline.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, SPLITS, write_manifest
from data_pipeline.shards import ShardWriter, sha256_file


@dataclass
class Sample:
    """One training sample: the sequences of a cluster, a domain, or one DNA window."""

    name: str
    sequences: list[str]
    tokens: int
    split_group: str  # samples sharing this go to the same split (a cluster, domain, record)
    layout_group: str = ""  # consecutive samples sharing this stay in one shard if possible


def _group_rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def assign_splits(samples: list[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Deterministic split by group: groups ordered by a seeded hash, the first
    round(val_fraction * groups) (at least one when val_fraction > 0) go to validation."""
    groups = sorted({s.split_group for s in samples}, key=lambda g: _group_rank(g, seed))
    n_val = 0
    if val_fraction > 0 and len(groups) > 1:
        n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
    val_groups = set(groups[:n_val])
    splits = {"train": [], "validation": []}
    for sample in samples:
        splits["validation" if sample.split_group in val_groups else "train"].append(sample)
    return splits


def _layout(samples: list[Sample], shard_bytes: int) -> list[list[Sample]]:
    """Consecutive samples into shards of about `shard_bytes` raw bytes; a layout group (a DNA
    record) starts a new shard rather than straddle two when it fits in one."""
    group_bytes: dict[str, int] = {}
    for sample in samples:
        group_bytes[sample.layout_group] = group_bytes.get(sample.layout_group, 0) + _raw_bytes(sample)
    shards: list[list[Sample]] = []
    current: list[Sample] = []
    current_bytes = 0
    previous_group = None
    for sample in samples:
        size = _raw_bytes(sample)
        starts_group = sample.layout_group != previous_group
        group_fits_alone = group_bytes[sample.layout_group] <= shard_bytes
        if current and (current_bytes + size > shard_bytes
                        or (starts_group and group_fits_alone
                            and current_bytes + group_bytes[sample.layout_group] > shard_bytes)):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(sample)
        current_bytes += size
        previous_group = sample.layout_group
    if current:
        shards.append(current)
    return shards


def _raw_bytes(sample: Sample) -> int:
    return sum(len(s) + 1 for s in sample.sequences)


def require_samples(samples: list[Sample], inputs, hint: str) -> None:
    """A build without samples would give a manifest every loader refuses: stop before writing."""
    if not samples:
        raise InputFormatError(f"{', '.join(map(str, inputs))}: nothing to build: {hint}")


def refuse_finished_build(out_dir: str | Path) -> None:
    """Builders call this before reading any input, so the refusal comes at once."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory; choose another --out")
    if (out / MANIFEST_NAME).exists():
        raise OutputExistsError(f"{out / MANIFEST_NAME} exists: {out} holds a finished build; "
                                "choose another --out or delete it yourself")


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Refuse to touch a finished build; clear only our own leftovers of an interrupted one."""
    out = Path(out_dir)
    refuse_finished_build(out)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.partial"):
        leftover.unlink()
    return out


def _missing_dirs(out: Path) -> list[Path]:
    """`out` and the parents a build would create for it, deepest first."""
    missing = []
    while not out.exists() and out != out.parent:
        missing.append(out)
        out = out.parent
    return missing


def _remove_own_files(files: list[Path], created_dirs: list[Path]) -> None:
    """Undo a failed build: its shards, temporaries and manifest, then the folders it created."""
    for path in files:
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.partial").unlink(missing_ok=True)
    for folder in created_dirs:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty: someone else wrote there meanwhile; leave it and its parents


def write_build(out_dir: str | Path, modality: str, samples: list[Sample], tokenizer,
                build_args: dict, stats: dict, val_fraction: float, seed: int,
                shard_bytes: int, progress: bool = True) -> dict:
    """Split, write every shard atomically, then the manifest; returns the manifest.

    An error removes what this call wrote (and the folders it created); an OSError while
    writing becomes a BuildWriteError naming the output folder and the file being written."""
    out = Path(out_dir)
    refuse_finished_build(out)
    created_dirs = _missing_dirs(out)
    written: list[Path] = []
    bar = build_progress(len(samples), f"writing {modality} shards", "sample", disable=not progress)
    try:
        prepare_out_dir(out)
        manifest = _write_shards(out, modality, samples, tokenizer, build_args, stats, val_fraction,
                                 seed, shard_bytes, bar, written)
        written.append(out / MANIFEST_NAME)
        write_manifest(out, manifest)
    except Exception as err:  # an interrupt (Ctrl-C) keeps finished shards; a rerun completes them
        _remove_own_files(written, created_dirs)
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            failed_on = written[-1].name if written else "the folder"
            raise BuildWriteError(f"{out}: cannot write the build ({reason}, writing {failed_on}); "
                                  "removed the files it had written; free disk space or choose "
                                  "another --out") from None
        raise
    finally:
        bar.close()
    return manifest


def _write_shards(out: Path, modality: str, samples: list[Sample], tokenizer, build_args: dict,
                  stats: dict, val_fraction: float, seed: int, shard_bytes: int, bar,
                  written: list[Path]) -> dict:
    """Every shard of both splits; `written` grows before each file is opened (for cleanup)."""
    splits = assign_splits(samples, val_fraction, seed)
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "modality": modality,
        "tokenizer": tokenizer.to_dict(), "build_args": build_args, "stats": stats,
        "seed": seed, "val_fraction": val_fraction, "splits": {},
    }
    for split in SPLITS:
        shard_entries = []
        for shard_index, shard_samples in enumerate(_layout(splits[split], shard_bytes)):
            name = f"{split}-{shard_index:05d}.tar"
            written.append(out / name)
            with ShardWriter(out / name) as writer:
                for sample_index, sample in enumerate(shard_samples):
                    key = f"{split}-{shard_index:05d}-{sample_index:06d}"
                    writer.write(key, sample.sequences, {
                        "name": sample.name, "group": sample.split_group,
                        "sequences": len(sample.sequences), "tokens": sample.tokens})
                    bar.update(1)
            shard_entries.append({
                "name": name, "sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size,
                "samples": len(shard_samples), "tokens": sum(s.tokens for s in shard_samples),
                "sample_tokens": [s.tokens for s in shard_samples],
            })
        manifest["splits"][split] = {
            "shards": shard_entries,
            "samples": sum(e["samples"] for e in shard_entries),
            "tokens": sum(e["tokens"] for e in shard_entries),
            "groups": len({s.split_group for s in splits[split]}),
        }
    return manifest
