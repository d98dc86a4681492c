"""`bioxlstm data build {dna,protein,molecules} INPUT... --out DIR` and `bioxlstm data merge PARTS... --out DIR`.

Only the standard library is imported here; builders load inside the handler so that
`bioxlstm --help` stays fast.
"""
from __future__ import annotations

import argparse


def _common(parser: argparse.ArgumentParser, val_default: float) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory for shards and manifest.json; must not hold a finished build")
    parser.add_argument("--val-fraction", type=float, default=val_default,
                        help=f"fraction of groups (clusters/domains/windows) put in the validation split "
                             f"(default {val_default}; at least one group when > 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the group-level train/validation split (default 0)")
    parser.add_argument("--shard-mb", type=float, default=64.0,
                        help="target raw sequence megabytes per shard (default 64)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes that read the input, tokenize, compress and write the "
                             "shards (default 1); the output is byte-identical for every value")
    parser.add_argument("--part", metavar="I/N", default=None,
                        help="build only part I of N (groups by a stable hash) into --out/part-I-of-N; "
                             "then `bioxlstm data merge --out DIR PARTS...`")
    slurm = parser.add_argument_group("SLURM (submitit): the parts as a job array, then a merge job")
    slurm.add_argument("--slurm", type=int, metavar="N", default=None,
                       help="submit N parts as a SLURM array into --out.parts/, and a merge job into --out")
    slurm.add_argument("--partition", help="SLURM partition (with --slurm)")
    slurm.add_argument("--time", type=int, default=240, metavar="MIN", help="time limit per part in minutes (240)")
    slurm.add_argument("--mem", help="memory per part, e.g. 8G")
    slurm.add_argument("--account", help="SLURM account")
    slurm.add_argument("--setup", action="append", default=[], metavar="CMD",
                       help="shell line run before each job (repeatable), e.g. 'source .venv/bin/activate'")
    slurm.add_argument("--dry-run", action="store_true", help="with --slurm: print the sbatch scripts, submit nothing")


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build WebDataset shards from raw sequence files",
                                 description="Data preparation: tokenize, group, split and shard.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    build = data_sub.add_parser("build", help="build shards for one modality",
                                description="Build deterministic WebDataset tar shards (zstd members), "
                                            "a group-level train/validation split and manifest.json.")
    modalities = build.add_subparsers(dest="modality", metavar="MODALITY")

    dna = modalities.add_parser("dna", help="genome FASTA(.gz) -> windows of each record")
    dna.add_argument("inputs", nargs="+", metavar="INPUT", help="FASTA or FASTA.gz files (multi-record)")
    dna.add_argument("--window-len", type=int, default=32768,
                     help="bases per stored sample; loaders cut context-length windows from it (default 32768)")
    dna.add_argument("--min-window-len", type=int, default=128,
                     help="drop (and count) record tails shorter than this (default 128)")
    dna.add_argument("--min-n-run", type=int, default=100,
                     help="N-runs at least this long split a record; shorter ones stay as N (default 100)")
    dna.add_argument("--split-by", choices=("window", "record"), default="window",
                     help="group of the train/validation split: each window or each whole record (default window)")
    dna.add_argument("--unknown", choices=("error", "replace"), default="error",
                     help="characters other than ACGTN/IUPAC codes: stop with an error (default) or replace by N")
    dna.add_argument("--bed", metavar="FILE",
                     help="intervals 'chrom<TAB>start<TAB>end<TAB>split' (split: train, valid, test; the "
                          "Caduceus human-sequences.bed layout): one sample per interval, splits from the file "
                          "(valid -> validation); --window-len, --split-by, --val-fraction do not apply")
    _common(dna, 0.05)
    dna.set_defaults(handler=_build)

    protein = modalities.add_parser("protein", help="protein clusters: FASTA + cluster table, or one file per family")
    protein.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="FASTA files (with --clusters), else one FASTA/A3M/Stockholm file per family "
                              "(directories are expanded), or an OpenProteinSet folder "
                              "(<cluster id>/a3m/uniclust30.a3m)")
    protein.add_argument("--clusters", metavar="TSV",
                         help="cluster table 'representative<TAB>member' (MMseqs2 easy-cluster *_cluster.tsv)")
    protein.add_argument("--min-members", type=int, default=1,
                         help="keep clusters with at least this many members (default 1)")
    protein.add_argument("--max-clusters", type=int, default=None,
                         help="keep only the first N clusters (quick experiments)")
    protein.add_argument("--validation-list", metavar="FILE",
                         help="cluster/family ids (one per line) of the validation split; the rest is train")
    protein.add_argument("--test-list", metavar="FILE",
                         help="cluster/family ids (one per line) of a test split (e.g. cluster_testing_set.txt)")
    protein.add_argument("--unknown", choices=("error", "replace"), default="error",
                         help="residues outside the 25 amino-acid letters: error (default) or replace by X")
    _common(protein, 0.05)
    protein.set_defaults(handler=_build)

    molecules = modalities.add_parser("molecules", help="SMILES grouped into domains")
    molecules.add_argument("inputs", nargs="+", metavar="INPUT",
                           help="CSV with header 'smiles,domain' (or 'smiles' only), or .smi files "
                                "(one SMILES per line): without domains, molecules are grouped by "
                                "Bemis-Murcko scaffold")
    molecules.add_argument("--min-domain-size", type=int, default=2,
                           help="keep domains with at least this many valid molecules (default 2)")
    molecules.add_argument("--max-molecules", type=int, default=None,
                           help="read only the first N input lines (quick experiments)")
    molecules.add_argument("--format", choices=("auto", "icst", "smiles"), default="auto",
                           help="auto: CSV smiles,domain or SMILES per line grouped by scaffold (default); "
                                "icst: one domain per line, molecules joined by '.'; smiles: one molecule "
                                "per line, each its own sample (unconditional training)")
    _common(molecules, 0.1)
    molecules.set_defaults(handler=_build)

    def _missing_modality(args) -> int:
        build.print_help()
        return 2

    build.set_defaults(handler=_missing_modality)

    merge = data_sub.add_parser("merge", help="merge the parts of a --part I/N build into one build",
                                description="Write the shards and one manifest.json from the finished part "
                                            "folders (part-I-of-N) of one build; equal to a single build.")
    merge.add_argument("parts", nargs="+", metavar="PART", help="part folders (or one folder holding them)")
    merge.add_argument("--out", required=True, metavar="DIR", help="output directory of the merged build")
    merge.add_argument("--no-progress", action="store_true", help="hide progress bars")
    merge.add_argument("--workers", type=int, default=1,
                       help="worker processes that write the shards (default 1); the output is the same for every value")
    merge.set_defaults(handler=_merge)
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])


