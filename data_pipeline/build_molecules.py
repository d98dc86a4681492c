"""Molecule shards: one sample = the molecules of one domain, or one molecule.

Inputs (`--format`):
- `auto` (default): a `smiles,domain` CSV, or plain SMILES files (one per line) grouped by the
  Bemis-Murcko scaffold (RDKit) of each molecule;
- `icst`: one domain per line, its molecules joined by '.' (the Chem-xLSTM in-context style
  transfer data; a plain SMILES file may hold '.' as salts, hence the flag);
- `smiles`: one molecule per line, each its own sample (unconditional training, e.g. ChEMBL).
Every SMILES is validated and canonicalized with RDKit in worker processes; invalid ones are
counted and reported (manifest `stats`), never silently dropped. The split is by domain
(by line for `icst` and `smiles`). Grouping by domain spills molecules to on-disk buckets by
domain hash, so at most one bucket is in memory.
"""
from __future__ import annotations

import csv
import json
import shutil
import zlib
from functools import partial
from pathlib import Path

from data_pipeline.build_output import run_build
from data_pipeline.build_parallel import batches
from data_pipeline.build_parts import Encoded, encode_sample
from data_pipeline.errors import ConfigError, InputFormatError
from data_pipeline.readers import open_text, require_files
from data_pipeline.tokenizers import split_smiles

ACYCLIC_DOMAIN = "<acyclic>"  # molecules without rings have an empty Murcko scaffold
FORMATS = ("auto", "icst", "smiles")
BUCKET_BYTES = 1 << 20  # input bytes per on-disk bucket: what grouping holds in memory at once (~25k
# molecules; 4 MB made the 1-worker build peak 17 MB higher at 200k SMILES than at 20k)
_rdkit = None


def _chem():
    global _rdkit
    if _rdkit is None:
        from rdkit import Chem, RDLogger
        from rdkit.Chem.Scaffolds import MurckoScaffold

        RDLogger.DisableLog("rdApp.*")
        _rdkit = (Chem, MurckoScaffold)
    return _rdkit


def _canonical(smiles: str):
    """(canonical SMILES, mol) or (None, None) if RDKit cannot parse it."""
    chem, _ = _chem()
    mol = chem.MolFromSmiles(smiles) if smiles else None
    return (None, None) if mol is None else (chem.MolToSmiles(mol), mol)


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


def _lines(inputs, max_lines):
    """(order, path, line, text) of every non-empty line, at most `max_lines`."""
    seen = 0
    for file_index, path in enumerate(inputs):
        for number, smiles, domain in _rows(path):
            if max_lines is not None and seen >= max_lines:
                return
            seen += 1
            yield (file_index, number), path, number, smiles, domain


def _has_domain_column(path: str) -> bool:
    with open_text(path) as handle:
        return "domain" in [h.strip().lower() for h in handle.readline().split(",")]


# ----------------------------------------------------------------------------- worker side
def _invalid(order, path, number, smiles) -> Encoded:
    return Encoded(counters={"molecules_read": 1, "invalid_smiles": 1},
                   examples=[[list(order), f"{path}:{number}: {smiles!r}"]])


def _encode_domain(item) -> Encoded:
    order, name, molecules = item
    vocab: set = set()
    tokens = 0
    for smiles in molecules:
        pieces = split_smiles(smiles)
        tokens += len(pieces)
        vocab.update(pieces)
    return Encoded([encode_sample(order, name, molecules, tokens, name, name)], {"domains": 1}, [], vocab)


def _encode_line(item, fmt: str, min_domain_size: int) -> Encoded:
    """`icst`: a line of '.'-joined molecules; `smiles`: one molecule."""
    order, path, number, text = item
    name = f"{Path(path).name}:{number}"
    molecules, result = [], Encoded(counters={"molecules_read": 0, "invalid_smiles": 0})
    for smiles in (text.split(".") if fmt == "icst" else [text]):
        canonical, _ = _canonical(smiles)
        result.counters["molecules_read"] += 1
        if canonical is None:
            result.counters["invalid_smiles"] += 1
            result.examples.append([list(order), f"{path}:{number}: {smiles[:80]!r}"])
        else:
            molecules.append(canonical)
    result.counters["domains_found"] = 1
    if len(molecules) < (min_domain_size if fmt == "icst" else 1):
        result.counters["molecules_in_small_domains"] = len(molecules)
        return result
    encoded = _encode_domain((order, name, molecules))
    encoded.counters.update(result.counters)
    encoded.examples = result.examples
    return encoded


def _scaffold_line(item):
    """(order, path, line, smiles, canonical or None, domain) for the grouping stage."""
    order, path, number, smiles, domain = item
    canonical, mol = _canonical(smiles)
    if canonical is not None and domain is None:
        domain = _chem()[1].MurckoScaffoldSmiles(mol=mol) or ACYCLIC_DOMAIN
    return order, path, number, smiles, canonical, domain


