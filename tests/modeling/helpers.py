"""Tiny configs shared by the modeling tests."""
from __future__ import annotations

from modeling import ModelConfig


def tiny(**overrides) -> ModelConfig:
    base = dict(vocab_size=16, d_model=16, num_blocks=2, num_heads=2, chunk_size=4,
                slstm_num_heads=2, position_encoding="rope_head", kernel_backend="torch")
    base.update(overrides)
    return ModelConfig(**base)


def rel_err(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
