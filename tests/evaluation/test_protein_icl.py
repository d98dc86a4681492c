"""protein-icl against an independent recomputation: the layout written out by hand and the
per-token losses recomputed position by position in float64 with the model's recurrent step
(not the chunkwise forward the suite uses)."""
import math
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_bioxlstm  # noqa: E402

from evaluation.base import EvalRequest  # noqa: E402
from evaluation.errors import EvaluationError  # noqa: E402
from evaluation.protein_icl import ProteinICLSuite  # noqa: E402

AMINO = "LAGVSERTIDPKQNFYMHWC"


def write_families(folder: Path, sizes, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    families = {}
    for number, size in enumerate(sizes):
        members = ["".join(rng.choice(AMINO) for _ in range(rng.randint(6, 14))) for _ in range(size)]
        families[f"fam{number}"] = members
        (folder / f"fam{number}.fasta").write_text("".join(f">m{i}\n{s}\n" for i, s in enumerate(members)))
    return families


def stepwise_losses(model, tokens, positions):
    """-log p(tokens[t+1] | tokens[..t]) and argmax hits, one recurrent step at a time."""
    net = model.model
    state = net.init_state(1)
    ce, hit = [], []
    with torch.no_grad():
        for t in range(len(tokens) - 1):
            logits, state = net.step(torch.tensor([tokens[t]]), state, position_ids=torch.tensor([positions[t]]))
            log_probs = torch.log_softmax(logits[0].double(), dim=-1)
            ce.append(-float(log_probs[tokens[t + 1]]))
            hit.append(int(logits[0].argmax()) == tokens[t + 1])
    return ce, hit


def ppl(values):
    return math.exp(sum(values) / len(values))


def test_icl_figures_equal_a_position_by_position_float64_recomputation(tmp_path):
    families = write_families(tmp_path / "fams", [5, 3, 4])
    model = tiny_bioxlstm("protein", seed=1)
    context_len = 40                      # cuts the longer families: not every member is complete
    request = EvalRequest(data=str(tmp_path / "fams"), seed=7, context_len=context_len, context_lens=(20, 40))
    suite = ProteinICLSuite(request)
    units = suite.plan(model)
    results = [suite.run_unit(model, unit) for unit in units]
    summary = suite.summarize(model, results)
    tok = model.tokenizer
    cls = tok.cls_id
    expected_first, expected_last, expected_k1 = [], [], []
    for index, name in enumerate(sorted(families)):
        members = [tok.encode(s) for s in families[name]]
        random.Random(7 + index).shuffle(members)
        tokens, positions, owner = [], [], []          # owner[t]: member whose target is tokens[t+1]
        for j, residues in enumerate(members):
            tokens += [cls] + residues
            positions += list(range(len(residues) + 1))
            owner += [j] * (len(residues) + 1)
        tokens.append(cls)
        positions.append(0)
        tokens, positions = tokens[:context_len + 1], positions[:context_len + 1]
        ce, hit = stepwise_losses(model, tokens, positions)
        owner = owner[:len(ce)]
        per_member = {}
        for t, j in enumerate(owner):
            per_member.setdefault(j, []).append(t)
        # complete: the member's end <cls> (the token after its last residue) is a target
        complete = [j for j, ts in per_member.items() if tokens[ts[-1] + 1] == cls
                    and len(ts) == len(members[j]) + 1]
        got = results[index]["member_perplexity"]
        assert len(got) == len(complete)
        for j in complete:
            assert got[j] == pytest.approx(ppl([ce[t] for t in per_member[j]]), rel=1e-9)
            acc = sum(hit[t] for t in per_member[j]) / len(per_member[j])
            assert results[index]["member_accuracy"][j] == pytest.approx(acc, rel=1e-12)
        expected_first.append(ppl([ce[t] for t in per_member[0]]))
        expected_k1.append(ppl([ce[t] for t in per_member[1]]))
        expected_last.append(ppl([ce[t] for t in per_member[complete[-1]]]))
        short = [j for j in complete if per_member[j][-1] < 20]
        assert results[index]["last_perplexity_at"]["20"] == pytest.approx(
            ppl([ce[t] for t in per_member[short[-1]]]), rel=1e-9)
    mean = sum(expected_first) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in expected_first) / 2)
    assert summary.figures["first_perplexity"].value == pytest.approx(mean, rel=1e-9)
    assert summary.figures["first_perplexity"].interval == pytest.approx(1.96 * std / math.sqrt(3), rel=1e-9)
    assert summary.figures["first_perplexity"].n == 3
    assert summary.figures["icl_perplexity_k1"].value == pytest.approx(sum(expected_k1) / 3, rel=1e-9)
    assert summary.figures["last_perplexity"].value == pytest.approx(sum(expected_last) / 3, rel=1e-9)
    assert summary.figures["last_perplexity_ctx40"].value == pytest.approx(sum(expected_last) / 3, rel=1e-9)