# ------------------------------------------------------------------------------- main side
def _line_items(ctx, inputs, max_molecules, bar):
    for order, path, number, smiles, _ in _lines(inputs, max_molecules):
        bar.update(1)
        if ctx.owns(f"{Path(path).name}:{number}"):
            yield order, path, number, smiles


def _domain_items(ctx, inputs, max_molecules, min_domain_size, spill_dir: Path, bar):
    """Molecules canonicalized in the pool, spilled to buckets by domain hash, then each bucket's
    domains (ordered by first appearance) as samples."""
    total = sum(Path(p).stat().st_size for p in inputs)
    buckets = max(1, min(256, total // BUCKET_BYTES + 1))
    spill_dir.mkdir(parents=True, exist_ok=True)
    spills = {b: open(spill_dir / f"{b}.jsonl", "w", encoding="utf-8") for b in range(buckets) if ctx.owns_bucket(b)}

    def wanted(item):  # a known domain outside this part: skip RDKit for it
        return item[4] is None or ctx.owns_bucket(zlib.crc32(item[4].encode()) % buckets)

    lines = (item for item in _lines(inputs, max_molecules) if bar.update(1) or wanted(item))
    for results in ctx.pool.map(_scaffold_line, batches(lines, lambda item: len(item[3]), max_items=512)):
        for order, path, number, smiles, canonical, domain in results:
            if canonical is None:
                owner = (ctx.owns_bucket(zlib.crc32(domain.encode()) % buckets) if domain is not None
                         else ctx.owns(str(order)))
                if owner:
                    ctx.writer.add(_invalid(order, path, number, smiles))
                continue
            spill = spills.get(zlib.crc32(domain.encode()) % buckets)
            if spill is not None:
                ctx.count_stat("molecules_read")
                spill.write(json.dumps([order, domain, canonical]) + "\n")
    for spill in spills.values():
        spill.close()
    for bucket in sorted(spills):
        domains: dict[str, list] = {}
        with open(spill_dir / f"{bucket}.jsonl", encoding="utf-8") as handle:
            for text in handle:
                order, domain, canonical = json.loads(text)
                domains.setdefault(domain, [order, []])[1].append(canonical)
        ctx.count_stat("domains_found", len(domains))
        for first, domain, members in sorted((first, d, m) for d, (first, m) in domains.items()):
            if len(members) < min_domain_size:
                ctx.count_stat("molecules_in_small_domains", len(members))
                continue
            yield (bucket, *first), domain, members
        (spill_dir / f"{bucket}.jsonl").unlink()
    shutil.rmtree(spill_dir, ignore_errors=True)


def build_molecules(inputs: list[str], out: str, min_domain_size: int = 2,
                    max_molecules: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                    shard_mb: float = 64.0, progress: bool = True, fmt: str = "auto", workers: int = 1,
                    part: str | None = None) -> dict:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    require_files(inputs)
    args = {"inputs": [str(p) for p in inputs], "min_domain_size": min_domain_size,
            "max_molecules": max_molecules, "val_fraction": val_fraction, "seed": seed,
            "shard_mb": shard_mb}
    if fmt != "auto":
        args["format"] = fmt

    def produce(ctx) -> dict:
        for name in ("molecules_read", "invalid_smiles", "domains_found", "domains", "molecules_in_small_domains"):
            ctx.count_stat(name, 0)
        bar = ctx.progress(None, "reading SMILES", "line")
        try:
            if fmt == "auto":
                items = _domain_items(ctx, inputs, max_molecules, min_domain_size, ctx.writer.folder / "buckets", bar)
                ctx.encode(_encode_domain, batches(items, lambda item: sum(map(len, item[2]))))
                grouping = "csv domain column" if any(_has_domain_column(p) for p in inputs) else "murcko scaffold"
            else:
                items = _line_items(ctx, inputs, max_molecules, bar)
                ctx.encode(partial(_encode_line, fmt=fmt, min_domain_size=min_domain_size),
                           batches(items, lambda item: len(item[3]), max_items=64 if fmt == "icst" else 512))
                grouping = "one domain per line (icst)" if fmt == "icst" else "one molecule per sample"
        finally:
            bar.close()
        if ctx.writer.counters["molecules_read"] and progress and ctx.writer.counters["invalid_smiles"]:
            print(f"{ctx.writer.counters['invalid_smiles']} invalid SMILES of {ctx.writer.counters['molecules_read']} "
                  f"skipped and counted; first: {ctx.writer.examples[0][1]}")
        return {"tokenizer": None, "stats": {"min_domain_size": min_domain_size, "grouping": grouping,
                                             "invalid_examples": []},
                "empty_hint": f"no domain has >= --min-domain-size={min_domain_size} valid molecules; "
                              "lower --min-domain-size, or check the file is SMILES (all invalid?)"}

    return run_build(out, "molecules", produce, args, val_fraction, seed, shard_mb, part, workers, progress)
