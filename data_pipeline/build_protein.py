"""Protein cluster shards: one sample = all members of one homology cluster.

Two inputs: FASTA files plus a `representative<TAB>member` cluster table (MMseqs2
easy-cluster output), or one FASTA/A3M/Stockholm file per family. The split is by cluster,
so no cluster has members on both sides.
"""
from __future__ import annotations

from pathlib import Path

from data_pipeline.build_progress import track

from data_pipeline.build_output import Sample, refuse_finished_build, require_samples, write_build
from data_pipeline.errors import InputFormatError
from data_pipeline.readers import accession_keys, open_text, read_family_file, read_fasta
from data_pipeline.tokenizers import ProteinTokenizer


def _normalize(tokenizer: ProteinTokenizer, sequence: str, unknown: str, where: str) -> str:
    return tokenizer.decode(tokenizer.encode_bytes(sequence, unknown, where=where))


def read_cluster_table(path: str) -> dict[str, list[tuple[str, int]]]:
    """representative -> [(member, line)] in table order."""
    clusters: dict[str, list[tuple[str, int]]] = {}
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 2 or not fields[0] or not fields[1]:
                raise InputFormatError(f"{path} line {number}: expected 'representative<TAB>member', "
                                       f"got {line.strip()[:60]!r}")
            clusters.setdefault(fields[0], []).append((fields[1], number))
    if not clusters:
        raise InputFormatError(f"{path}: empty cluster table")
    return clusters


def cluster_samples(fasta_paths: list[str], cluster_table: str, unknown: str = "error",
                    min_members: int = 1, max_clusters: int | None = None,
                    progress: bool = True) -> tuple[list[Sample], dict]:
    tokenizer = ProteinTokenizer(unknown=unknown)
    sequences: dict[str, str] = {}
    names_in_order: list[str] = []
    for path in fasta_paths:
        for record in track(read_fasta(path), f"reading {Path(path).name}", "seq", disable=not progress):
            normalized = _normalize(tokenizer, record.sequence, unknown, record.where)
            names_in_order.append(record.name)
            for key in accession_keys(record.name):
                sequences[key] = normalized
    clusters = read_cluster_table(cluster_table)
    clustered: set[str] = set()
    samples: list[Sample] = []
    for representative, members in clusters.items():
        member_sequences = []
        for member, line in members:
            if member not in sequences:
                raise InputFormatError(f"{cluster_table} line {line}: member {member!r} is not in "
                                       f"the FASTA input ({', '.join(fasta_paths)}); pass the FASTA "
                                       "the clusters were computed from")
            clustered.add(member)
            member_sequences.append(sequences[member])
        if len(member_sequences) >= min_members:
            samples.append(Sample(representative, member_sequences,
                                  sum(len(s) for s in member_sequences), split_group=representative,
                                  layout_group=representative))
    unclustered = [n for n in names_in_order if not any(k in clustered for k in accession_keys(n))]
    if min_members <= 1:
        for name in unclustered:
            samples.append(Sample(name, [sequences[name]], len(sequences[name]), name, name))
    if max_clusters is not None:
        samples = samples[:max_clusters]
    stats = {"sequences": len(names_in_order), "clusters_in_table": len(clusters),
             "unclustered_sequences": len(unclustered), "clusters": len(samples),
             "min_members": min_members}
    return samples, stats


def family_samples(paths: list[str], unknown: str = "error", min_members: int = 1,
                   progress: bool = True) -> tuple[list[Sample], dict]:
    tokenizer = ProteinTokenizer(unknown=unknown)
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        files.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    samples = []
    for path in track(files, "reading families", "file", total=len(files), disable=not progress):
        records = read_family_file(path)
        members = [_normalize(tokenizer, r.sequence, unknown, r.where) for r in records]
        if len(members) >= min_members:
            family = path.name.split(".")[0]
            samples.append(Sample(family, members, sum(len(m) for m in members), family, family))
    stats = {"family_files": len(files), "clusters": len(samples), "min_members": min_members}
    return samples, stats


def build_protein(inputs: list[str], out: str, clusters: str | None = None, unknown: str = "error",
                  min_members: int = 1, max_clusters: int | None = None, val_fraction: float = 0.05,
                  seed: int = 0, shard_mb: float = 64.0, progress: bool = True) -> dict:
    refuse_finished_build(out)
    if clusters:
        samples, stats = cluster_samples(inputs, clusters, unknown, min_members, max_clusters, progress)
    else:
        samples, stats = family_samples(inputs, unknown, min_members, progress)
        samples = samples[:max_clusters] if max_clusters is not None else samples
    require_samples(samples, inputs, f"no cluster or family with >= --min-members={min_members} "
                    "members (and --max-clusters > 0); lower --min-members or add input")
    args = {"inputs": [str(p) for p in inputs], "clusters": clusters, "unknown": unknown,
            "min_members": min_members, "max_clusters": max_clusters,
            "val_fraction": val_fraction, "seed": seed, "shard_mb": shard_mb}
    return write_build(out, "protein", samples, ProteinTokenizer(unknown=unknown), args, stats,
                       val_fraction, seed, int(shard_mb * 2**20), progress)
