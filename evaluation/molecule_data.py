"""Readers for the chemistry suites: SMILES lists, molecular domains, a shard build's molecules.

Formats (plain or gzip text, read through `data_pipeline.readers.open_text`):
- SMILES list: one SMILES per line (the first whitespace-separated field, so `.smi` files with
  a name column work); blank lines and lines starting with '#' are skipped, as is a first line
  that is just the header `smiles`.
- ICST domain lines (Chem-xLSTM): one domain per line, its molecules joined by '.'; the domain
  of line N is named "line N".
- `smiles,domain` CSV: a header naming both columns, then one molecule per row.
- a shard build (`bioxlstm data build molecules`): one sample per domain, its SMILES in order.
Each bad input is one `EvaluationError` naming the file and line and the fix.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from evaluation.errors import EvaluationError
from evaluation.sources import is_shard_build, shard_samples


@dataclass
class Domain:
    name: str
    molecules: list
    where: str          # "FILE line N" / "FILE domain NAME" / "BUILD validation sample KEY", for errors


def _lines(path: Path):
    from data_pipeline.readers import open_text

    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.strip()


def read_smiles_list(path: str | Path) -> list:
    """The SMILES of a one-per-line file; an empty file is an error."""
    path = Path(path)
    smiles = []
    for number, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        if not smiles and line.lower() == "smiles":
            continue
        smiles.append(line.split()[0])
    if not smiles:
        raise EvaluationError(f"{path}: no SMILES found; pass a file with one SMILES per line")
    return smiles


def read_domain_lines(path: str | Path) -> list:
    """ICST domains: one per line, molecules joined by '.' (empty pieces, e.g. a trailing '.',
    dropped)."""
    path = Path(path)
    domains = []
    for number, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        molecules = [m for m in line.split(".") if m]
        domains.append(Domain(f"line {number}", molecules, f"{path} line {number}"))
    if not domains:
        raise EvaluationError(f"{path}: no domains found; pass one domain per line, its molecules "
                              "joined by '.', or a smiles,domain CSV")
    return domains


def read_domain_csv(path: str | Path) -> list:
    """Domains of a `smiles,domain` CSV, in order of first appearance."""
    from data_pipeline.readers import open_text

    path = Path(path)
    domains: dict = {}
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if "smiles" not in header or "domain" not in header:
            raise EvaluationError(f"{path} line 1: a domain CSV needs a header with columns 'smiles' "
                                  f"and 'domain' (found: {', '.join(header) or 'nothing'})")
        smiles_col, domain_col = header.index("smiles"), header.index("domain")
        try:
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise EvaluationError(f"{path} line {reader.line_num}: {len(row)} fields, the header "
                                          f"has {len(header)}; quote fields that contain commas")
                name = row[domain_col].strip()
                domains.setdefault(name, Domain(name, [], f"{path} domain {name!r}")).molecules.append(
                    row[smiles_col].strip())
        except csv.Error as err:
            raise EvaluationError(f"{path} line {reader.line_num}: not valid CSV ({err}); check quoting") from None
    if not domains:
        raise EvaluationError(f"{path}: no molecules after the header; pass rows of smiles,domain")
    return list(domains.values())


def _first_line(path: Path) -> str:
    from data_pipeline.readers import open_text

    with open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line.strip()
    return ""


def shard_domains(build_dir: str | Path, split: str = "validation") -> list:
    """Every sample of a molecules shard build's split as a domain."""
    domains = [Domain(key, list(molecules), f"{build_dir} {split} sample {key}")
               for key, molecules in shard_samples(build_dir, split, "molecules")]
    if not domains:
        raise EvaluationError(f"{build_dir}: its {split} split holds no molecules; rebuild with a "
                              "larger --val-fraction or pass a data file")
    return domains


def read_domains(path: str | Path) -> list:
    """Domains of an ICST file, a smiles,domain CSV (a first line with a comma: SMILES never hold
    one) or a shard build's validation split."""
    path = Path(path)
    if path.is_dir():
        if not is_shard_build(path):
            raise EvaluationError(f"{path}: a directory without manifest.json; pass a shard build "
                                  "(bioxlstm data build molecules), an ICST file or a smiles,domain CSV")
        return shard_domains(path)
    if "," in _first_line(path):
        return read_domain_csv(path)
    return read_domain_lines(path)


def read_molecules(path: str | Path, split: str = "validation") -> list:
    """A SMILES list file, or every molecule of a shard build's split (its domains flattened)."""
    path = Path(path)
    if path.is_dir():
        if not is_shard_build(path):
            raise EvaluationError(f"{path}: a directory without manifest.json; pass a SMILES file or "
                                  "a shard build")
        return [m for domain in shard_domains(path, split) for m in domain.molecules]
    return read_smiles_list(path)


def require_domain_sizes(domains: list, needed: int, skip_small: bool, fix: str) -> list:
    """The domains with at least `needed` molecules; a smaller one is an error unless skipped."""
    kept = []
    for domain in domains:
        if len(domain.molecules) >= needed:
            kept.append(domain)
        elif not skip_small:
            raise EvaluationError(f"{domain.where}: domain {domain.name!r} has {len(domain.molecules)} "
                                  f"molecules, fewer than the {needed} needed; {fix}")
    return kept


def capped(items: list, cap: Optional[int], seed: int) -> list:
    """At most `cap` items: a seeded sample (in input order) when there are more."""
    if cap is None or len(items) <= cap:
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), cap))
    return [items[i] for i in chosen]
