"""Held-out protein families: one file per family (FASTA / A3M / Stockholm) or the clusters of
a shard build's validation split.

A3M and Stockholm members are read as the official code reads them (gaps removed, insertions
upper-cased: data_pipeline.readers); the file is remembered so the generation suite can build a
profile HMM from the alignment itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from evaluation.errors import EvaluationError
from evaluation.sources import is_shard_build, require_data, shard_samples

FAMILY_SUFFIXES = {".fasta": None, ".fa": None, ".faa": None, ".fas": None,
                   ".a3m": "a3m", ".sto": "stockholm", ".stockholm": "stockholm", ".stk": "stockholm"}


@dataclass
class Family:
    name: str
    sequences: list             # residues, gaps removed, upper case
    source: str                 # file (or shard:key) it came from, for error messages
    alignment_format: Optional[str] = None   # "a3m" | "stockholm" when `source` is an alignment file


def _family_suffix(path: Path) -> Optional[str]:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return suffixes[-1] if suffixes and suffixes[-1] in FAMILY_SUFFIXES else None


def read_family(path: Path) -> Family:
    from data_pipeline.readers import read_family_file

    records = read_family_file(path)
    name = path.name.split(".")[0]
    return Family(name, [r.sequence for r in records], str(path), FAMILY_SUFFIXES[_family_suffix(path) or ".fa"])


def load_families(path: Optional[str], suite: str, min_members: int = 2,
                  max_families: Optional[int] = None) -> list:
    """Families from `path` in a fixed order (file names sorted; shard order). A family with
    fewer than `min_members` sequences is an error naming it: ICL needs a homolog before a
    sequence, generation needs a context and a reference."""
    what = "a folder of family files (.fasta/.a3m/.sto), one family file, or a protein shard build"
    root = require_data(path, suite, what)
    if is_shard_build(root):
        families = [Family(key, list(members), f"{root}:{key}")
                    for key, members in shard_samples(root, "validation", "protein")]
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and _family_suffix(p))
        if not files:
            raise EvaluationError(f"{root}: no family files (.fasta, .fa, .a3m, .sto, .stockholm, "
                                  "optionally .gz) in this folder; pass " + what)
        families = [read_family(p) for p in files]
    else:
        if not _family_suffix(root):
            raise EvaluationError(f"{root}: not a family file (expected .fasta, .fa, .faa, .a3m, .sto "
                                  "or .stockholm, optionally .gz)")
        families = [read_family(root)]
    if not families:
        raise EvaluationError(f"{root}: the validation split holds no clusters; rebuild the shards "
                              "with a validation share or pass family files")
    for family in families:
        if len(family.sequences) < min_members:
            raise EvaluationError(f"{family.source}: family {family.name!r} has {len(family.sequences)} "
                                  f"sequence(s); suite {suite} needs at least {min_members} (remove the family)")
    return families[:max_families] if max_families else families
