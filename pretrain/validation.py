"""Validation loss: mean token cross-entropy over the validation shards at the stage's context.

A fresh validation loader each pass, so every pass scores the same samples (comparable
numbers across steps) and the train loader's position and the RNG are untouched.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.engine import summed_token_loss
from pretrain.parallel import collective_device, ranks_with


def validation_loss(engine, cfg, plan, parallel, max_batches: int, cp_group=None) -> float:
    """Mean loss per label token over `max_batches` micro-batches per rank (0 = whole split).

    A packed validation split gives the ranks different numbers of batches (rows take as many
    documents as fit), so the ranks agree before every batch whether any of them still has one;
    a rank that has run out scores an empty batch meanwhile, so every forward's collectives
    (ZeRO-3 parameter gathers, context parallelism) are met on every rank."""
    from data_pipeline.loader import build_loader

    loader = build_loader(cfg.data, "validation", plan.context_len, plan.micro_batch_size,
                          parallel.dp_rank, parallel.dp_size, seed=cfg.train.seed)
    totals = torch.zeros(2, dtype=torch.float64)      # summed loss, token count
    stream, number = iter(loader), 0
    engine.eval()
    with torch.no_grad():
        while True:
            batch = None if max_batches and number >= max_batches else next(stream, None)
            if not ranks_with(batch is not None):
                break
            if batch is None:
                batch = _empty_batch(plan.micro_batch_size, plan.context_len, loader.tokenizer.pad_id)
            number += 1
            batch = {k: parallel.split_sequence(v).to(engine.device) for k, v in batch.items()}
            logits = engine(batch["input_ids"], position_ids=batch["position_ids"],
                            document_starts=batch["document_starts"], cp_group=cp_group)
            totals[0] += summed_token_loss(logits, batch["labels"]).double().cpu()
            totals[1] += int((batch["labels"] != -100).sum())
    engine.train()
    if parallel.world_size > 1:
        totals = totals.to(collective_device(parallel.dp_cp_group))
        dist.all_reduce(totals, group=parallel.dp_cp_group)
    return float(totals[0] / totals[1].clamp(min=1))


def _empty_batch(batch_size: int, context_len: int, pad_id: int) -> dict:
    """A batch of padding without loss (one empty document per row)."""
    starts = torch.zeros(batch_size, context_len, dtype=torch.bool)
    starts[:, 0] = True
    return {"input_ids": torch.full((batch_size, context_len), pad_id, dtype=torch.long),
            "labels": torch.full((batch_size, context_len), -100, dtype=torch.long),
            "position_ids": torch.zeros(batch_size, context_len, dtype=torch.long),
            "document_starts": starts}
