"""dna-lm: held-out DNA windows scored as the DNA-xLSTM paper reports its pretraining.

Windows: every stored window of a DNA build's validation split (or every record of a FASTA, or
with option `bed` the FASTA's intervals of the BED split `bed_split`, default test),
tiled from its start into non-overlapping windows of the context length (CLM: context + 1 bases,
the last one only a target); a shorter tail is dropped, so every figure is over full windows of
real bases and no padding is ever scored. Figures:
- CLM models: loss (mean next-base cross-entropy), perplexity per base, accuracy;
- MLM models: 15% of bases selected (80% [MASK], 10% random base, 10% kept, seeded per window
  chunk as in training), loss, perplexity and accuracy on the selected bases;
- MLM models: RC consistency = ||logits(x) - RC(logits(rc x))|| / ||logits(x)|| (Frobenius, per
  window, mean), exactly 0 for an RC-equivariant model (`rc_mode: param_sharing`), what a plain
  bidirectional model is away from it otherwise;
- MLM models: the post-hoc conjoined score, the same masked loss and accuracy with the logits of
  x averaged with the RC-mapped logits of rc(x) (DNA-xLSTM's test-time conjoining).
"""
from __future__ import annotations

import random

import torch

from evaluation.base import Suite, SuiteResult, Table, WorkUnit
from evaluation.errors import EvaluationError
from evaluation.scoring import logits_token_scores
from evaluation.sources import is_shard_build, require_data, shard_samples
from evaluation.stats import mean_interval, single

MASK_PROBABILITY = 0.15
WINDOWS_PER_UNIT = 16


def dna_records(path, suite: str, bed=None, bed_split: str = "test"):
    """(name, sequence) of the held-out DNA: a build's validation windows, a FASTA's records, or
    with `bed` (chrom, start, end, split lines: the DNA-xLSTM / Caduceus layout) the FASTA's
    intervals of `bed_split` ("train", "validation" or "test"), in BED order per chromosome."""
    root = require_data(path, suite, "a DNA shard build (its validation split) or a FASTA file")
    if is_shard_build(root):
        yield from ((key, sequences[0]) for key, sequences in shard_samples(root, "validation", "dna"))
        return
    if root.is_dir():
        raise EvaluationError(f"{root}: a folder without manifest.json; pass a DNA shard build or a FASTA file")
    from data_pipeline.readers import read_bed, read_fasta

    if bed is None:
        yield from ((record.name, record.sequence) for record in read_fasta(root))
        return
    wanted = {chrom: [i for i in intervals if i.split == bed_split] for chrom, intervals in read_bed(bed).items()}
    wanted = {chrom: intervals for chrom, intervals in wanted.items() if intervals}
    if not wanted:
        raise EvaluationError(f"{bed}: no interval of split {bed_split!r}; choose option bed_split "
                              "train, validation or test")
    found = set()
    for record in read_fasta(root):           # one chromosome in memory at a time
        for interval in wanted.get(record.name, []):
            if interval.end > len(record.sequence):
                raise EvaluationError(f"{bed} line {interval.line}: interval {record.name}:{interval.start}-"
                                      f"{interval.end} runs past the end of {record.name} "
                                      f"({len(record.sequence)} bases in {root})")
            yield f"{record.name}:{interval.start}-{interval.end}", record.sequence[interval.start:interval.end]
        found.add(record.name)
    missing = sorted(set(wanted) - found)
    if missing:
        raise EvaluationError(f"{bed}: chromosome {missing[0]!r} is not in {root}; pass the genome the BED "
                              "was made for")


def tile_windows(sequence: str, length: int) -> list:
    """Non-overlapping windows of exactly `length` characters from the start; the tail is dropped."""
    return [sequence[start:start + length] for start in range(0, len(sequence) - length + 1, length)]


