"""chem-unconditional: the quality of molecules sampled from nothing but `[BEG]`.

As Chem-xLSTM `evaluate.py` (DESIGN.md section 12): N molecules at temperature 1 (plain
multinomial), from `[BEG]` to `[END]`, at most 100 tokens each. This project's molecule models
are trained on domains (`[BEG] mol . mol ... [END]`), so a '.' also ends a molecule: the stop
tokens are `[END]` and '.' (when the vocabulary has it). A sample that reaches the token limit is
kept as generated (and counted as truncated).

Metrics (`evaluation.chem_metrics`): validity, uniqueness, novelty, FCD to a reference set,
unique Bemis-Murcko scaffolds, unique Morgan fingerprints, mean SA score. The reference set is
`request.data` (a SMILES file or a shard build's validation molecules), a seeded sample of at most
`reference_size` molecules. Novelty is measured against `request.novelty_reference` (the paper's
choice: a held-out set) or by default the training set: the train split of the shard build in
`request.train_data` or `request.data`.

Work units are chunks of samples; chunk c samples with seed `seed + c * batches per chunk`, and
`sample_continuations` uses seed + b for its batch b, so every batch of the whole run has its own
seed (seed, seed + 1, ...) whichever rank runs the chunk.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from evaluation import chem_metrics as metrics
from evaluation.base import Suite, SuiteResult, Table, WorkUnit
from evaluation.errors import EvaluationError
from evaluation.molecule_data import capped, read_molecules, read_smiles_list
from evaluation.sources import is_shard_build, require_data
from evaluation.stats import mean_interval, single

MAX_NEW_TOKENS = 100        # the official limit per sample
TEMPERATURE = 1.0

_CACHE: dict = {}           # reference sets and their ChemNet statistics, per process


def stop_tokens(tokenizer) -> list:
    """`[END]`, and '.' where the vocabulary has it (it ends one molecule of a domain)."""
    return [t for t in ("[END]", ".") if t in tokenizer.token_to_id]


def sample_smiles(model, context_ids: list, count: int, max_new_tokens: int, seed: int,
                  batch_size: int) -> tuple:
    """(decoded SMILES, number that hit the token limit) of `count` samples after `context_ids`."""
    rows = model.sample_continuations(context_ids, count, max_new_tokens, temperature=TEMPERATURE,
                                      seed=seed, stop_tokens=stop_tokens(model.tokenizer),
                                      batch_size=batch_size)
    truncated = sum(1 for row in rows if len(row) >= max_new_tokens)
    return [model.tokenizer.decode(row) for row in rows], truncated


def _file_key(path) -> tuple:
    """What identifies a data file or build for caching: its path, size and modification time."""
    path = Path(path).resolve()
    target = path / "manifest.json" if path.is_dir() else path
    stat = os.stat(target)
    return str(path), stat.st_size, stat.st_mtime_ns


def cached(key: tuple, compute):
    if key not in _CACHE:
        _CACHE[key] = compute()
    return _CACHE[key]


def reference_statistics(path, cap, seed: int) -> dict:
    """ChemNet statistics of the reference molecules (a seeded sample of at most `cap`)."""
    def compute():
        molecules = capped(read_molecules(path, "validation"), cap, seed)
        parsed = metrics.parse_all(molecules)
        return {"stats": metrics.fcd_statistics(parsed), "molecules": parsed.total,
                "valid": len(parsed.canonical)}

    return cached(("fcd-reference",) + _file_key(path) + (cap, seed), compute)


def novelty_reference(path) -> dict:
    """Canonical SMILES of the novelty reference: a SMILES file, or a shard build's train split."""
    def compute():
        molecules = read_molecules(path, "train") if Path(path).is_dir() else read_smiles_list(path)
        return {"canonical": metrics.canonical_set(molecules), "molecules": len(molecules)}

    return cached(("novelty-reference",) + _file_key(path), compute)


