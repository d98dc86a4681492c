"""protein-icl: does a protein get easier to predict the more homologs precede it?

Per held-out family (DESIGN.md section 12, Prot-xLSTM `evaluate.py`): members shuffled with a
fixed seed, laid out as in training, `<cls>` before each member and one closing `<cls>`, position
ids restarting at each `<cls>`, cut at the context length. Member j (j homologs before it) is
scored on its residues plus the next `<cls>` (its end token); only members whose end token lies
inside the context count ("complete"). Reported per family, then as a mean over families with a
95% interval:
- the ICL curve: perplexity of member j for j = 0, 1, 2, 4, 8, ...;
- first, second and last complete member: perplexity and argmax accuracy;
- last complete member within each curriculum context length (one forward serves all: the model
  is causal, so a prefix of the row gives the logits a shorter context would);
- FIM, a second pass in the training's multi-span layout (`<cls> prefix <mask-1> ... suffix <eos>
  <mask-1> span1 ...`): perplexity and reconstruction accuracy of the tokens after each `<eos>`
  up to and including the next `<cls>`.
"""
from __future__ import annotations

import random
from pathlib import Path


from evaluation.base import Suite, SuiteResult, Table, WorkUnit
from evaluation.families import load_families
from evaluation.scoring import perplexity_and_accuracy, row_token_scores
from evaluation.stats import mean_interval

FIM_MEAN_SPANS, FIM_MAX_SPANS, FIM_SPAN_FRACTION = 1.0, 5, 0.2   # the training defaults (DESIGN.md section 8)


def icl_points(limit: int) -> list:
    """Homologs-in-context values of the curve: 0, 1, 2, 4, 8, ... below `limit`."""
    points, k = [0], 1
    while k < limit:
        points.append(k)
        k *= 2
    return [p for p in points if p < limit]


def member_layout(members: list, cls_id: int, max_position: int):
    """Tokens `<cls> m1 <cls> m2 ... <cls> mn <cls>`, positions restarting at each `<cls>`, and per
    member the target indices (t predicts token t + 1) of its residues and its end `<cls>`."""
    tokens, positions, targets = [], [], []
    for residues in members:
        start = len(tokens)
        tokens += [cls_id] + list(residues)
        positions += [min(p, max_position) for p in range(len(residues) + 1)]
        targets.append(list(range(start, start + len(residues) + 1)))
    tokens.append(cls_id)
    positions.append(0)
    return tokens, positions, targets


def fim_layout(members: list, rng: random.Random, tokenizer, max_position: int):
    """The training's FIM layout of every member, one closing `<cls>`, and per member with spans
    the target indices of the tokens after its `<eos>` up to and including the next `<cls>`."""
    from data_pipeline.formatters import fim_spans, protein_fim_sequence

    mask_ids = [tokenizer.fim_mask_id(k) for k in range(1, FIM_MAX_SPANS + 1)]
    tokens, positions, targets = [], [], []
    for residues in members:
        spans = fim_spans(len(residues), rng, FIM_MEAN_SPANS, FIM_MAX_SPANS, FIM_SPAN_FRACTION)
        seq_tokens, seq_positions = protein_fim_sequence(list(residues), spans, tokenizer.cls_id,
                                                         tokenizer.eos_id, mask_ids, max_position)
        start = len(tokens)
        tokens += seq_tokens
        positions += seq_positions
        if spans:
            eos = start + seq_tokens.index(tokenizer.eos_id)
            targets.append(list(range(eos, len(tokens))))    # predicts eos+1 .. the next <cls>
    tokens.append(tokenizer.cls_id)
    positions.append(0)
    return tokens, positions, targets