class DNALMSuite(Suite):
    name = "dna-lm"
    modality = "dna"
    needs_causal = False
    description = "CLM / MLM loss and accuracy on held-out windows, RC consistency, post-hoc conjoining"

    def _sizes(self) -> dict:
        return {"context_len": self.request.context_len or self.option("context_len", 1024, 1024),
                "max_windows": self.option("max_windows", 32, 2048),
                "bed": self.option("bed", None, None), "bed_split": self.option("bed_split", "test", "test")}

    def plan(self, model) -> list:
        self.check_model(model)
        sizes = self._sizes()
        need = sizes["context_len"] + (1 if model.is_causal else 0)
        windows = []
        for name, sequence in dna_records(self.request.data, self.name, sizes["bed"], sizes["bed_split"]):
            for window in tile_windows(sequence, need)[:sizes["max_windows"] - len(windows)]:
                windows.append(model.tokenizer.encode(window, where=f"{self.request.data} record {name}"))
            if len(windows) >= sizes["max_windows"]:
                break
        if not windows:
            raise EvaluationError(f"{self.request.data}: no held-out sequence is {need} bases long; pass "
                                  f"a smaller --context-len or longer sequences")
        return [WorkUnit(number, f"windows {first}-{first + len(chunk) - 1}", chunk, self.request.seed + number)
                for number, first in enumerate(range(0, len(windows), WINDOWS_PER_UNIT))
                for chunk in [windows[first:first + WINDOWS_PER_UNIT]]]

    def _logits(self, model, rows: list) -> torch.Tensor:
        positions = [list(range(len(row))) for row in rows]
        return model._forward(rows, positions)

    def run_unit(self, model, unit: WorkUnit) -> dict:
        tok = model.tokenizer
        rows = [list(w) for w in unit.payload]
        result = {"windows": len(rows)}
        if model.is_causal:
            inputs = [row[:-1] for row in rows]
            logits = self._logits(model, inputs)
            targets = torch.tensor([row[1:] for row in rows], device=logits.device)
            ce, hit = logits_token_scores(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            result.update(loss_sum=float(ce.sum()), hit_sum=int(hit.sum()), tokens=int(ce.numel()))
            return result
        from data_pipeline.formatters import IGNORE, dna_mlm

        rng = random.Random(unit.seed)
        masked, labels = [], []
        for row in rows:
            document = dna_mlm(row, len(row), tok.mask_id, tok.base_ids, MASK_PROBABILITY, rng, None)
            masked.append(document.inputs)
            labels.append(document.labels)
        logits = self._logits(model, masked)
        label_tensor = torch.tensor(labels, device=logits.device)
        chosen = label_tensor != IGNORE
        ce, hit = logits_token_scores(logits[chosen], label_tensor[chosen])
        result.update(loss_sum=float(ce.sum()), hit_sum=int(hit.sum()), tokens=int(ce.numel()))
        from modeling.dna_rc import reverse_complement_ids, reverse_complement_logits

        rc_inputs = reverse_complement_ids(torch.tensor(masked), logits.shape[-1]).tolist()
        rc_logits = reverse_complement_logits(self._logits(model, rc_inputs))
        conjoined = (logits + rc_logits) / 2
        ce_c, hit_c = logits_token_scores(conjoined[chosen], label_tensor[chosen])
        result.update(conjoined_loss_sum=float(ce_c.sum()), conjoined_hit_sum=int(hit_c.sum()))
        difference = (logits.double() - rc_logits.double()).flatten(1).norm(dim=1)
        result["rc_consistency"] = (difference / logits.double().flatten(1).norm(dim=1)).tolist()
        return result

    def summarize(self, model, results: list) -> SuiteResult:
        import math

        tokens = sum(r["tokens"] for r in results)
        windows = sum(r["windows"] for r in results)
        loss = sum(r["loss_sum"] for r in results) / tokens
        figures = {"loss": single(loss, tokens), "perplexity": single(math.exp(loss), tokens),
                   "accuracy": single(sum(r["hit_sum"] for r in results) / tokens, tokens)}
        objective = "clm" if model.is_causal else "mlm"
        notes = [f"{objective.upper()} over {windows} windows of {self._sizes()['context_len']} bases"]
        if objective == "mlm":
            conjoined = sum(r["conjoined_loss_sum"] for r in results) / tokens
            figures["conjoined_loss"] = single(conjoined, tokens)
            figures["conjoined_perplexity"] = single(math.exp(conjoined), tokens)
            figures["conjoined_accuracy"] = single(sum(r["conjoined_hit_sum"] for r in results) / tokens, tokens)
        if objective == "mlm":
            figures["rc_consistency"] = mean_interval(v for r in results for v in r["rc_consistency"])
        rows = [[name, figure.text(4)] for name, figure in figures.items()]
        return SuiteResult(self.name, figures, [Table("Held-out windows", ["figure", "value"], rows)],
                           results, dict(self._sizes(), objective=objective, windows=windows), notes)