def _builder_kwargs(args) -> dict:
    """The builder's own arguments (everything but --out, --part and the SLURM options)."""
    from pathlib import Path

    common = dict(inputs=[str(Path(p).absolute()) if args.slurm else p for p in args.inputs],
                  val_fraction=args.val_fraction, seed=args.seed, shard_mb=args.shard_mb, workers=args.workers)
    if args.modality == "dna":
        return dict(common, window_len=args.window_len, min_window_len=args.min_window_len, min_n_run=args.min_n_run,
                    split_by=args.split_by, unknown=args.unknown, bed=args.bed)
    if args.modality == "protein":
        return dict(common, clusters=args.clusters, unknown=args.unknown, min_members=args.min_members,
                    max_clusters=args.max_clusters, validation_list=args.validation_list, test_list=args.test_list)
    return dict(common, min_domain_size=args.min_domain_size, max_molecules=args.max_molecules, fmt=args.format)


def _build(args) -> int:
    from data_pipeline.build_slurm import builder_for

    kwargs = _builder_kwargs(args)
    if args.slurm is not None:
        return _submit(args, kwargs)
    manifest = builder_for(args.modality)(out=args.out, part=args.part, progress=not args.no_progress, **kwargs)
    if args.part is not None:
        print(f"wrote part {manifest['part']}/{manifest['parts']} ({manifest['samples']} samples) under {args.out}")
        return 0
    return _report(manifest, args.out)


def _submit(args, kwargs: dict) -> int:
    from pathlib import Path

    from data_pipeline.build_slurm import SlurmDataOptions, submit_build
    from data_pipeline.errors import ConfigError

    if args.slurm < 1 or args.part is not None:
        raise ConfigError(f"--slurm {args.slurm}: give the number of parts (>= 1), without --part")
    if not args.partition:
        raise ConfigError("--partition is missing: name the SLURM partition the parts run on")
    for name in ("bed", "clusters", "validation_list", "test_list"):
        if kwargs.get(name):
            kwargs[name] = str(Path(kwargs[name]).absolute())
    options = SlurmDataOptions(partition=args.partition, time_min=args.time, cpus_per_task=args.workers,
                               mem=args.mem, account=args.account, setup=list(args.setup))
    for line in submit_build(args.modality, kwargs, args.slurm, str(Path(args.out).absolute()), options,
                             args.dry_run):
        print(line)
    return 0


def _merge(args) -> int:
    from pathlib import Path

    from data_pipeline.build_output import merge_parts

    parts = []
    for path in map(Path, args.parts):
        nested = sorted(p for p in path.glob("part-*-of-*") if p.is_dir()) if path.is_dir() else []
        parts.extend(nested or [path])
    return _report(merge_parts(parts, args.out, progress=not args.no_progress, workers=args.workers), args.out)


def _report(manifest: dict, out: str) -> int:
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['samples']} samples, {info['tokens']} tokens, "
              f"{len(info['shards'])} shards, {info['groups']} groups")
    print(f"wrote {out}/manifest.json")
    return 0