def test_fim_figures_count_the_tokens_after_eos_through_the_next_cls(tmp_path):
    from data_pipeline.formatters import fim_spans

    families = write_families(tmp_path / "fams", [4], seed=3)
    model = tiny_bioxlstm("protein", seed=2)
    suite = ProteinICLSuite(EvalRequest(data=str(tmp_path / "fams"), seed=11, context_len=400))
    unit = suite.plan(model)[0]
    result = suite.run_unit(model, unit)
    tok = model.tokenizer
    members = [tok.encode(s) for s in families["fam0"]]
    random.Random(11).shuffle(members)
    rng = random.Random(12)
    tokens, positions, counted = [], [], []
    for residues in members:
        spans = fim_spans(len(residues), rng, 1.0, 5, 0.2)
        layout, pos = [tok.cls_id], [0]
        cursor = 0
        for number, (start, end) in enumerate(spans, start=1):      # <cls> prefix <mask-i> ...
            layout += residues[cursor:start] + [tok.fim_mask_id(number)]
            pos += list(range(cursor + 1, start + 1)) + [start + 1]
            cursor = end
        layout += residues[cursor:]
        pos += list(range(cursor + 1, len(residues) + 1))
        if spans:                                                   # ... suffix <eos> <mask-1> span1 ...
            layout.append(tok.eos_id)
            pos.append(0)
            for number, (start, end) in enumerate(spans, start=1):
                layout += [tok.fim_mask_id(number)] + residues[start:end]
                pos += [start + 1] + list(range(start + 1, end + 1))
            eos = len(tokens) + layout.index(tok.eos_id)
            counted += list(range(eos, len(tokens) + len(layout)))   # targets eos+1 .. next <cls>
        tokens += layout
        positions += pos
    tokens.append(tok.cls_id)
    positions.append(0)
    ce, hit = stepwise_losses(model, tokens, positions)
    assert counted, "the seed must give at least one FIM span"
    assert result["fim_tokens"] == len(counted)
    assert result["fim_perplexity"] == pytest.approx(ppl([ce[t] for t in counted]), rel=1e-9)
    assert result["fim_accuracy"] == pytest.approx(sum(hit[t] for t in counted) / len(counted), rel=1e-12)


def test_a_family_of_one_sequence_is_one_clear_error(tmp_path):
    folder = tmp_path / "fams"
    write_families(folder, [3])
    (folder / "lonely.fasta").write_text(">only\nMKTAYIAK\n")
    suite = ProteinICLSuite(EvalRequest(data=str(folder)))
    with pytest.raises(EvaluationError, match=r"lonely.fasta.*1 sequence.*at least 2"):
        suite.plan(tiny_bioxlstm("protein"))


def test_a_non_protein_model_or_missing_data_is_refused(tmp_path):
    write_families(tmp_path / "fams", [3])
    with pytest.raises(EvaluationError, match="needs a protein model"):
        ProteinICLSuite(EvalRequest(data=str(tmp_path / "fams"))).plan(tiny_bioxlstm("dna"))
    with pytest.raises(EvaluationError, match="needs data"):
        ProteinICLSuite(EvalRequest()).plan(tiny_bioxlstm("protein"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no family files"):
        ProteinICLSuite(EvalRequest(data=str(tmp_path / "empty"))).plan(tiny_bioxlstm("protein"))
