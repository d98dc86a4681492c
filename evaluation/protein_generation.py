"""protein-generation: do proteins sampled with homologs in context look like their family?

Per held-out family (DESIGN.md section 12, Prot-xLSTM `evaluation/generation/`): the members are
shuffled with the family's seed; the first n (option num_context, at most members - 1) are the
context `<cls>h1<cls>h2...<cls>hn<cls>` (positions restarting at each `<cls>`), the others are
the natural members the samples are compared with. For each sampling setting (temperature,
top-k, top-p) N sequences are sampled until `<cls>` / `<eos>` (at most max_new_tokens) and
scored, as are the natural members:
- min and median normalised Hamming distance to the family's members after the official global
  alignment (evaluation.alignment); a natural member leaves itself out;
- HMMER bit score against a profile HMM of the family alignment (A3M / Stockholm families only;
  evaluation.hmmer_scores), 0 without a hit;
- perplexity of the sequence given the same context: exp(mean cross-entropy) over its tokens and
  the closing `<cls>`, from one forward of `context + sequence + <cls>` with the model's own
  distribution (temperature 1, no filtering), as the official takes it from the raw logits.
Per family and setting: the samples' mean of each score, the KS statistic between samples and
natural members per score, the Pearson r of perplexity with each other score over the samples,
the shares of empty (immediate stop), unfinished (no stop within max_new_tokens; the official
drops these) and copied (identical to a member) samples; then the mean over families with its
95% interval. Only finished, non-empty samples ("valid") are scored.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Optional

from evaluation.alignment import family_distances, min_median
from evaluation.base import Suite, SuiteResult, Table, WorkUnit
from evaluation.errors import EvaluationError
from evaluation.families import load_families
from evaluation.scoring import perplexity_and_accuracy, row_token_scores
from evaluation.stats import mean_interval

PAPER_SETTINGS = ((1.0, 10, 1.0), (1.0, 15, 1.0), (1.0, 10, 0.95), (0.9, 10, 0.95), (0.8, 10, 0.9))
SCORES = ("min_hamming", "median_hamming", "hmmer", "perplexity")
STOP_TOKENS = ("<cls>", "<eos>")
GAPS = str.maketrans("", "", "-.")


def setting_label(setting) -> str:
    temperature, top_k, top_p = setting
    return f"T{temperature:g}_k{top_k}_p{top_p:g}"


def parse_settings(value) -> list:
    """The sampling grid as (temperature, top_k, top_p) tuples, or one clear line."""
    from modeling.sampling import SamplingSettings

    try:
        settings = [(float(t), None if k is None else int(k), None if p is None else float(p)) for t, k, p in value]
    except (TypeError, ValueError):
        raise EvaluationError(f"protein-generation option settings: {value!r} is not a list of "
                              "[temperature, top_k, top_p] triples, e.g. [[1.0, 10, 1.0]]") from None
    if not settings:
        raise EvaluationError("protein-generation option settings: empty; give at least one "
                              "[temperature, top_k, top_p] triple")
    for setting in settings:
        try:
            SamplingSettings(*setting)
        except ValueError as err:
            raise EvaluationError(f"protein-generation option settings: {list(setting)}: {err}") from None
    return settings


def context_layout(members: list, cls_id: int) -> list:
    """`<cls> h1 <cls> h2 ... <cls> hn <cls>` (token ids): the last `<cls>` opens the new member."""
    ids = []
    for residues in members:
        ids += [cls_id] + list(residues)
    return ids + [cls_id]


def sequence_perplexity(model, context_ids: list, sequence_ids: list) -> float:
    """exp(mean cross-entropy) of `sequence_ids` and the closing `<cls>` after `context_ids`."""
    ids = list(context_ids) + list(sequence_ids) + [model.tokenizer.cls_id]
    ce, hit = row_token_scores(model, ids, model._positions(ids))
    return perplexity_and_accuracy(ce, hit, list(range(len(context_ids) - 1, len(ids) - 1)))[0]


def ks_statistic(samples: list, naturals: list) -> Optional[float]:
    from scipy.stats import ks_2samp

    samples, naturals = _finite(samples), _finite(naturals)
    if not samples or not naturals:
        return None
    return float(ks_2samp(samples, naturals).statistic)


def pearson(xs: list, ys: list) -> Optional[float]:
    """Pearson r of paired values (pairs with a missing value left out); None for fewer than 2
    pairs or a constant side."""
    from scipy.stats import pearsonr

    pairs = [(x, y) for x, y in zip(xs, ys) if _is_number(x) and _is_number(y)]
    if len(pairs) < 2 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return None
    return float(pearsonr([x for x, _ in pairs], [y for _, y in pairs]).statistic)


def _is_number(value) -> bool:
    return value is not None and math.isfinite(value)


def _finite(values: list) -> list:
    return [float(v) for v in values if _is_number(v)]


def _mean(values: list) -> Optional[float]:
    values = _finite(values)
    return math.fsum(values) / len(values) if values else None


def setting_summary(setting_result: dict, naturals: dict, has_hmmer: bool) -> dict:
    """One family's figures for one setting, from its per-sample scores."""
    samples = setting_result["samples"]
    valid = [s for s in samples if s["status"] == "valid"]
    count = len(samples)
    summary = {"samples": count, "valid": len(valid),
               "valid_share": len(valid) / count if count else None,
               "empty_share": sum(s["status"] == "empty" for s in samples) / count if count else None,
               "unfinished_share": sum(s["status"] == "unfinished" for s in samples) / count if count else None,
               "copy_share": (sum(s["min_hamming"] == 0.0 for s in valid) / len(valid)) if valid else None}
    for score in SCORES:
        if score == "hmmer" and not has_hmmer:
            summary[f"mean_{score}"] = summary[f"ks_{score}"] = None
            continue
        values = [s[score] for s in valid]
        summary[f"mean_{score}"] = _mean(values)
        summary[f"ks_{score}"] = ks_statistic(values, naturals[score])
    perplexities = [s["perplexity"] for s in valid]
    for score in SCORES[:-1]:
        summary[f"pearson_perplexity_{score}"] = (pearson(perplexities, [s[score] for s in valid])
                                                  if score != "hmmer" or has_hmmer else None)
    return summary


