"""Transformer++ baseline for the training-step benchmark: a Llama-style decoder of matched size.

Pre-RMSNorm blocks, causal self-attention with RoPE on q and k (rotate-half pairs, the Llama
layout) through torch SDPA (`is_causal=True`; on CUDA restricted to the flash-attention backend,
so the baseline gets its fastest kernel), SwiGLU feed-forward, no biases, final RMSNorm, LM head
(untied by default, as Prot-xLSTM's). It lives in bench/ because it is a yardstick, not a
product model: it has no step mode, no context parallelism and no export.

`match_parameter_count` picks width, depth and feed-forward size so that the parameter count is
within a tolerance of a target (e.g. Prot-xLSTM-102M's), preferring the usual shape of small
Llama models (width / depth near 64, feed-forward near 8/3 of the width).

FLOPs per token (`flops_per_token`, same convention as modeling/flops.py: multiply-add = 2,
training = 3 x forward) per layer: projections 2 (4 d^2 + 3 d f) and attention 2 S d: the
scores q k^T and the weighted sum of v over the causal half of the S x S square
(2 matmuls x 2 FLOPs x S/2 keys x d), the work a causal flash-attention kernel does.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FFN_MULTIPLE = 64            # feed-forward width is a multiple of this (tensor-core friendly)
TARGET_ASPECT = 64.0         # width / depth of small Llama / GPT-2 models (768 / 12)
TARGET_FFN_RATIO = 8.0 / 3.0  # SwiGLU width / model width (Llama)


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    rope_theta: float = 500000.0
    tie_embeddings: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.num_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def describe(self) -> str:
        return (f"Transformer++ d {self.d_model}, {self.num_layers} layer{'s' if self.num_layers > 1 else ''}, {self.num_heads} heads of "
                f"{self.head_dim}, SwiGLU {self.ffn_dim}, {'tied' if self.tie_embeddings else 'untied'} "
                f"embeddings")


def parameter_count(cfg: TransformerConfig) -> int:
    d, f, V = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    layer = 4 * d * d + 3 * d * f + 2 * d          # q, k, v, o; gate, up, down; two RMSNorm weights
    embeddings = V * d * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * layer + embeddings + d  # + final norm


def forward_flops_per_token(cfg: TransformerConfig, context_len: int) -> float:
    d, f = cfg.d_model, cfg.ffn_dim
    projections = 2 * (4 * d * d + 3 * d * f)
    attention = 2 * context_len * d                 # causal half of q k^T and of p v (module doc)
    return cfg.num_layers * (projections + attention) + 2 * d * cfg.vocab_size


def flops_per_token(cfg: TransformerConfig, context_len: int) -> float:
    """Training FLOPs per token (3 x forward) at `context_len`; grows linearly with it."""
    return 3.0 * forward_flops_per_token(cfg, context_len)


def match_parameter_count(target: int, vocab_size: int, tie_embeddings: bool = False,
                          head_dim: int | None = None, tolerance: float = 0.03,
                          rope_theta: float = 500000.0) -> TransformerConfig:
    """The most Llama-shaped config whose parameter count is within `tolerance` of `target`.

    Widths are multiples of `head_dim` (default 128 from 10M parameters up, the flash-attention
    sweet spot; 32 below); for each width and depth the feed-forward width closest to the
    remaining budget is taken. Among the shapes within tolerance, the one nearest to width/depth
    64 and feed-forward 8/3 x width wins."""
    if target <= 0:
        raise ValueError(f"target parameter count must be positive, got {target}")
    if head_dim is None:
        head_dim = 128 if target >= 10_000_000 else 32
    best, best_score = None, math.inf
    max_width = max(2 * head_dim, int(math.sqrt(target)) + head_dim)
    for d in range(head_dim, max_width + 1, head_dim):
        fixed = vocab_size * d * (1 if tie_embeddings else 2) + d
        for layers in range(1, 129):
            per_layer = (target - fixed) / layers
            ffn_cont = (per_layer - 4 * d * d - 2 * d) / (3 * d)
            if ffn_cont < FFN_MULTIPLE / 2:
                break
            ffn = max(FFN_MULTIPLE, FFN_MULTIPLE * round(ffn_cont / FFN_MULTIPLE))
            cfg = TransformerConfig(vocab_size, d, layers, d // head_dim, ffn, rope_theta, tie_embeddings)
            error = abs(parameter_count(cfg) - target) / target
            if error > tolerance:
                continue
            score = (abs(math.log(d / layers / TARGET_ASPECT)) + abs(math.log(ffn / d / TARGET_FFN_RATIO))
                     + 10 * error)
            if score < best_score:
                best, best_score = cfg, score
    if best is None:
        raise ValueError(f"no Transformer++ shape with head dim {head_dim} within {tolerance:.0%} of "
                         f"{target} parameters; pass a smaller head_dim or a larger tolerance")
    return best


# ------------------------------------------------------------------------------------ model
def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """positions (B, S) -> cos, sin (B, 1, S, head_dim) in fp32 for the rotate-half layout."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def attention_backend_context(device: torch.device):
    """Flash attention only on CUDA (fails loudly rather than timing a slower fallback)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin):
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        with attention_backend_context(x.device):
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h.transpose(1, 2).reshape(B, S, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class TransformerPP(nn.Module):
    """Same call as the xLSTM models' `forward(input_ids, position_ids=None, cp_group=None)` and
    a `blocks` list, so the trainer's engine and activation checkpointing apply unchanged."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 / Llama init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 L)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:
            for proj in (block.attn.out, block.ffn.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.cfg.num_layers))

    def forward(self, input_ids, position_ids=None, cp_group=None):
        if cp_group is not None:
            raise ValueError("the Transformer++ baseline has no context parallelism; pass cp_group=None")
        B, S = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(S, device=input_ids.device).expand(B, S)
        cos, sin = rope_tables(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embedding(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.final_norm(x)
        weight = self.embedding.weight if self.head is None else self.head.weight
        return F.linear(x, weight)


def build_transformer(cfg: TransformerConfig) -> TransformerPP:
    return TransformerPP(cfg)
