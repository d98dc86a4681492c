"""Molecule-domain shards: one sample = all molecules of one domain.

Domains come from a `smiles,domain` CSV, or, for plain SMILES files (one per line), from the
Bemis-Murcko scaffold (RDKit) of each molecule. Every SMILES is validated and canonicalized
with RDKit; invalid ones are counted and reported (manifest `stats`), never silently dropped.
The split is by domain.
"""
from __future__ import annotations

import csv
from pathlib import Path

from data_pipeline.build_progress import track

from data_pipeline.build_output import Sample, refuse_finished_build, require_samples, write_build
from data_pipeline.errors import InputFormatError
from data_pipeline.readers import open_text
from data_pipeline.tokenizers import SmilesTokenizer

ACYCLIC_DOMAIN = "<acyclic>"  # molecules without rings have an empty Murcko scaffold
INVALID_EXAMPLES = 20


def _csv_rows(reader, path: str):
    """(line, row) after the header line; line = where the row ends (quoted fields may span lines)."""
    try:
        for row in reader:
            yield reader.line_num + 1, row
    except csv.Error as err:
        raise InputFormatError(f"{path} line {reader.line_num + 1}: not valid CSV ({err}); "
                               "check quoting") from None


def _rows(path: str):
    """(line, smiles, domain or None) from a CSV with a 'smiles' column or a SMILES list."""
    with open_text(path) as handle:
        first = handle.readline()
        header = [h.strip().lower() for h in first.rstrip("\r\n").split(",")]
        if "smiles" in header:
            reader = csv.reader(handle)
            smiles_col = header.index("smiles")
            domain_col = header.index("domain") if "domain" in header else None
            for number, row in _csv_rows(reader, path):
                if not row:
                    continue
                if len(row) != len(header):
                    raise InputFormatError(f"{path} line {number}: {len(row)} fields, header has "
                                           f"{len(header)}; quote fields that contain commas")
                yield number, row[smiles_col].strip(), (row[domain_col].strip() if domain_col is not None else None)
        else:
            for number, line in enumerate([first], start=1):
                if line.strip():
                    yield number, line.split()[0], None
            for number, line in enumerate(handle, start=2):
                if line.strip():
                    yield number, line.split()[0], None


def molecule_samples(inputs: list[str], min_domain_size: int = 2, max_molecules: int | None = None,
                     progress: bool = True) -> tuple[list[Sample], dict]:
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    domains: dict[str, list[str]] = {}
    seen = invalid = 0
    invalid_examples = []
    for path in inputs:
        for number, smiles, domain in track(_rows(path), f"reading {Path(path).name}", "mol",
                                            disable=not progress):
            if max_molecules is not None and seen >= max_molecules:
                break
            seen += 1
            mol = Chem.MolFromSmiles(smiles) if smiles else None
            if mol is None:
                invalid += 1
                if len(invalid_examples) < INVALID_EXAMPLES:
                    invalid_examples.append(f"{path}:{number}: {smiles!r}")
                continue
            canonical = Chem.MolToSmiles(mol)
            if domain is None:
                domain = MurckoScaffold.MurckoScaffoldSmiles(mol=mol) or ACYCLIC_DOMAIN
            domains.setdefault(domain, []).append(canonical)
    if seen == 0:
        raise InputFormatError(f"no SMILES found in {', '.join(map(str, inputs))}")
    if seen == invalid:
        raise InputFormatError(f"all {seen} SMILES in {', '.join(map(str, inputs))} are invalid "
                               f"(first: {invalid_examples[0]}); check the column/format")
    samples = [Sample(domain, members, 0, domain, domain)
               for domain, members in domains.items() if len(members) >= min_domain_size]
    stats = {"molecules_read": seen, "invalid_smiles": invalid, "invalid_examples": invalid_examples,
             "domains_found": len(domains), "domains": len(samples),
             "molecules_in_small_domains": sum(len(m) for m in domains.values() if len(m) < min_domain_size),
             "min_domain_size": min_domain_size,
             "grouping": "csv domain column" if any(_has_domain_column(p) for p in inputs) else "murcko scaffold"}
    return samples, stats


def _has_domain_column(path: str) -> bool:
    with open_text(path) as handle:
        return "domain" in [h.strip().lower() for h in handle.readline().split(",")]


def build_molecules(inputs: list[str], out: str, min_domain_size: int = 2,
                    max_molecules: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                    shard_mb: float = 64.0, progress: bool = True) -> dict:
    refuse_finished_build(out)
    samples, stats = molecule_samples(inputs, min_domain_size, max_molecules, progress)
    require_samples(samples, inputs, f"no domain has >= --min-domain-size={min_domain_size} valid "
                    f"molecules ({stats['domains_found']} domains found); lower --min-domain-size")
    tokenizer = SmilesTokenizer.from_corpus(s for sample in samples for s in sample.sequences)
    for sample in samples:
        sample.tokens = sum(len(tokenizer.encode(s)) for s in sample.sequences)
    if stats["invalid_smiles"] and progress:
        print(f"{stats['invalid_smiles']} invalid SMILES of {stats['molecules_read']} skipped and "
              f"counted; first: {stats['invalid_examples'][0]}")
    args = {"inputs": [str(p) for p in inputs], "min_domain_size": min_domain_size,
            "max_molecules": max_molecules, "val_fraction": val_fraction, "seed": seed,
            "shard_mb": shard_mb}
    return write_build(out, "molecules", samples, tokenizer, args, stats, val_fraction, seed,
                       int(shard_mb * 2**20), progress)
