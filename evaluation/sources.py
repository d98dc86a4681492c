"""Where evaluation data comes from: a shard build's split, read sample by sample.

Data files (FASTA / A3M / Stockholm families, SMILES lists, ICST domain lines, DNA FASTA) are read
by each suite's own loader; this module serves the common case of evaluating on the validation
shards a run already has (`bioxlstm data build` output).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from evaluation.errors import EvaluationError


def is_shard_build(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def shard_samples(build_dir: str | Path, split: str = "validation",
                  modality: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """(key, sequences) of every sample of one split, in manifest order, each shard checked by
    its sha256 first. A protein sample is a cluster's members, a molecule sample a domain's
    SMILES, a DNA sample one stored window."""
    from data_pipeline.manifest import read_manifest, verify_shard
    from data_pipeline.shards import ShardReader

    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    if modality is not None and manifest["modality"] != modality:
        raise EvaluationError(f"{build_dir}: holds {manifest['modality']} shards; this suite needs "
                              f"{modality} data")
    for shard in manifest["splits"][split]["shards"]:
        verify_shard(build_dir, shard)
        reader = ShardReader(build_dir / shard["name"], "error", shard["samples"])
        try:
            for index in range(len(reader)):
                yield f"{shard['name']}:{reader.locations[index].key}", reader.read_sequences(index)
        finally:
            reader.close()


def manifest_tokenizer(build_dir: str | Path) -> dict:
    from data_pipeline.manifest import read_manifest

    return read_manifest(build_dir)["tokenizer"]


def require_data(path: str | None, suite: str, what: str) -> Path:
    """The data path a suite needs, or one line saying what to pass."""
    if not path:
        raise EvaluationError(f"suite {suite} needs data: pass --data with {what}")
    resolved = Path(path)
    if not resolved.exists():
        raise EvaluationError(f"{resolved}: no such file or directory (suite {suite}); pass --data with {what}")
    return resolved
