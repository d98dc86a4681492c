"""Protein cluster shards: one sample = all members of one homology cluster.

Three inputs: FASTA files plus a `representative<TAB>member` cluster table (MMseqs2
easy-cluster output); one FASTA/A3M/Stockholm file per family; or an OpenProteinSet tree
(`<cluster id>/a3m/uniclust30.a3m` under the input folder, A3M read as the official code does:
gaps removed, insertions upper-cased), optionally with split lists (one cluster id per line).
The split is by cluster, so no cluster has members on both sides.

Memory: family files are read one per worker task. With a cluster table, the table is held as
compact arrays (a few bytes per member) and the FASTA is spilled once to on-disk buckets by
cluster, so at most one bucket of sequences is in memory while clusters are grouped.
"""
from __future__ import annotations

import array
import shutil
from functools import partial
from pathlib import Path

from data_pipeline.build_output import run_build
from data_pipeline.build_parallel import batches
from data_pipeline.build_parts import Encoded, encode_sample
from data_pipeline.errors import ConfigError, InputFormatError
from data_pipeline.readers import accession_keys, fasta_records, open_text, read_family_file, require_files
from data_pipeline.tokenizers import ProteinTokenizer

TREE_FILE = Path("a3m") / "uniclust30.a3m"
BUCKET_BYTES = 8 << 20  # FASTA bytes per on-disk bucket: what grouping holds in memory at once
_tokenizers: dict = {}


def _tokenizer(unknown: str) -> ProteinTokenizer:
    if unknown not in _tokenizers:
        _tokenizers[unknown] = ProteinTokenizer(unknown=unknown)
    return _tokenizers[unknown]


def _encode_cluster(item, unknown: str, min_members: int) -> Encoded:
    """Worker side: a cluster's members (text + where), or a family file to read first."""
    order, name, members, path, split = item
    if path is not None:
        members = [(r.sequence, r.where) for r in read_family_file(path)]
    files = {"family_files": 1} if path is not None else {}
    if len(members) < min_members:
        return Encoded(counters=files)
    sequences = [_tokenizer(unknown).normalize(text, unknown, where) for text, where in members]
    sample = encode_sample(order, name, sequences, sum(map(len, sequences)), name, name, split)
    return Encoded([sample], counters={"clusters": 1, **files})


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
            yield ((index,), family, None, str(path), split)
    bar.close()


class _ClusterTable:
    """The table as arrays, about 20 bytes per row: cluster ordinal (order of first appearance,
    from 64-bit name hashes), member hash (sorted, for lookups), line. Names are not kept: a
    second pass over the table writes each kept cluster's representative into its bucket."""

    def __init__(self, path: str):
        import numpy as np

        self.path = path
        # MMseqs2 lists a cluster's rows together: hash each run of one representative once
        run_hash, run_start, cluster = array.array("q"), array.array("i"), array.array("i")
        member_hash, line = array.array("q"), array.array("i")
        previous = None
        for number, rep, member in self.rows():
            if rep != previous:
                run_hash.append(hash(rep))
                run_start.append(len(line))
                previous = rep
            cluster.append(len(run_hash) - 1)
            member_hash.append(hash(member))
            line.append(number)
        if not line:
            raise InputFormatError(f"{path}: empty cluster table")
        # runs of the same representative (a table not grouped by cluster) are one cluster;
        # ordinals count clusters in order of first appearance
        _, first, inverse = np.unique(np.frombuffer(run_hash, dtype=np.int64), return_index=True,
                                      return_inverse=True)
        rank = np.empty(len(first), dtype=np.int32)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
        run_cluster = rank[inverse]
        self.cluster = run_cluster[np.frombuffer(cluster, dtype=np.int32)]
        del cluster, run_hash, inverse
        self.n_clusters = len(first)
        self.first_row = np.zeros(len(line), dtype=bool)
        self.first_row[np.frombuffer(run_start, dtype=np.int32)[first]] = True
        hashes = np.frombuffer(member_hash, dtype=np.int64)
        self.by_hash = np.argsort(hashes, kind="stable").astype(np.int32)
        self.sorted_hashes = hashes[self.by_hash]
        del hashes, member_hash
        self.line = np.frombuffer(line, dtype=np.int32)
        self.sizes = np.bincount(self.cluster, minlength=self.n_clusters)
        self.matched = bytearray(len(line))

    def rows(self):
        """(line, representative, member) of every non-blank line, checked."""
        with open_text(self.path) as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                fields = text.rstrip("\r\n").split("\t")
                if len(fields) != 2 or not fields[0] or not fields[1]:
                    raise InputFormatError(f"{self.path} line {number}: expected 'representative<TAB>member', "
                                           f"got {text.strip()[:60]!r}")
                yield number, fields[0], fields[1]

    def rows_of(self, names: list[str]) -> list[list[int]]:
        """Table rows whose member is each name (vectorized: one search per batch of names)."""
        import numpy as np

        keys = np.array([hash(name) for name in names], dtype=np.int64)
        low = np.searchsorted(self.sorted_hashes, keys, "left").tolist()
        high = np.searchsorted(self.sorted_hashes, keys, "right").tolist()
        return [self.by_hash[lo:hi].tolist() if hi > lo else [] for lo, hi in zip(low, high)]

    def member_at(self, line: int) -> str:
        with open_text(self.path) as handle:
            for number, text in enumerate(handle, start=1):
                if number == line:
                    return text.rstrip("\r\n").split("\t")[1]
        return "?"


