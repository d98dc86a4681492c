"""Unigram baseline: the loss a model gets by predicting token frequencies only.

Validation cross-entropy (nats/token) of the validation labels under add-one smoothed
unigram frequencies of the training labels, both taken from the real loaders, so it counts
exactly the tokens the model's loss counts. A trained model must go below it.
"""
from __future__ import annotations

import dataclasses
import math

from data_pipeline.config import DataConfig
from data_pipeline.formatters import IGNORE
from data_pipeline.loader import build_loader


def _label_counts(loader, max_batches: int | None) -> list[int]:
    counts = [0] * loader.tokenizer.vocab_size
    for number, batch in enumerate(loader):
        if max_batches is not None and number >= max_batches:
            break
        for token in batch["labels"].flatten().tolist():
            if token != IGNORE:
                counts[token] += 1
    return counts


def unigram_cross_entropy(data_cfg: DataConfig, context_len: int, max_train_batches: int = 256) -> float:
    cfg = dataclasses.replace(data_cfg, num_workers=1)
    train = build_loader(cfg, "train", context_len, 1)
    # unpacked: at most one epoch; a packed stream has no fixed epoch length (and repeats are
    # harmless to frequencies)
    train_counts = _label_counts(train, max_train_batches if train.packing else min(max_train_batches, len(train)))
    val_counts = _label_counts(build_loader(cfg, "validation", context_len, 1), None)
    total = sum(train_counts) + len(train_counts)
    loss = sum(c * -math.log((train_counts[t] + 1) / total) for t, c in enumerate(val_counts))
    return loss / max(1, sum(val_counts))