class ChemUnconditionalSuite(Suite):
    name = "chem-unconditional"
    modality = "molecules"
    description = "validity, uniqueness, novelty, FCD, scaffolds, fingerprints, SA score of samples from [BEG]"

    def _sizes(self) -> dict:
        request = self.request
        return {"num_samples": int(self.option("num_samples", 1024, 10240)),
                "chunk_size": int(self.option("chunk_size", 256, 1024)),
                "max_new_tokens": int(self.option("max_new_tokens", MAX_NEW_TOKENS, MAX_NEW_TOKENS)),
                "reference_size": self.option("reference_size", 1024, 10240),
                "temperature": TEMPERATURE, "batch_size": request.batch_size}

    def _novelty_source(self) -> tuple:
        """(path, what it is) novelty is measured against, or one line saying what to pass."""
        request = self.request
        if request.novelty_reference:
            path = Path(request.novelty_reference)
            if not path.exists():
                raise EvaluationError(f"{path}: no such file (--novelty-reference); pass a SMILES file")
            return path, "novelty reference file" + (" (train split)" if path.is_dir() else "")
        for candidate in (request.train_data, request.data):
            if candidate and is_shard_build(candidate):
                return Path(candidate), "train split of the shard build"
        if request.train_data and Path(request.train_data).is_file():
            return Path(request.train_data), "training SMILES file"
        raise EvaluationError(f"suite {self.name}: novelty needs the training molecules; pass "
                              "--novelty-reference FILE (a SMILES list) or a shard build as the data")

    def plan(self, model) -> list:
        self.check_model(model)
        sizes = self._sizes()
        data = require_data(self.request.data, self.name,
                            "a SMILES file or a molecules shard build (the FCD reference set)")
        if data.is_dir() and not is_shard_build(data):
            raise EvaluationError(f"{data}: a directory without manifest.json; pass a SMILES file or a "
                                  "shard build")
        novelty_path, _ = self._novelty_source()
        for path in (data, novelty_path):       # an empty or unreadable file fails before sampling
            if Path(path).is_file():
                read_smiles_list(path)
        if sizes["num_samples"] < 1 or sizes["chunk_size"] < 1:
            raise EvaluationError(f"suite {self.name}: options num_samples and chunk_size must be >= 1")
        start_id = model.tokenizer.beg_id
        batches_per_chunk = math.ceil(sizes["chunk_size"] / sizes["batch_size"])
        units = []
        for index, first in enumerate(range(0, sizes["num_samples"], sizes["chunk_size"])):
            count = min(sizes["chunk_size"], sizes["num_samples"] - first)
            units.append(WorkUnit(index, f"samples {first}-{first + count - 1}",
                                  {"context": [start_id], "count": count},
                                  self.request.seed + index * batches_per_chunk))
        return units

    def run_unit(self, model, unit: WorkUnit) -> dict:
        sizes = self._sizes()
        smiles, truncated = sample_smiles(model, unit.payload["context"], unit.payload["count"],
                                          sizes["max_new_tokens"], unit.seed, sizes["batch_size"])
        return {"chunk": unit.key, "seed": unit.seed, "smiles": smiles, "truncated": truncated}

    def summarize(self, model, results: list) -> SuiteResult:
        sizes = self._sizes()
        notes = []
        smiles = [s for result in results for s in result["smiles"]]
        parsed = metrics.parse_all(smiles)
        valid, unique = len(parsed.canonical), len(parsed.unique)
        novelty_path, novelty_kind = self._novelty_source()
        novelty_set = novelty_reference(novelty_path)
        reference = reference_statistics(self.request.data, sizes["reference_size"], self.request.seed)
        fcd_value = None
        stats = metrics.fcd_statistics(parsed)
        if stats is None or reference["stats"] is None:
            notes.append(f"FCD not computed: it needs {metrics.FCD_MIN_MOLECULES} valid molecules per set "
                         f"({valid} generated, {reference['valid']} in the reference)")
        else:
            try:
                fcd_value = metrics.frechet_distance(stats, reference["stats"])
            except ValueError as err:           # fcd_torch: a clearly complex matrix square root
                notes.append(f"FCD not computed: {err}")
        scaffold_count, scaffold_share = metrics.unique_scaffolds(parsed)
        sa = metrics.sa_scores(parsed)
        if sa is None:
            notes.append("SA score not computed: this RDKit build ships no Contrib SA_Score/sascorer")
        figures = {
            "validity": single(metrics.validity(parsed), parsed.total),
            "uniqueness": single(metrics.uniqueness(parsed), valid),
            "novelty": single(metrics.novelty(parsed, novelty_set["canonical"]), unique),
            "fcd": single(fcd_value, valid),
            "unique_scaffolds": single(scaffold_count, valid),
            "unique_scaffolds_share": single(scaffold_share, valid),
            "unique_fingerprints": single(metrics.unique_fingerprints(parsed), valid),
            "sa_score": mean_interval(sa or []),
        }
        truncated = sum(r["truncated"] for r in results)
        labels = {"validity": "validity (valid / samples)", "uniqueness": "uniqueness (unique / valid)",
                  "novelty": "novelty (novel / unique)", "fcd": "FCD to the reference",
                  "unique_scaffolds": "unique Murcko scaffolds", "unique_scaffolds_share": "  share of valid",
                  "unique_fingerprints": "unique Morgan fingerprints (r2, 1024)", "sa_score": "SA score (mean)"}
        rows = [[labels[name], figure.text(), figure.n] for name, figure in figures.items()]
        notes += [
            f"Stop tokens {', '.join(stop_tokens(model.tokenizer))}: a '.' ends one molecule in this "
            "project's domain-trained models; the official unconditional models stop at [END] only.",
            f"{truncated} of {parsed.total} samples reached the {sizes['max_new_tokens']}-token limit "
            "(kept as generated).",
            "Uniqueness is over valid molecules and novelty over unique ones (the official code divides "
            "its counts by all samples); the paper's novelty is against a held-out set "
            "(--novelty-reference), the default here the training molecules.",
        ]
        settings = dict(sizes, samples=parsed.total, valid=valid, unique=unique, truncated=truncated,
                        stop_tokens=stop_tokens(model.tokenizer), reference=str(self.request.data),
                        reference_molecules=reference["molecules"], reference_valid=reference["valid"],
                        novelty_reference=str(novelty_path), novelty_reference_kind=novelty_kind,
                        novelty_reference_molecules=novelty_set["molecules"],
                        examples=smiles[:10])
        per_item = [{"chunk": r["chunk"], "seed": r["seed"], "samples": len(r["smiles"]),
                     "truncated": r["truncated"]} for r in results]
        table = Table(f"Unconditional generation ({parsed.total} samples, temperature {TEMPERATURE})",
                      ["metric", "value", "n"], rows)
        return SuiteResult(self.name, figures, [table], per_item, settings, notes)
