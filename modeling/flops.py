"""Training FLOPs per token (forward + backward = 3x forward; multiply-add = 2 FLOPs).

Counts matmuls and the mLSTM chunkwise cell: per head and token 2*L*Dh (intra-chunk scores
and their values over the causal half of the chunk, on average L/2 keys per query, L =
min(chunk size, context_len), chunk_size "auto" resolved by the kernels' rule; the masked half
a kernel may compute is not useful work, as in bench/kernels.py and the attention baselines) + 4*Dh^2 (state read and state update); the
cell's cost does not grow with the context beyond one chunk. Element-wise work is ignored.
"""
from __future__ import annotations

from kernels.mlstm.chunking import resolve_chunk_size
from modeling.config import ModelConfig


def _mlstm_block_forward(cfg: ModelConfig, context_len: int) -> float:
    d, inner, H = cfg.d_model, cfg.inner_dim, cfg.num_heads
    dh = inner // H
    L = min(resolve_chunk_size(cfg.chunk_size, dh, dh, context_len), context_len)
    matmul = 2 * d * 2 * inner + 2 * inner * d                   # up, down
    matmul += 3 * 2 * inner * cfg.qk_block_size                  # headwise q, k, v
    matmul += 2 * 2 * 3 * inner * H                              # input and forget gates
    matmul += 2 * cfg.conv_kernel_size * inner                   # depthwise conv
    cell = H * (2 * L * dh + 4 * dh * dh)                        # causal half of the chunk
    return matmul + cell


def _slstm_block_forward(cfg: ModelConfig) -> float:
    d, H = cfg.d_model, cfg.slstm_num_heads
    ff = cfg.ffn_dim
    gates = 2 * 4 * d * (d // H if cfg.slstm_gate_layout == "headwise" else d)
    return (gates                              # input contributions of the 4 gates
            + 2 * H * (d // H) * 4 * (d // H)  # block-diagonal recurrence
            + 2 * cfg.conv_kernel_size * d
            + 2 * d * 2 * ff + 2 * ff * d)     # gated feed-forward


def forward_flops_per_token(cfg: ModelConfig, context_len: int) -> float:
    total = 0.0
    for index in range(cfg.num_blocks):
        block = (_slstm_block_forward(cfg) if index in cfg.slstm_positions
                 else _mlstm_block_forward(cfg, context_len))
        both_ways = cfg.bidirectional == "weight_tied" or cfg.rc_mode == "param_sharing"
        total += block * (2 if both_ways else 1)
    total += 2 * cfg.d_model * cfg.vocab_size                    # output projection
    if cfg.rc_mode in ("post_hoc", "param_sharing_halves"):
        total *= 2
    return total


def flops_per_token(cfg: ModelConfig, context_len: int) -> float:
    """Training FLOPs per token (3 x forward) of `cfg` at `context_len`."""
    return 3.0 * forward_flops_per_token(cfg, context_len)