class ProteinICLSuite(Suite):
    name = "protein-icl"
    modality = "protein"
    description = "perplexity of the k-th homolog given k-1 before it; FIM span perplexity"

    def _sizes(self) -> dict:
        request = self.request
        context_lens = sorted({int(c) for c in request.context_lens})
        context_len = request.context_len or self.option("context_len", 2048, 131072)
        context_len = max([context_len] + context_lens)
        return {"context_len": context_len, "context_lens": context_lens or [context_len],
                "max_families": self.option("max_families", 16, None)}

    def plan(self, model) -> list:
        self.check_model(model)
        sizes = self._sizes()
        families = load_families(self.request.data, self.name, min_members=2,
                                 max_families=sizes["max_families"])
        units = []
        for index, family in enumerate(families):
            encoded = [model.tokenizer.encode(s, where=f"{family.source} member {n}")
                       for n, s in enumerate(family.sequences)]
            units.append(WorkUnit(index, family.name, encoded, self.request.seed + index))
        return units

    def run_unit(self, model, unit: WorkUnit) -> dict:
        sizes = self._sizes()
        context_len = sizes["context_len"]
        members = list(unit.payload)
        random.Random(unit.seed).shuffle(members)
        tokenizer, max_position = model.tokenizer, model.max_position
        tokens, positions, targets = member_layout(members, tokenizer.cls_id, max_position)
        tokens, positions = tokens[:context_len + 1], positions[:context_len + 1]
        ce, hit = row_token_scores(model, tokens, positions)
        complete = [t for t in targets if t[-1] < len(ce)]
        per_member = [perplexity_and_accuracy(ce, hit, t) for t in complete]
        result = {"family": unit.key, "members": len(members), "complete_members": len(complete),
                  "context_tokens": len(ce) + 1,
                  "member_perplexity": [p for p, _ in per_member],
                  "member_accuracy": [a for _, a in per_member],
                  "last_perplexity_at": {}}
        for length in sizes["context_lens"]:
            inside = [t for t in targets if t[-1] < min(len(ce), length)]
            result["last_perplexity_at"][str(length)] = (perplexity_and_accuracy(ce, hit, inside[-1])[0]
                                                         if inside else None)
        fim_tokens, fim_positions, fim_targets = fim_layout(members, random.Random(unit.seed + 1),
                                                            tokenizer, max_position)
        fim_tokens, fim_positions = fim_tokens[:context_len + 1], fim_positions[:context_len + 1]
        fim_ce, fim_hit = row_token_scores(model, fim_tokens, fim_positions)
        fim_index = [i for t in fim_targets if t[-1] < len(fim_ce) for i in t]
        result["fim_perplexity"], result["fim_accuracy"] = perplexity_and_accuracy(fim_ce, fim_hit, fim_index)
        result["fim_tokens"] = len(fim_index)
        return result

    def summarize(self, model, results: list) -> SuiteResult:
        sizes = self._sizes()
        figures, rows = {}, []

        def member(result, which, key="member_perplexity"):
            values = result[key]
            if which == "last":
                return values[-1] if values else None
            return values[which] if len(values) > which else None

        for label, which in (("first", 0), ("second", 1), ("last", "last")):
            figures[f"{label}_perplexity"] = mean_interval(member(r, which) for r in results)
            figures[f"{label}_accuracy"] = mean_interval(member(r, which, "member_accuracy") for r in results)
        figures["fim_perplexity"] = mean_interval(r["fim_perplexity"] for r in results)
        figures["fim_accuracy"] = mean_interval(r["fim_accuracy"] for r in results)
        longest = max((r["complete_members"] for r in results), default=0)
        curve = []
        for k in icl_points(longest):
            figure = mean_interval(member(r, k) for r in results)
            figures[f"icl_perplexity_k{k}"] = figure
            curve.append([k, figure.value, figure.interval, figure.n])
        context_rows = []
        for length in sizes["context_lens"]:
            figure = mean_interval(r["last_perplexity_at"][str(length)] for r in results)
            figures[f"last_perplexity_ctx{length}"] = figure
            context_rows.append([length, figure.value, figure.interval, figure.n])
        for name in ("first", "second", "last", "fim"):
            rows.append([name, figures[f"{name}_perplexity"].text(), figures[f"{name}_accuracy"].text()])
        tables = [Table("Perplexity and accuracy (mean over families, 95% interval)",
                        ["sequence", "perplexity", "accuracy"], rows),
                  Table("ICL curve: perplexity of a member with k homologs before it",
                        ["homologs k", "perplexity", "interval95", "families"], curve),
                  Table("Last complete member at each context length",
                        ["context length", "perplexity", "interval95", "families"], context_rows)]
        notes = ["ICL figures use the plain layout (no FIM spans); FIM figures a second pass in the "
                 "training's multi-span FIM layout. Loss is a mean over real tokens only (no padding)."]
        if figures["first_perplexity"].n == 0:
            notes.append(f"no family has a complete member within {sizes['context_len']} tokens: raise "
                         "the context length (--context-len, eval.context_len)")
        return SuiteResult(self.name, figures, tables, results, dict(sizes, families=len(results)), notes)

    def plot(self, result: SuiteResult, out_dir: Path) -> list:
        from evaluation.plots import line_plot

        curve = result.tables[1].rows
        contexts = result.tables[2].rows
        files = [line_plot(out_dir / "protein_icl_curve.png", [r[0] for r in curve], [r[1] for r in curve],
                           [r[2] for r in curve], "homologs in context (k)", "perplexity of the next member",
                           "Protein in-context learning", x_scale="symlog"),
                 line_plot(out_dir / "protein_icl_context_length.png", [r[0] for r in contexts],
                           [r[1] for r in contexts], [r[2] for r in contexts], "context length (tokens)",
                           "perplexity of the last complete member", "Longer context", x_scale="log2")]
        return [f for f in files if f is not None]
