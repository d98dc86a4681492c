"""Validation loss: mean token cross-entropy over the validation shards at the stage's context.

A fresh validation loader each pass, so every pass scores the same samples (comparable
numbers across steps) and the train loader's position and the RNG are untouched.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.engine import summed_token_loss
from pretrain.parallel import collective_device


def validation_loss(engine, cfg, plan, parallel, max_batches: int, cp_group=None) -> float:
    """Mean loss per label token over `max_batches` micro-batches per rank (0 = whole split)."""
    from data_pipeline.loader import build_loader

    loader = build_loader(cfg.data, "validation", plan.context_len, plan.micro_batch_size,
                          parallel.dp_rank, parallel.dp_size, seed=cfg.train.seed)
    totals = torch.zeros(2, dtype=torch.float64)      # summed loss, token count
    engine.eval()
    with torch.no_grad():
        for number, batch in enumerate(loader):
            if max_batches and number >= max_batches:
                break
            batch = {k: parallel.split_sequence(v).to(engine.device) for k, v in batch.items()}
            logits = engine(batch["input_ids"], position_ids=batch["position_ids"], cp_group=cp_group)
            totals[0] += summed_token_loss(logits, batch["labels"]).double().cpu()
            totals[1] += int((batch["labels"] != -100).sum())
    engine.train()
    if parallel.world_size > 1:
        totals = totals.to(collective_device(parallel.dp_cp_group))
        dist.all_reduce(totals, group=parallel.dp_cp_group)
    return float(totals[0] / totals[1].clamp(min=1))
