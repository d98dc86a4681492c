"""protein-generation on real family fixtures with a tiny random-weight model: every figure the
suite reports equals an independent recomputation from the same samples (re-sampled with the
recorded seeds, Hamming from a fresh aligner, HMMER straight from pyhmmer, perplexity from a
float64 forward written here, KS / Pearson / intervals computed by hand); bad inputs give one line."""
from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.base import EvalRequest
from evaluation.errors import EvaluationError
from evaluation.families import load_families
from evaluation.protein_generation import PAPER_SETTINGS, ProteinGenerationSuite, setting_label
from tiny import tiny_bioxlstm

FIXTURES = Path(__file__).parent / "fixtures" / "protein"
OPTIONS = {"num_context": 3, "num_samples": 5, "max_new_tokens": 30, "max_families": 2,
           "settings": [[1.0, 10, 1.0], [0.8, 10, 0.9]]}


@pytest.fixture(scope="module")
def model():
    return tiny_bioxlstm("protein", seed=5)


@pytest.fixture(scope="module")
def run(model):
    suite = ProteinGenerationSuite(EvalRequest(data=str(FIXTURES), quick=True, seed=11, options=OPTIONS, batch_size=4))
    units = suite.plan(model)
    results = [suite.run_unit(model, unit) for unit in units]
    return suite, units, results, suite.summarize(model, results)


# ---- independent references --------------------------------------------------------------------

def reference_hamming(a: str, b: str) -> float:
    from Bio.Align import PairwiseAligner

    aligner = PairwiseAligner()
    aligner.mode = "global"
    aligner.match_score, aligner.mismatch_score = 1, -1
    aligner.open_gap_score, aligner.extend_gap_score = -1, -1
    alignment = aligner.align(a, b)[0]
    top, bottom = alignment[0], alignment[1]
    return sum(x != y for x, y in zip(top, bottom)) / len(top)