class ProteinGenerationSuite(Suite):
    name = "protein-generation"
    modality = "protein"
    needs_causal = True
    description = ("samples with n homologs in context, scored against their family: Hamming "
                   "distance, HMMER bit score, perplexity, KS statistic against natural members")

    def _sizes(self) -> dict:
        request = self.request
        settings = self.option("settings", None, None)
        settings = parse_settings(settings) if settings is not None else \
            list(PAPER_SETTINGS[:1] if request.quick else PAPER_SETTINGS)
        sizes = {"num_context": self.option("num_context", 8, 100),
                 "num_samples": self.option("num_samples", 8, 100),
                 "max_new_tokens": self.option("max_new_tokens", 300, 1000),
                 "max_families": self.option("max_families", 4, None),
                 "settings": [list(s) for s in settings]}
        for key in ("num_context", "num_samples", "max_new_tokens"):
            if not isinstance(sizes[key], int) or sizes[key] < 1:
                raise EvaluationError(f"protein-generation option {key}: {sizes[key]!r}; give a whole number >= 1")
        return sizes

    def plan(self, model) -> list:
        from evaluation.hmmer_scores import read_digital_msa

        self.check_model(model)
        sizes = self._sizes()
        families = load_families(self.request.data, self.name, min_members=2, max_families=sizes["max_families"])
        units = []
        for index, family in enumerate(families):
            if family.alignment_format:      # a broken alignment fails here, on every rank, before any work
                read_digital_msa(family.source, family.alignment_format)
            encoded = [model.tokenizer.encode(s, where=f"{family.source} member {n}")
                       for n, s in enumerate(family.sequences)]
            payload = {"sequences": list(family.sequences), "encoded": encoded, "source": family.source,
                       "alignment_format": family.alignment_format}
            units.append(WorkUnit(index, family.name, payload, self.request.seed + index))
        return units

    def run_unit(self, model, unit: WorkUnit) -> dict:
        from evaluation.hmmer_scores import bit_scores, build_profile

        sizes = self._sizes()
        family, encoded = unit.payload["sequences"], unit.payload["encoded"]
        order = list(range(len(family)))
        random.Random(unit.seed).shuffle(order)
        num_context = min(sizes["num_context"], len(family) - 1)
        context, naturals = order[:num_context], order[num_context:]
        context_ids = context_layout([encoded[i] for i in context], model.tokenizer.cls_id)

        def scored(residues: str, ids: list, exclude: Optional[int] = None) -> dict:
            low, middle = min_median(family_distances(residues, family, exclude))
            return {"min_hamming": low, "median_hamming": middle,
                    "perplexity": sequence_perplexity(model, context_ids, ids)}

        settings = []
        for number, setting in enumerate(sizes["settings"]):
            temperature, top_k, top_p = setting
            seed = random.Random(f"{unit.seed}:{number}").randrange(2 ** 31)
            sampled = model.sample_continuations(context_ids, sizes["num_samples"], sizes["max_new_tokens"],
                                                 temperature, top_k, top_p, seed=seed, stop_tokens=STOP_TOKENS,
                                                 batch_size=self.request.batch_size)
            samples = []
            for ids in sampled:
                residues = model.tokenizer.decode(ids).translate(GAPS)
                status = ("unfinished" if len(ids) >= sizes["max_new_tokens"] else
                          "empty" if not residues else "valid")
                sample = {"sequence": residues, "tokens": len(ids), "status": status,
                          "min_hamming": None, "median_hamming": None, "hmmer": None, "perplexity": None}
                if status == "valid":
                    sample.update(scored(residues, ids))
                samples.append(sample)
            settings.append({"setting": list(setting), "seed": seed, "samples": samples})
        natural = {score: [] for score in SCORES}
        for index in naturals:
            for score, value in scored(family[index], encoded[index], exclude=index).items():
                natural[score].append(value)
        natural["hmmer"] = [None] * len(naturals)
        notes = []
        if unit.payload["alignment_format"]:
            hmm = build_profile(unit.payload["source"], unit.payload["alignment_format"])
            valid = [s for block in settings for s in block["samples"] if s["status"] == "valid"]
            scores = bit_scores(hmm, [s["sequence"] for s in valid] + [family[i] for i in naturals])
            for sample, score in zip(valid, scores):
                sample["hmmer"] = score
            natural["hmmer"] = scores[len(valid):]
        else:
            notes.append(f"{unit.key}: plain FASTA family (no alignment), no HMMER score")
        return {"family": unit.key, "source": unit.payload["source"],
                "alignment_format": unit.payload["alignment_format"], "members": len(family),
                "context": context, "naturals": naturals, "context_tokens": len(context_ids),
                "natural_scores": natural, "settings": settings, "notes": notes}

    def summarize(self, model, results: list) -> SuiteResult:
        sizes = self._sizes()
        figures, per_item, notes = {}, [], []
        per_setting = {setting_label(s): [] for s in sizes["settings"]}
        for result in results:
            has_hmmer = bool(result["alignment_format"])
            item = {"family": result["family"], "members": result["members"],
                    "context": len(result["context"]), "naturals": len(result["naturals"]),
                    "natural": {f"mean_{score}": _mean(result["natural_scores"][score]) for score in SCORES},
                    "settings": {}}
            for block in result["settings"]:
                summary = setting_summary(block, result["natural_scores"], has_hmmer)
                item["settings"][setting_label(block["setting"])] = summary
                per_setting[setting_label(block["setting"])].append(summary)
            per_item.append(item)
            notes += result["notes"]
        for score in SCORES:
            figures[f"natural/mean_{score}"] = mean_interval(i["natural"][f"mean_{score}"] for i in per_item)
        keys = (["valid_share", "empty_share", "unfinished_share", "copy_share"]
                + [f"mean_{s}" for s in SCORES] + [f"ks_{s}" for s in SCORES]
                + [f"pearson_perplexity_{s}" for s in SCORES[:-1]])
        rows = []
        for label, summaries in per_setting.items():
            for key in keys:
                figures[f"{label}/{key}"] = mean_interval(s[key] for s in summaries)
            rows.append([label] + [figures[f"{label}/{key}"].text() for key in
                                   ("valid_share", "mean_min_hamming", "mean_median_hamming", "mean_hmmer",
                                    "mean_perplexity", "ks_min_hamming", "ks_hmmer", "ks_perplexity")])
        columns = ["setting (T, top-k, top-p)", "valid share", "min Hamming", "median Hamming", "HMMER bits",
                   "perplexity", "KS min Hamming", "KS HMMER", "KS perplexity"]
        rows.append(["natural members"] + ["-"] + [figures[f"natural/mean_{s}"].text() for s in SCORES]
                    + ["-", "-", "-"])
        notes += ["Structure scores (ESMFold pTM / pLDDT) are not part of this suite: they need hub "
                  "weights and a GPU.",
                  "Natural members are the family members not in the context; their Hamming distances "
                  "leave themselves out. The profile HMM is built from the whole family alignment, so "
                  "natural members were part of it (as in the official evaluation).",
                  "Samples are kept as sampled (the official keeps one copy of duplicates and, in its "
                  "final tables, the lowest-perplexity ones); gap characters are removed before scoring.",
                  "A sample identical to a family member has min Hamming 0 (counted in copy_share); the "
                  "official skips members equal to the scored sequence, which hides such copies."]
        settings = dict(sizes, families=len(results), data=self.request.data, seed=self.request.seed)
        return SuiteResult(self.name, figures,
                           [Table("Homology-conditioned generation (mean over families, 95% interval)", columns, rows)],
                           per_item, settings, notes)

    def plot(self, result: SuiteResult, out_dir: Path) -> list:
        """Samples of each setting next to the natural members: mean min Hamming, HMMER bits and
        perplexity over families with their 95% intervals (one panel each)."""
        from evaluation.plots import matplotlib_available

        if not matplotlib_available():
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [setting_label(s) for s in result.settings["settings"]]
        panels = [("min_hamming", "min Hamming distance"), ("hmmer", "HMMER bit score"), ("perplexity", "perplexity")]
        figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=120)
        for axis, (score, title) in zip(axes, panels):
            bars = ([result.figures[f"{label}/mean_{score}"] for label in labels]
                    + [result.figures[f"natural/mean_{score}"]])
            axis.bar(range(len(bars)), [b.value or 0.0 for b in bars], yerr=[b.interval or 0.0 for b in bars],
                     capsize=3, color=["tab:blue"] * len(labels) + ["tab:green"])
            axis.set_xticks(range(len(bars)), labels + ["natural"], rotation=45, ha="right", fontsize=7)
            axis.set_title(title)
            axis.grid(alpha=0.3, axis="y")
        figure.suptitle("Homology-conditioned generation (mean over families)")
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "protein_generation_scores.png"
        figure.savefig(path)
        plt.close(figure)
        return [path]
