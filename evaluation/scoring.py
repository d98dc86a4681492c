"""Per-token cross-entropy and argmax hits of one laid-out row, in float64.

Every loss the suites report is a mean over chosen target positions of these, so which tokens
count is decided by the suite's layout and nothing here counts padding: a row is exactly the
tokens of one item, never padded.
"""
from __future__ import annotations

import torch


def row_token_scores(model, ids: list, positions: list, document_starts: list | None = None):
    """(ce, hit) for targets 1..L-1 of `ids`: ce[t] = -log p(ids[t+1] | ids[..t]) (float64),
    hit[t] = argmax of the logits at t equals ids[t+1]. One forward of the whole row."""
    starts = None if document_starts is None else [document_starts]
    logits = model._forward([list(ids)], [list(positions)], document_starts=starts)[0]
    return logits_token_scores(logits[:-1], torch.tensor(ids[1:], device=logits.device))


def logits_token_scores(logits: torch.Tensor, targets: torch.Tensor):
    """(ce, hit) of logits (T, V) against targets (T,), the cross-entropy in float64."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    ce = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    hit = logits.argmax(dim=-1) == targets
    return ce.cpu(), hit.cpu()


def perplexity_and_accuracy(ce: torch.Tensor, hit: torch.Tensor, index) -> tuple:
    """exp(mean ce) and mean hit over the target positions `index` (a list or a bool mask);
    (None, None) when there are none."""
    chosen_ce, chosen_hit = ce[index], hit[index]
    if chosen_ce.numel() == 0:
        return None, None
    return float(torch.exp(chosen_ce.mean())), float(chosen_hit.double().mean())
