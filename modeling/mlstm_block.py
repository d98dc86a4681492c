"""The Prot-xLSTM mLSTM block (pre-up-projection), DESIGN.md section 8.

pre-LayerNorm -> up-projection to 2*inner (x, z) -> causal depthwise conv + SiLU on x -> q, k
from the conv output, v from the pre-conv x (headwise, blocksize 4) -> RoPE on q, k -> mLSTM
cell with gates Linear(3*inner -> heads) over concat[q, k, v] -> multi-head layer norm ->
+ skip * conv activation -> * SiLU(z) -> down-projection. The block returns its residual branch;
the stack adds it (so bidirectional and RC wrappers can combine branches).

The gates read q, k after RoPE when `gates_after_rope` (official Prot-xLSTM: its cell receives
the rotated q, k), before it otherwise (official DNA-xLSTM). `mlstm_bias` adds biases to the
up-projection, q/k/v and down-projection (official DNA-xLSTM `m_bias`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeling.config import ModelConfig
from modeling.layers import (
    CausalDepthwiseConv, HeadwiseLinear, LayerNorm, MultiHeadLayerNorm, small_init_, wang_init_,
)
from modeling.rope import apply_rope, rope_cos_sin


def _gate_precision(gate: torch.Tensor) -> torch.Tensor:
    """Gate pre-activations in at least fp32 (exp gating overflows in bf16); float64 stays."""
    return gate.to(torch.promote_types(gate.dtype, torch.float32))


class MLSTMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, inner, H = cfg.d_model, cfg.inner_dim, cfg.num_heads
        self.cfg, self.inner, self.num_heads, self.head_dim = cfg, inner, H, inner // H
        bias = cfg.mlstm_bias
        self.norm = LayerNorm(d, cfg.norm_eps, cfg.norm_weight_offset)
        self.proj_up = nn.Linear(d, 2 * inner, bias=bias)
        self.conv = CausalDepthwiseConv(inner, cfg.conv_kernel_size)
        self.q_proj = HeadwiseLinear(inner, cfg.qk_block_size, bias)
        self.k_proj = HeadwiseLinear(inner, cfg.qk_block_size, bias)
        self.v_proj = HeadwiseLinear(inner, cfg.qk_block_size, bias)
        self.igate = nn.Linear(3 * inner, H, bias=True)
        self.fgate = nn.Linear(3 * inner, H, bias=True)
        self.outnorm = MultiHeadLayerNorm(H, self.head_dim, cfg.norm_eps, cfg.norm_weight_offset)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, d, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.cfg
        small_init_(self.proj_up.weight, cfg.d_model)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_(proj.weight, self.inner)
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)
        wang_init_(self.proj_down.weight, cfg.d_model, cfg.num_blocks)
        for lin in (self.proj_up, self.q_proj, self.k_proj, self.v_proj, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    # -- pieces shared by the sequence and the step form -------------------------------------
    def _rotate(self, q, k, positions):
        """RoPE on flat q, k (..., inner): over the whole inner dim or per head."""
        pe, cfg = self.cfg.position_encoding, self.cfg
        if pe == "rope_inner":
            cos, sin = rope_cos_sin(positions, self.inner, cfg.rope_theta, cfg.max_position_id, q.dtype)
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if pe == "rope_head":
            cos, sin = rope_cos_sin(positions, self.head_dim, cfg.rope_theta, cfg.max_position_id, q.dtype)
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)          # broadcast over heads
            per_head = lambda t: apply_rope(t.unflatten(-1, (self.num_heads, self.head_dim)), cos, sin)
            return per_head(q).flatten(-2), per_head(k).flatten(-2)
        return q, k

    def _qkv_gates(self, x_m, x_c, positions):
        """x_m, x_c (..., inner) -> q, k, v (..., H, Dh), i, f (..., H)."""
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        if not self.cfg.gates_after_rope:
            qkv = torch.cat([q, k, v], dim=-1)
        q, k = self._rotate(q, k, positions)
        if self.cfg.gates_after_rope:
            qkv = torch.cat([q, k, v], dim=-1)
        i, f = self.igate(qkv), self.fgate(qkv)
        split = lambda t: t.unflatten(-1, (self.num_heads, self.head_dim))
        return split(q), split(k), split(v), i, f

    def _output(self, h, x_c, z):
        """h (..., H, Dh) from the cell -> residual branch (..., d)."""
        h = self.outnorm(h) + self.skip * x_c
        return self.proj_down(h * F.silu(z))

    # -- whole sequence ------------------------------------------------------------------------
    def forward(self, x, positions=None, cp_group=None, reverse=False, resets=None, rc_half=False):
        """x (B, S, d) -> residual branch (B, S, d). `positions` (B, S) long (needed with RoPE).
        `rc_half` changes nothing here (both halves of an RC-PS model run the same mLSTM).

        With `cp_group`, x is this rank's contiguous slice of the (already locally flipped when
        `reverse`) sequence: the conv halo and the mLSTM state come from the other ranks.
        `resets` (modeling.documents.PassResets, in this pass's order): packed documents; the
        conv and the mLSTM state start afresh at each.
        """
        from kernels import mlstm_chunkwise

        x_m, z = self.proj_up(self.norm(x)).chunk(2, dim=-1)
        halo = None
        if cp_group is not None:
            from kernels.mlstm.context_parallel import exchange_conv_halo
            halo = exchange_conv_halo(x_m, self.conv.kernel_size - 1, cp_group, reverse=reverse)
        state_resets = None if resets is None else resets.state
        x_c = F.silu(self.conv(x_m, halo, None if resets is None else resets.conv_visible))
        q, k, v, i, f = self._qkv_gates(x_m, x_c, positions)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))          # (B, H, S, Dh)
        i, f = _gate_precision(i.transpose(1, 2)), _gate_precision(f.transpose(1, 2))
        if cp_group is None:
            h = mlstm_chunkwise(q, k, v, i, f, chunk_size=self.cfg.chunk_size,
                                backend=self.cfg.kernel_backend, resets=state_resets)
        else:
            from kernels.mlstm.context_parallel import mlstm_context_parallel
            h = mlstm_context_parallel(q, k, v, i, f, cp_group, reverse=reverse,
                                       chunk_size=self.cfg.chunk_size,
                                       backend=self.cfg.kernel_backend, resets=state_resets)
        return self._output(h.transpose(1, 2), x_c, z)

    # -- one token -----------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict:
        H, Dh = self.num_heads, self.head_dim
        return {
            "conv": torch.zeros(batch_size, self.conv.kernel_size - 1, self.inner, device=device, dtype=dtype),
            "C": torch.zeros(batch_size, H, Dh, Dh, device=device, dtype=torch.float32),
            "n": torch.zeros(batch_size, H, Dh, device=device, dtype=torch.float32),
            "m": torch.zeros(batch_size, H, device=device, dtype=torch.float32),
        }

    def step(self, x_t, state: dict, positions=None):
        """x_t (B, d) -> (residual branch (B, d), new state)."""
        from kernels import mlstm_step

        x_m, z = self.proj_up(self.norm(x_t)).chunk(2, dim=-1)
        conv_out, conv_buf = self.conv.step(x_m, state["conv"])
        x_c = F.silu(conv_out)
        q, k, v, i, f = self._qkv_gates(x_m, x_c, positions)
        h, (C, n, m) = mlstm_step(q, k, v, _gate_precision(i), _gate_precision(f),
                                  (state["C"], state["n"], state["m"]))
        out = self._output(h.to(x_t.dtype), x_c, z)
        return out, {"conv": conv_buf, "C": C, "n": n, "m": m}
