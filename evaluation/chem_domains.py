"""chem-domains: what k molecules of a domain in context buy (in-context conditional generation).

As Chem-xLSTM `evaluate_cond_gen.py` (DESIGN.md section 12): per held-out domain (ICST lines,
a smiles,domain CSV or a shard build's validation split), for k in (0, 1, 8, 32) (quick: 0, 1, 8;
option ks) the context is
`[BEG]` + k molecules of the domain, each followed by '.', and M samples at temperature 1 are
drawn; FCD and novelty are measured against that domain's molecules (all of them, the k context
molecules included, as the official code does), with validity and uniqueness. k = 0 is the
unconditional baseline. Per domain per k, then the mean over domains with its 95% interval.

Choices that differ from the official script: the domain's molecules are shuffled with the
domain's seed before the first k are taken (the official takes the file's first k; a shuffle
keeps an ordered file from choosing the context), the contexts are nested (k = 8 extends k = 1),
and each sample is ONE molecule, sampled until '.' or `[END]` (the official keeps up to three
molecules after the context from each sample), so M samples give M molecules.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from evaluation import chem_metrics as metrics
from evaluation.base import Suite, SuiteResult, Table, WorkUnit
from evaluation.chem_unconditional import MAX_NEW_TOKENS, TEMPERATURE, sample_smiles, stop_tokens
from evaluation.errors import EvaluationError
from evaluation.molecule_data import capped, read_domains, require_domain_sizes
from evaluation.sources import require_data
from evaluation.stats import mean_interval

KS = (0, 1, 8, 32)          # the paper's grid
QUICK_KS = (0, 1, 8)        # priming a 32-molecule context token by token dominates a quick run
METRICS = ("fcd", "novelty", "validity", "uniqueness")


def sample_seed(unit_seed: int, k: int) -> int:
    """The sampling seed of one (domain, k): a hash, so that no two (domain, k) share the seeds
    seed + b that `sample_continuations` gives its batches."""
    digest = hashlib.sha256(f"chem-domains\0{unit_seed}\0{k}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def context_ids(tokenizer, encoded_molecules: list, k: int) -> list:
    """`[BEG] mol1 . mol2 . ... molk .` as token ids (just `[BEG]` for k = 0)."""
    ids = [tokenizer.beg_id]
    for molecule in encoded_molecules[:k]:
        ids += list(molecule) + [tokenizer.separator_id]
    return ids


class ChemDomainsSuite(Suite):
    name = "chem-domains"
    modality = "molecules"
    description = "per held-out molecular domain: FCD and novelty of samples with k domain molecules in context"

    def _sizes(self) -> dict:
        request = self.request
        ks = self.option("ks", QUICK_KS, KS)
        if isinstance(ks, str):                 # "0,1,8" from a command line
            ks = [k for k in ks.replace(" ", "").split(",") if k]
        ks = [ks] if isinstance(ks, int) else ks
        try:
            ks = sorted({int(k) for k in ks})
        except (TypeError, ValueError):
            raise EvaluationError(f"suite {self.name}: option ks={ks!r} must be a list of integers >= 0") from None
        if not ks or ks[0] < 0:
            raise EvaluationError(f"suite {self.name}: option ks={ks!r} must be a list of integers >= 0")
        return {"ks": ks, "num_samples": int(self.option("num_samples", 64, 1024)),
                "max_domains": self.option("max_domains", 4, None),
                "reference_size": self.option("reference_size", 256, None),
                "max_new_tokens": int(self.option("max_new_tokens", MAX_NEW_TOKENS, MAX_NEW_TOKENS)),
                "skip_small_domains": bool(self.option("skip_small_domains", False, False)),
                "temperature": TEMPERATURE, "batch_size": request.batch_size}

    def plan(self, model) -> list:
        self.check_model(model)
        sizes = self._sizes()
        tokenizer = model.tokenizer
        if "." not in tokenizer.token_to_id:
            raise EvaluationError(f"suite {self.name}: the model's vocabulary has no '.' to separate "
                                  "context molecules; use a model trained on domains")
        data = require_data(self.request.data, self.name,
                            "an ICST domain file, a smiles,domain CSV or a molecules shard build")
        needed = max(sizes["ks"]) + 2
        domains = require_domain_sizes(
            read_domains(data), needed, sizes["skip_small_domains"],
            "pass smaller ks (options ks=...), drop the domain, or set option skip_small_domains=true")
        if sizes["max_domains"] is not None:
            domains = domains[:int(sizes["max_domains"])]
        if not domains:
            raise EvaluationError(f"{data}: no domain has the {needed} molecules ks={sizes['ks']} need; "
                                  "pass smaller ks")
        units = []
        for index, domain in enumerate(domains):
            seed = self.request.seed + index
            order = list(domain.molecules)
            random.Random(seed).shuffle(order)
            context = [tokenizer.encode(m, where=f"{domain.where} (context molecule {m!r})")
                       for m in order[:max(sizes["ks"])]]
            units.append(WorkUnit(index, domain.name, {"molecules": list(domain.molecules), "context": context,
                                                       "where": domain.where}, seed))
        return units

    def run_unit(self, model, unit: WorkUnit) -> dict:
        sizes = self._sizes()
        molecules = unit.payload["molecules"]
        domain_set = metrics.canonical_set(molecules)
        reference = metrics.fcd_statistics(capped(molecules, sizes["reference_size"], unit.seed))
        per_k = []
        for k in sizes["ks"]:
            ids = context_ids(model.tokenizer, unit.payload["context"], k)
            smiles, truncated = sample_smiles(model, ids, sizes["num_samples"], sizes["max_new_tokens"],
                                              sample_seed(unit.seed, k), sizes["batch_size"])
            parsed = metrics.parse_all(smiles)
            entry = {"k": k, "context_tokens": len(ids), "samples": parsed.total, "valid": len(parsed.canonical),
                     "unique": len(parsed.unique), "truncated": truncated,
                     "validity": metrics.validity(parsed), "uniqueness": metrics.uniqueness(parsed),
                     "novelty": metrics.novelty(parsed, domain_set), "fcd": None, "fcd_error": None,
                     "examples": smiles[:5]}
            try:
                entry["fcd"] = metrics.frechet_distance(metrics.fcd_statistics(parsed), reference)
            except ValueError as err:           # fcd_torch: a clearly complex matrix square root
                entry["fcd_error"] = str(err)
            per_k.append(entry)
        return {"domain": unit.key, "where": unit.payload["where"], "seed": unit.seed,
                "molecules": len(molecules), "reference_valid": None if reference is None else reference["n"],
                "per_k": per_k}

    def summarize(self, model, results: list) -> SuiteResult:
        sizes = self._sizes()
        figures, rows, curve = {}, [], []
        for position, k in enumerate(sizes["ks"]):
            for name in METRICS:
                figures[f"{name}_k{k}"] = mean_interval(r["per_k"][position][name] for r in results)
            rows.append([k] + [figures[f"{name}_k{k}"].text() for name in METRICS])
            fcd = figures[f"fcd_k{k}"]
            curve.append([k, fcd.value, fcd.interval, fcd.n])
        per_domain = [[r["domain"]] + ["-" if entry["fcd"] is None else round(entry["fcd"], 3) for entry in r["per_k"]]
                      for r in results]
        tables = [Table(f"Conditional generation per k (mean over {len(results)} domains, 95% interval, "
                        f"{sizes['num_samples']} samples per domain and k)",
                        ["k in context", "FCD", "novelty", "validity", "uniqueness"], rows),
                  Table("FCD to the domain against k", ["k", "FCD", "interval95", "domains"], curve),
                  Table("FCD per domain", ["domain"] + [f"k={k}" for k in sizes["ks"]], per_domain)]
        missing = sum(1 for r in results for entry in r["per_k"] if entry["fcd"] is None)
        notes = [
            "Each sample is one molecule after the context (stops at '.' or [END]); the official script "
            "keeps up to three molecules per sample. Context molecules: the first k of the domain after a "
            "seeded shuffle, nested across k.",
            "FCD and novelty are against all of the domain's molecules (the context molecules included, as "
            "the official code); a sampled copy of a context molecule is therefore not novel.",
        ]
        if missing:
            notes.append(f"FCD not computed for {missing} (domain, k) pairs with fewer than "
                         f"{metrics.FCD_MIN_MOLECULES} valid molecules (or a numerical failure); the means "
                         "count only the domains that have one (see n).")
        truncated = sum(entry["truncated"] for r in results for entry in r["per_k"])
        settings = dict(sizes, domains=len(results), truncated=truncated, data=str(self.request.data),
                        stop_tokens=stop_tokens(model.tokenizer))
        return SuiteResult(self.name, figures, tables, results, settings, notes)

    def plot(self, result: SuiteResult, out_dir: Path) -> list:
        from evaluation.plots import line_plot, matplotlib_available

        if not matplotlib_available():
            result.notes.append("no plot: matplotlib is not installed")
            return []
        curve = result.tables[1].rows
        path = line_plot(Path(out_dir) / "chem_domains_fcd.png", [r[0] for r in curve], [r[1] for r in curve],
                         [r[2] for r in curve], "molecules of the domain in context (k)",
                         "FCD to the domain (lower is closer)", "Chemistry in-context generation",
                         x_scale="symlog")
        return [path] if path is not None else []
