"""RoPE against complex rotation; FLOP counter properties against hand counts."""
import math

import torch

from modeling import ModelConfig, flops_per_token, load_model_config
import pytest

from modeling import rope
from modeling.rope import apply_rope, rope_angles, rope_cos_sin


def test_rope_is_complex_rotation_of_interleaved_pairs():
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    pos = torch.randint(0, 3000, (2, 7))
    ang = rope_angles(pos, 12, 500000.0)
    out = apply_rope(x, ang.cos(), ang.sin())
    j = torch.arange(6, dtype=torch.float64)
    theta = pos.double().unsqueeze(-1) * 500000.0 ** (-2 * j / 12)
    ref = torch.view_as_real(torch.view_as_complex(x.view(2, 7, 6, 2)) * torch.polar(torch.ones_like(theta), theta))
    assert torch.allclose(out, ref.view(2, 7, 12), rtol=1e-12, atol=1e-12)


def test_rope_scores_depend_on_relative_position_only():
    q, k = torch.randn(2, 16), torch.randn(2, 16)
    def score(pq, pk):
        ang = rope_angles(torch.tensor([pq, pk]), 16, 10000.0)
        cos, sin = ang.cos().float(), ang.sin().float()
        rq, rk = apply_rope(q, cos[:1], sin[:1]), apply_rope(k, cos[1:], sin[1:])
        return (rq * rk).sum(-1)
    assert torch.allclose(score(5, 2), score(105, 102), atol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_position", [2047, 1 << 20], ids=["table", "direct"])
def test_rope_cos_sin_equals_float64_cos_sin_cast(dtype, max_position):
    positions = torch.randint(0, 2048, (3, 50))
    positions[0, :3] = torch.tensor([0, 2047, 5000])            # 5000 is clamped at the bound
    cos, sin = rope_cos_sin(positions, 64, 500000.0, max_position, dtype)
    ang = rope_angles(positions.clamp(0, max_position), 64, 500000.0)
    assert cos.dtype == sin.dtype == dtype and cos.shape == (3, 50, 32)
    assert torch.equal(cos, ang.cos().to(dtype)) and torch.equal(sin, ang.sin().to(dtype))
    assert ((max_position, 64) in {(k[2], k[0]) for k in rope._TABLES}) == (max_position == 2047)


def test_flops_hand_count_prot_26m():
    cfg = load_model_config("prot_xlstm_26m")
    d, inner, H, dh, L = 512, 1024, 4, 256, 1024         # chunk_size: auto -> 1024 at head dim 256 (kernels v3)
    block = (2 * d * 2 * inner + 2 * inner * d + 3 * 2 * inner * 4 + 2 * 2 * 3 * inner * H
             + 2 * 4 * inner + H * (2 * L * dh + 4 * dh * dh))   # cell: causal half of each chunk
    expected = 3 * (16 * block + 2 * d * 38)
    assert flops_per_token(cfg, 2048) == expected
    # matmul part ~ 6 N (N = non-embedding parameters)
    assert 6 * 25.9e6 * 0.9 < flops_per_token(cfg, 2048) - 3 * 16 * H * (2 * L * dh + 4 * dh * dh) < 6 * 25.9e6


def test_flops_independent_of_context_beyond_chunk():
    cfg = load_model_config("protein_tiny")
    assert flops_per_token(cfg, 1024) == flops_per_token(cfg, 131072)
    assert flops_per_token(cfg, 8) < flops_per_token(cfg, 1024)
    bigger_chunk = ModelConfig.from_dict({**cfg.to_dict(), "chunk_size": 64})
    assert flops_per_token(bigger_chunk, 1024) > flops_per_token(cfg, 1024)


def test_bidirectional_doubles_block_cost():
    causal = ModelConfig(d_model=64, num_heads=2, vocab_size=16, tie_embeddings=True)
    bidir = ModelConfig.from_dict({**causal.to_dict(), "bidirectional": "weight_tied", "head": "mlm"})
    head = 3 * 2 * 64 * 16
    assert math.isclose(flops_per_token(bidir, 512) - head, 2 * (flops_per_token(causal, 512) - head))
