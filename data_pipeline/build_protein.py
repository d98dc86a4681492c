"""Protein cluster shards: one sample = all members of one homology cluster.

Three inputs: FASTA files plus a `representative<TAB>member` cluster table (MMseqs2
easy-cluster output); one FASTA/A3M/Stockholm file per family; or an OpenProteinSet tree
(`<cluster id>/a3m/uniclust30.a3m` under the input folder, A3M read as the official code does:
gaps removed, insertions upper-cased), optionally with split lists (one cluster id per line).
The split is by cluster, so no cluster has members on both sides.

Memory: family files are read one per worker task. With a cluster table, the table and the
FASTA are joined on disk by the workers (`protein_join`), so memory does not grow with either.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from data_pipeline.build_output import run_build
from data_pipeline.build_parallel import batches
from data_pipeline.build_parts import Encoded, encode_sample
from data_pipeline.errors import ConfigError, InputFormatError
from data_pipeline.protein_join import cluster_samples, protein_tokenizer
from data_pipeline.readers import open_text, read_family_file, require_files
from data_pipeline.tokenizers import ProteinTokenizer

TREE_FILE = Path("a3m") / "uniclust30.a3m"


def _encode_family(item, unknown: str, min_members: int) -> Encoded:
    """Worker side: read one family file, encode it as one sample."""
    order, name, path, split = item
    members = read_family_file(path)
    if len(members) < min_members:
        return Encoded(counters={"family_files": 1})
    sequences = [protein_tokenizer(unknown).normalize(r.sequence, unknown, r.where) for r in members]
    sample = encode_sample(order, name, sequences, sum(map(len, sequences)), name, name, split)
    return Encoded([sample], counters={"clusters": 1, "family_files": 1})


def _family_files(paths: list[str]) -> list[tuple[str, Path]]:
    """(family name, file) of every family: files, folders of files, or an OpenProteinSet tree."""
    files = []
    for path in map(Path, paths):
        if not path.is_dir():
            require_files([path])
            files.append((path.name.split(".")[0], path))
            continue
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        folders = [p for p in entries if p.is_dir()]
        if folders:  # OpenProteinSet: <root>/<cluster id>/a3m/uniclust30.a3m
            for folder in folders:
                if not (folder / TREE_FILE).is_file():
                    raise InputFormatError(f"{folder}: no {TREE_FILE} in this cluster folder (OpenProteinSet "
                                           f"layout <cluster id>/{TREE_FILE}); remove the folder or add the file")
                files.append((folder.name, folder / TREE_FILE))
        else:
            files.extend((p.name.split(".")[0], p) for p in entries if p.is_file())
    return files


def read_split_lists(split_lists: dict[str, str], known: set[str]) -> dict[str, str]:
    """cluster id -> split from files of one id per line; every id must be a cluster of the input."""
    assigned: dict[str, str] = {}
    for split, path in split_lists.items():
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                cluster = line.strip()
                if not cluster:
                    continue
                if cluster not in known:
                    raise InputFormatError(f"{path} line {number}: cluster {cluster!r} is not in the input; "
                                           "fix the list or pass the matching tree")
                if assigned.get(cluster, split) != split:
                    raise InputFormatError(f"{path} line {number}: cluster {cluster!r} is also in the "
                                           f"{assigned[cluster]} list; a cluster belongs to one split")
                assigned[cluster] = split
    return assigned


def _family_items(ctx, paths, max_clusters, split_lists):
    files = _family_files(paths)
    if max_clusters is not None:
        files = files[:max_clusters]
    assigned = read_split_lists(split_lists, {name for name, _ in files}) if split_lists else None
    bar = ctx.progress(len(files), "reading families", "file")
    for index, (family, path) in enumerate(files):
        bar.update(1)
        if ctx.owns(family):
            split = assigned.get(family, "train") if assigned is not None else None
            yield ((index,), family, str(path), split)
    bar.close()


def build_protein(inputs: list[str], out: str, clusters: str | None = None, unknown: str = "error",
                  min_members: int = 1, max_clusters: int | None = None, val_fraction: float = 0.05,
                  seed: int = 0, shard_mb: float = 64.0, progress: bool = True, workers: int = 1,
                  part: str | None = None, validation_list: str | None = None,
                  test_list: str | None = None) -> dict:
    split_lists = {s: p for s, p in (("validation", validation_list), ("test", test_list)) if p}
    if split_lists and clusters:
        raise ConfigError("--validation-list/--test-list go with family files or an OpenProteinSet tree, "
                          "not with --clusters; the cluster-table split is by hash (--val-fraction)")
    require_files(list(split_lists.values()) + ([clusters] if clusters else []))
    args = {"inputs": [str(p) for p in inputs], "clusters": clusters, "unknown": unknown,
            "min_members": min_members, "max_clusters": max_clusters,
            "val_fraction": val_fraction, "seed": seed, "shard_mb": shard_mb}
    if split_lists:
        args.update(validation_list=validation_list, test_list=test_list)

    def produce(ctx) -> dict:
        ctx.count_stat("clusters", 0)
        if clusters:
            require_files(inputs)
            for name in ("sequences", "unclustered_sequences", "clusters_in_table"):
                ctx.count_stat(name, 0)
            cluster_samples(ctx, inputs, clusters, min_members, max_clusters, unknown)
        else:
            ctx.count_stat("family_files", 0)
            ctx.encode(partial(_encode_family, unknown=unknown, min_members=min_members),
                       batches(_family_items(ctx, inputs, max_clusters, split_lists), lambda item: 1, max_items=16))
        stats = {"min_members": min_members}
        return {"tokenizer": ProteinTokenizer(unknown=unknown).to_dict(), "stats": stats,
                "explicit_splits": ["train", "validation", "test"] if split_lists else [],
                "empty_hint": f"no cluster or family with >= --min-members={min_members} members "
                              "(and --max-clusters > 0); lower --min-members or add input"}

    return run_build(out, "protein", produce, args, val_fraction, seed, shard_mb, part, workers, progress)

