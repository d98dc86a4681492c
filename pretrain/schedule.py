"""Learning rate as a function of tokens seen, so it stays continuous across curriculum stages.

Warmup is linear from `warmup_start_lr` to `lr` over `warmup_tokens`; after it:
- cosine: lr -> min_lr along half a cosine over the remaining tokens (DNA-xLSTM recipe);
- wsd: constant, then linear decay to min_lr over the last `decay_fraction` of the tokens;
- constant: lr (Prot-xLSTM recipe: warmup then constant).
"""
from __future__ import annotations

import math


def learning_rate(tokens: int, total_tokens: int, train_cfg) -> float:
    peak, floor = train_cfg.lr, train_cfg.min_lr
    warmup = train_cfg.warmup_tokens
    if warmup > 0 and tokens < warmup:
        return train_cfg.warmup_start_lr + (peak - train_cfg.warmup_start_lr) * tokens / warmup
    if train_cfg.schedule == "constant":
        return peak
    if train_cfg.schedule == "cosine":
        span = max(1, total_tokens - warmup)
        progress = min(1.0, max(0.0, (tokens - warmup) / span))
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    if train_cfg.schedule == "wsd":
        decay_start = total_tokens * (1.0 - train_cfg.decay_fraction)
        if tokens <= decay_start:
            return peak
        progress = min(1.0, (tokens - decay_start) / max(1.0, total_tokens - decay_start))
        return peak + (floor - peak) * progress
    raise ValueError(f"unknown schedule {train_cfg.schedule!r}")
