"""dna-lm against an independent recomputation: each window's own float64 forward, the loss
taken by hand at the positions that count."""
import math
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_bioxlstm  # noqa: E402

from evaluation.base import EvalRequest  # noqa: E402
from evaluation.dna_lm import DNALMSuite  # noqa: E402
from evaluation.errors import EvaluationError  # noqa: E402


def write_fasta(path: Path, lengths, seed=0):
    rng = random.Random(seed)
    records = ["".join(rng.choice("ACGT") for _ in range(n)) for n in lengths]
    path.write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(records)))
    return records


def run(suite, model):
    units = suite.plan(model)
    return suite.summarize(model, [suite.run_unit(model, u) for u in units])


def test_clm_loss_is_the_mean_next_base_cross_entropy_over_full_windows(tmp_path):
    records = write_fasta(tmp_path / "g.fa", [70, 40, 10])      # 10 bases: shorter than a window, dropped
    model = tiny_bioxlstm("dna", seed=4)
    summary = run(DNALMSuite(EvalRequest(data=str(tmp_path / "g.fa"), context_len=16)), model)
    tok = model.tokenizer
    losses, hits = [], []
    for sequence in records:
        for start in range(0, len(sequence) - 17 + 1, 17):
            ids = tok.encode(sequence[start:start + 17])
            logits = model.model(torch.tensor([ids[:-1]]))[0].detach().double()
            log_probs = torch.log_softmax(logits, -1)
            for t in range(16):
                losses.append(-float(log_probs[t, ids[t + 1]]))
                hits.append(int(logits[t].argmax()) == ids[t + 1])
    assert len(losses) == (4 + 2) * 16
    assert summary.figures["loss"].value == pytest.approx(sum(losses) / len(losses), rel=1e-10)
    assert summary.figures["perplexity"].value == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-10)
    assert summary.figures["accuracy"].value == pytest.approx(sum(hits) / len(hits), rel=1e-12)
    assert summary.figures["loss"].n == len(losses)


def test_mlm_scores_only_masked_bases_and_conjoins_with_the_rc_strand(tmp_path):
    from data_pipeline.formatters import dna_mlm
    from modeling.dna_rc import complement_table

    records = write_fasta(tmp_path / "g.fa", [64, 32], seed=1)
    model = tiny_bioxlstm("dna", seed=5, head="mlm", bidirectional="weight_tied")
    summary = run(DNALMSuite(EvalRequest(data=str(tmp_path / "g.fa"), context_len=32, seed=3)), model)
    tok = model.tokenizer
    rng = random.Random(3)                       # one unit: seed 3, windows in order
    table = complement_table(model.config.vocab_size)
    ce, ce_conj, hits = [], [], []
    for sequence in records:
        for start in range(0, len(sequence) - 31, 32):
            document = dna_mlm(tok.encode(sequence[start:start + 32]), 32, tok.mask_id, tok.base_ids, 0.15, rng, None)
            x = torch.tensor([document.inputs])
            logits = model.model(x)[0].detach().double()
            rc_logits = model.model(table[x].flip(-1))[0].detach().double().flip(0)[:, table]
            for t, label in enumerate(document.labels):
                if label != -100:
                    ce.append(-float(torch.log_softmax(logits[t], -1)[label]))
                    ce_conj.append(-float(torch.log_softmax((logits[t] + rc_logits[t]) / 2, -1)[label]))
                    hits.append(int(logits[t].argmax()) == label)
    assert 0 < len(ce) < 96
    assert summary.figures["loss"].value == pytest.approx(sum(ce) / len(ce), rel=1e-10)
    assert summary.figures["conjoined_loss"].value == pytest.approx(sum(ce_conj) / len(ce_conj), rel=1e-10)
    assert summary.figures["accuracy"].value == pytest.approx(sum(hits) / len(hits))
    assert summary.figures["rc_consistency"].value > 0.01        # a plain bidirectional model is not equivariant


def test_rc_consistency_is_zero_for_the_equivariant_model_and_not_for_a_plain_one(tmp_path):
    write_fasta(tmp_path / "g.fa", [96], seed=2)
    equivariant = tiny_bioxlstm("dna", seed=6, head="mlm", rc_mode="param_sharing")
    summary = run(DNALMSuite(EvalRequest(data=str(tmp_path / "g.fa"), context_len=32)), equivariant)
    assert summary.figures["rc_consistency"].n == 3
    assert summary.figures["rc_consistency"].value < 1e-12
    plain = tiny_bioxlstm("dna", seed=6, head="mlm", bidirectional="weight_tied")
    summary = run(DNALMSuite(EvalRequest(data=str(tmp_path / "g.fa"), context_len=32)), plain)
    assert summary.figures["rc_consistency"].value > 0.01


def test_no_window_long_enough_is_one_clear_error(tmp_path):
    write_fasta(tmp_path / "g.fa", [20])
    with pytest.raises(EvaluationError, match="no held-out sequence is 33 bases long"):
        DNALMSuite(EvalRequest(data=str(tmp_path / "g.fa"), context_len=32)).plan(tiny_bioxlstm("dna"))


def test_a_bed_split_selects_the_held_out_intervals(tmp_path):
    records = write_fasta(tmp_path / "g.fa", [120, 90], seed=7)
    (tmp_path / "split.bed").write_text("r0\t0\t40\ttrain\nr0\t50\t84\ttest\nr1\t10\t60\tvalid\nr1\t40\t74\ttest\n")
    model = tiny_bioxlstm("dna", seed=8)
    request = EvalRequest(data=str(tmp_path / "g.fa"), context_len=16, options={"bed": str(tmp_path / "split.bed")})
    summary = run(DNALMSuite(request), model)
    losses = []
    for sequence in (records[0][50:84], records[1][40:74]):        # the test intervals, 34 bases: 2 windows each
        for start in (0, 17):
            ids = model.tokenizer.encode(sequence[start:start + 17])
            log_probs = torch.log_softmax(model.model(torch.tensor([ids[:-1]]))[0].detach().double(), -1)
            losses += [-float(log_probs[t, ids[t + 1]]) for t in range(16)]
    assert summary.figures["loss"].n == len(losses) == 64
    assert summary.figures["loss"].value == pytest.approx(sum(losses) / len(losses), rel=1e-10)


@pytest.mark.parametrize("bed, message", [
    ("r0\t0\t500\ttest\n", "line 1: interval r0:0-500 runs past the end of r0"),
    ("chrX\t0\t40\ttest\n", "chromosome 'chrX' is not in"),
    ("r0\t0\t40\ttrain\n", "no interval of split 'test'"),
    ("r0\t0\t40\n", "line 1: 3 tab-separated columns, expected 4"),
])
def test_a_bad_bed_is_one_clear_error(bed, message, tmp_path):
    write_fasta(tmp_path / "g.fa", [120])
    (tmp_path / "split.bed").write_text(bed)
    request = EvalRequest(data=str(tmp_path / "g.fa"), context_len=16, options={"bed": str(tmp_path / "split.bed")})
    with pytest.raises(Exception, match=message) as caught:
        DNALMSuite(request).plan(tiny_bioxlstm("dna"))
    assert getattr(caught.value, "user_facing", False)