def _cluster_items(ctx, fasta_paths, table_path, min_members, max_clusters, spill_dir: Path, fixed: dict):
    table = _ClusterTable(table_path)
    fixed["clusters_in_table"] = table.n_clusters
    kept = table.sizes >= min_members
    if max_clusters is not None:
        kept &= kept.cumsum() <= max_clusters
        budget = max(0, max_clusters - int(kept.sum()))
    else:
        budget = None
    n_clusters = table.n_clusters
    total = sum(Path(p).stat().st_size for p in fasta_paths)
    buckets = max(1, min(256, total // BUCKET_BYTES + 1))
    spill_dir.mkdir(parents=True, exist_ok=True)
    spills = {b: open(spill_dir / f"{b}.tsv", "w", encoding="utf-8") for b in range(buckets) if ctx.owns_bucket(b)}
    bar = ctx.progress(total if not any(p.endswith(".gz") for p in map(str, fasta_paths)) else None,
                       "reading FASTA", "B")
    state = {"ordinal": 0, "unclustered_taken": 0}
    kept_list = kept.tolist()
    cluster_of = table.cluster
    for row, (_, rep, _) in enumerate(table.rows()):  # representative names, into their buckets
        cluster = int(cluster_of[row])
        if table.first_row[row] and kept_list[cluster] and (cluster % buckets) in spills:
            spills[cluster % buckets].write(f"#{cluster}\t{rep}\n")
    for path in fasta_paths:
        batch = []
        for name, sequence, line in fasta_records(path):
            batch.append((name, f"{path} record {name!r} (line {line})", sequence))
            if len(batch) == 4096:
                _route(ctx, batch, table, kept_list, cluster_of, spills, buckets, n_clusters, min_members, budget,
                       state, bar)
                batch = []
        _route(ctx, batch, table, kept_list, cluster_of, spills, buckets, n_clusters, min_members, budget, state, bar)
    bar.close()
    for spill in spills.values():
        spill.close()
    if not all(table.matched):
        import numpy as np

        row = int(np.frombuffer(table.matched, dtype=np.uint8).argmin())
        line = table.line[row]
        raise InputFormatError(f"{table_path} line {line}: member {table.member_at(line)!r} is not in "
                               f"the FASTA input ({', '.join(map(str, fasta_paths))}); pass the FASTA "
                               "the clusters were computed from")
    del table
    for bucket in sorted(spills):
        clusters: dict[int, list] = {}
        names: dict[int, str] = {}
        with open(spill_dir / f"{bucket}.tsv", encoding="utf-8") as handle:
            for text in handle:
                if text.startswith("#"):
                    cluster, name = text[1:].rstrip("\n").split("\t")
                    names[int(cluster)] = name
                    continue
                cluster, line, name, where, sequence = text.rstrip("\n").split("\t")
                clusters.setdefault(int(cluster), [name, []])[1].append((int(line), sequence, where))
        for cluster in sorted(clusters):
            name, members = clusters[cluster]
            name = name or names[cluster]
            members.sort(key=lambda m: m[0])
            yield ((bucket, cluster), name, [(s, w) for _, s, w in members], None, None)
        (spill_dir / f"{bucket}.tsv").unlink()
    shutil.rmtree(spill_dir, ignore_errors=True)


def _route(ctx, batch, table, kept, cluster_of, spills, buckets, n_clusters, min_members, budget, state, bar):
    """Send each FASTA record of a batch to the bucket of every cluster it is a member of."""
    keys = [accession_keys(name) for name, _, _ in batch]
    rows_per_key = iter(table.rows_of([k for record_keys in keys for k in record_keys]))
    for (name, where, sequence), record_keys in zip(batch, keys):
        bar.update(len(sequence) + len(name) + 2)
        ordinal = state["ordinal"]
        state["ordinal"] += 1
        if ordinal % ctx.count == ctx.index:
            ctx.count_stat("sequences")
        rows = [r for _ in record_keys for r in next(rows_per_key)]
        targets = []
        if rows:
            for r in rows:
                table.matched[r] = 1
            targets = [(int(cluster_of[r]), int(table.line[r])) for r in rows if kept[cluster_of[r]]]
        else:
            cluster = n_clusters + ordinal
            if ctx.owns_bucket(cluster % buckets):
                ctx.count_stat("unclustered_sequences")
            if min_members <= 1 and (budget is None or state["unclustered_taken"] < budget):
                state["unclustered_taken"] += 1
                targets = [(cluster, 0)]
        for cluster, line in targets:
            spill = spills.get(cluster % buckets)
            if spill is not None:
                rep = "" if cluster < n_clusters else name  # clustered: the bucket has the name
                spill.write(f"{cluster}\t{line}\t{rep}\t{where}\t{sequence}\n")


def _size(item) -> int:
    return sum(len(s) for s, _ in item[2]) if item[2] else 1 << 16


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
        encode = partial(_encode_cluster, unknown=unknown, min_members=min_members)
        ctx.count_stat("clusters", 0)
        if clusters:
            require_files(inputs)
            for name in ("sequences", "unclustered_sequences"):
                ctx.count_stat(name, 0)
            stats = {"min_members": min_members}
            ctx.encode(encode, batches(_cluster_items(ctx, inputs, clusters, min_members, max_clusters,
                                                      ctx.writer.folder / "buckets", stats), _size))
        else:
            ctx.count_stat("family_files", 0)
            ctx.encode(encode, batches(_family_items(ctx, inputs, max_clusters, split_lists), _size, max_items=16))
            stats = {"min_members": min_members}
        return {"tokenizer": ProteinTokenizer(unknown=unknown).to_dict(), "stats": stats,
                "explicit_splits": ["train", "validation", "test"] if split_lists else [],
                "empty_hint": f"no cluster or family with >= --min-members={min_members} members "
                              "(and --max-clusters > 0); lower --min-members or add input"}

    return run_build(out, "protein", produce, args, val_fraction, seed, shard_mb, part, workers, progress)