def reference_perplexity(model, context: list, sample: list) -> float:
    """exp(mean -log p) of the sample's tokens and the closing <cls>, float64, position by position."""
    cls = model.tokenizer.cls_id
    ids = context + sample + [cls]
    positions, position = [], -1
    for token in ids:
        position = 0 if token == cls else position + 1
        positions.append(min(position, 2047))
    with torch.no_grad():
        logits = model.model(torch.tensor([ids]), position_ids=torch.tensor([positions]))[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    losses = [-float(log_probs[t - 1, ids[t]]) for t in range(len(context), len(ids))]
    return math.exp(math.fsum(losses) / len(losses))


def reference_hmmer(a3m: str, sequences: list) -> list:
    import pyhmmer

    amino = pyhmmer.easel.Alphabet.amino()
    drop = str.maketrans("", "", string.ascii_lowercase + ".")
    rows = [line.strip().translate(drop) for line in open(a3m) if line.strip() and not line.startswith(">")]
    msa = pyhmmer.easel.TextMSA(name=b"m", sequences=[pyhmmer.easel.TextSequence(name=str(i).encode(), sequence=r)
                                                      for i, r in enumerate(rows)]).digitize(amino)
    hmm, _, _ = pyhmmer.plan7.Builder(amino).build_msa(msa, pyhmmer.plan7.Background(amino))
    block = pyhmmer.easel.TextSequenceBlock([pyhmmer.easel.TextSequence(name=str(i).encode(), sequence=s)
                                             for i, s in enumerate(sequences)]).digitize(amino)
    pipeline = pyhmmer.plan7.Pipeline(amino, bias_filter=False, F1=1.0, F2=1.0, F3=1.0)
    scores = [0.0] * len(sequences)
    for hit in pipeline.search_hmm(hmm, block):
        scores[int(hit.name)] = hit.score
    return scores


def reference_ks(a: list, b: list) -> float:
    points = sorted(set(a) | set(b))
    return max(abs(sum(x <= p for x in a) / len(a) - sum(x <= p for x in b) / len(b)) for p in points)


def reference_pearson(x: list, y: list):
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(np.corrcoef(np.array(x), np.array(y))[0, 1])


def reference_mean_interval(values: list):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


# ---- tests -------------------------------------------------------------------------------------

def test_samples_and_per_sample_scores_match_an_independent_recomputation(model, run):
    suite, units, results, _ = run
    families = load_families(str(FIXTURES), "test")[:2]
    assert [r["family"] for r in results] == [f.name for f in families]
    assert [r["alignment_format"] for r in results] == [None, "a3m"]
    tok, cls = model.tokenizer, model.tokenizer.cls_id
    checked = 0
    for index, (family, result) in enumerate(zip(families, results)):
        order = list(range(len(family.sequences)))
        random.Random(11 + index).shuffle(order)          # the family seed: request seed + index
        assert result["context"] == order[:3] and result["naturals"] == order[3:]
        context = []
        for i in order[:3]:
            context += [cls] + tok.encode(family.sequences[i])
        context += [cls]
        valid = []
        for block, setting in zip(result["settings"], OPTIONS["settings"]):
            assert block["setting"] == setting
            again = model.sample_continuations(context, 5, 30, *setting, seed=block["seed"],
                                               stop_tokens=["<cls>", "<eos>"], batch_size=4)
            assert [s["tokens"] for s in block["samples"]] == [len(ids) for ids in again]
            for sample, ids in zip(block["samples"], again):
                residues = tok.decode(ids).replace("-", "").replace(".", "")
                assert sample["sequence"] == residues
                status = "unfinished" if len(ids) == 30 else "empty" if not residues else "valid"
                assert sample["status"] == status
                if status != "valid":
                    assert sample["perplexity"] is None and sample["min_hamming"] is None
                    continue
                distances = [reference_hamming(member, residues) for member in family.sequences]
                assert sample["min_hamming"] == pytest.approx(min(distances), abs=1e-12)
                assert sample["median_hamming"] == pytest.approx(statistics.median(distances), abs=1e-12)
                assert sample["perplexity"] == pytest.approx(reference_perplexity(model, context, ids), rel=1e-9)
                valid.append(sample)
                checked += 1
        naturals = result["natural_scores"]
        for k, i in enumerate(result["naturals"]):
            others = [reference_hamming(m, family.sequences[i]) for n, m in enumerate(family.sequences) if n != i]
            assert naturals["min_hamming"][k] == pytest.approx(min(others), abs=1e-12)
            assert naturals["median_hamming"][k] == pytest.approx(statistics.median(others), abs=1e-12)
            natural_ids = tok.encode(family.sequences[i])
            expected = reference_perplexity(model, context, natural_ids)
            assert naturals["perplexity"][k] == pytest.approx(expected, rel=1e-9)
        if family.alignment_format == "a3m":
            expected = reference_hmmer(family.source, [s["sequence"] for s in valid]
                                       + [family.sequences[i] for i in result["naturals"]])
            assert [s["hmmer"] for s in valid] + naturals["hmmer"] == pytest.approx(expected, rel=1e-6)
            assert min(naturals["hmmer"]) > 50.0            # real members against their own family
        else:
            assert all(s["hmmer"] is None for s in valid) and naturals["hmmer"] == [None] * len(result["naturals"])
    assert checked >= 6                                      # the checks above ran on real samples


def synthetic_results(seed: int) -> list:
    """Unit results with overlapping sample / natural scores (so KS and Pearson are not 0 or 1),
    every status, a family without an alignment and one whose Hamming distances are constant."""
    rng = random.Random(seed)
    results = []
    for family in range(3):
        has_hmmer = family != 1

        def scores(valid: bool):
            if not valid:
                return {"min_hamming": None, "median_hamming": None, "hmmer": None, "perplexity": None}
            low = 0.25 if family == 2 else rng.choice([0.0, rng.uniform(0.1, 0.6)])
            return {"min_hamming": low, "median_hamming": low + 0.1 * (family != 2) * rng.random(),
                    "hmmer": rng.uniform(-5, 120) if has_hmmer else None, "perplexity": rng.uniform(2, 20)}

        settings = []
        for setting in OPTIONS["settings"]:
            samples = []
            for _ in range(rng.randint(4, 9)):
                status = rng.choice(["valid", "valid", "valid", "empty", "unfinished"])
                samples.append(dict(scores(status == "valid"), sequence="MK", tokens=2, status=status))
            settings.append({"setting": setting, "seed": 0, "samples": samples})
        naturals = [scores(True) for _ in range(rng.randint(1, 5))]
        results.append({"family": f"f{family}", "alignment_format": "a3m" if has_hmmer else None,
                        "members": 9, "context": [0], "naturals": list(range(len(naturals))),
                        "natural_scores": {k: [n[k] for n in naturals] for k in naturals[0]},
                        "settings": settings, "notes": []})
    return results


def test_summaries_of_synthetic_scores_equal_an_independent_aggregation(model):
    suite = ProteinGenerationSuite(EvalRequest(data=str(FIXTURES), quick=True, options=OPTIONS))
    for seed in range(3):
        results = synthetic_results(seed)
        summary = suite.summarize(model, results)
        check_aggregation(results, summary)
        ks = [f.value for name, f in summary.figures.items() if "/ks_" in name and f.value is not None]
        pearsons = [f for name, f in summary.figures.items() if "/pearson_" in name]
        assert any(0 < v < 1 for v in ks) and any(f.value is not None and f.n >= 2 for f in pearsons)


def test_figures_equal_an_independent_aggregation(run):
    _, _, results, summary = run
    check_aggregation(results, summary)
    assert summary.figures[f"{setting_label(OPTIONS['settings'][0])}/mean_hmmer"].n == 1   # one alignment family
    assert any("ESMFold" in note for note in summary.notes)
    assert any("disintegrin" in note and "no HMMER" in note for note in summary.notes)
    assert summary.settings["settings"] == OPTIONS["settings"] and summary.settings["families"] == 2
    assert len(summary.tables[0].rows) == len(OPTIONS["settings"]) + 1
    json.dumps(summary.to_dict())


def test_plot_writes_one_png(run, tmp_path):
    suite, _, _, summary = run
    files = suite.plot(summary, tmp_path / "plots")
    assert [f.name for f in files] == ["protein_generation_scores.png"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_aggregation(results: list, summary) -> None:
    scores = ("min_hamming", "median_hamming", "hmmer", "perplexity")
    for setting_index, setting in enumerate(OPTIONS["settings"]):
        label = setting_label(setting)
        per_family = {}
        for result in results:
            samples = result["settings"][setting_index]["samples"]
            valid = [s for s in samples if s["status"] == "valid"]
            has_hmmer = result["alignment_format"] is not None
            row = {"valid_share": len(valid) / len(samples),
                   "empty_share": sum(s["status"] == "empty" for s in samples) / len(samples),
                   "unfinished_share": sum(s["status"] == "unfinished" for s in samples) / len(samples),
                   "copy_share": sum(s["min_hamming"] == 0 for s in valid) / len(valid) if valid else None}
            for score in scores:
                usable = valid and (score != "hmmer" or has_hmmer)
                values = [s[score] for s in valid]
                row[f"mean_{score}"] = statistics.fmean(values) if usable else None
                row[f"ks_{score}"] = reference_ks(values, result["natural_scores"][score]) if usable else None
                if score != "perplexity":
                    row[f"pearson_perplexity_{score}"] = (reference_pearson([s["perplexity"] for s in valid], values)
                                                          if usable else None)
            for key, value in row.items():
                per_family.setdefault(key, []).append(value)
        for key, values in per_family.items():
            figure = summary.figures[f"{label}/{key}"]
            mean, interval = reference_mean_interval(values)
            assert figure.n == sum(v is not None for v in values), key
            assert figure.value == pytest.approx(mean, abs=1e-12), key
            assert figure.interval == (pytest.approx(interval, abs=1e-12) if interval is not None else None), key
    for score in scores:
        means = [statistics.fmean(r["natural_scores"][score]) if None not in r["natural_scores"][score] else None
                 for r in results]
        figure = summary.figures[f"natural/mean_{score}"]
        assert figure.value == pytest.approx(reference_mean_interval(means)[0], abs=1e-12)


def test_units_are_reproducible_and_sizes_follow_quick_and_full(model, run):
    suite, units, results, _ = run
    assert suite.run_unit(model, units[1]) == results[1]
    quick = ProteinGenerationSuite(EvalRequest(data=str(FIXTURES), quick=True))._sizes()
    full = ProteinGenerationSuite(EvalRequest(data=str(FIXTURES), quick=False))._sizes()
    assert (quick["num_context"], quick["num_samples"], quick["max_new_tokens"]) == (8, 8, 300)
    assert (full["num_context"], full["num_samples"], full["max_new_tokens"]) == (100, 100, 1000)
    assert quick["settings"] == [list(PAPER_SETTINGS[0])]
    assert full["settings"] == [list(s) for s in PAPER_SETTINGS]


def test_bad_inputs_give_one_clear_line(model, tmp_path):
    def fails(match, data=str(FIXTURES), options=None, which=model):
        suite = ProteinGenerationSuite(EvalRequest(data=data, quick=True, options=options or {}))
        with pytest.raises(EvaluationError, match=match) as err:
            suite.plan(which)
        assert "\n" not in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    fails("no family files", data=str(empty))
    fails("needs data", data=None)
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(FIXTURES / "protamine_P1.fasta", single)
    (single / "lonely.fasta").write_text(">a\nMKTAYIAKQR\n")
    fails("family 'lonely' has 1 sequence", data=str(single))
    ragged = tmp_path / "ragged"
    ragged.mkdir()
    (ragged / "fam.a3m").write_text(">a\nMKTAYIAKQR\n>b\nMKTAY\n")
    fails("fam.a3m: A3M rows have 2 different numbers of match columns", data=str(ragged))
    fails("option settings: .*not a list", options={"settings": [[1.0, 10]]})
    fails("option settings: \\[1.0, 10, 1.5\\]", options={"settings": [[1.0, 10, 1.5]]})
    fails("option num_samples", options={"num_samples": 0})
    fails("needs a protein model", which=tiny_bioxlstm("molecules"))
