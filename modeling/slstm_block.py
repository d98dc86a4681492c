"""The sLSTM block (post-up-projection, xLSTM paper): scalar memory with exponential gating.

pre-LayerNorm -> causal depthwise conv + SiLU feeding the input and forget gates -> sLSTM cell
(heads with block-diagonal recurrent weights, stabilizer m) -> per-head group norm -> residual;
then pre-LayerNorm -> gated feed-forward (GeLU) -> residual. Pure torch, a loop over time.
Returns its residual branch (output - input) like the mLSTM block.

Gate projections: `slstm_gate_layout: full` (this project's former form) maps the conv
activation to (i, f) and the normed input to (z, o) with two dense matrices; `headwise` (the
official xLSTM sLSTM layer) uses four block-diagonal per-head maps, one per gate. The official
layer calls the map feeding the input gate `fgate` and the one feeding the forget gate `igate`
(its forward reads `i, f = fgate(x_conv), igate(x_conv)`); here they are named by the gate they
feed, `gate_i` and `gate_f`, and the converter's key table swaps the names.

The official RC-PS model (rc_mode=param_sharing_halves) calls its sLSTM layer for the RC half
with `is_rc_flipped`: the cell output's heads are put in reverse order before the per-head group
norm, and the normed output stays in that order. `rc_half_slstm_head_order: reversed` does the
same when the block runs for the RC half (`rc_half=True`); "kept" leaves the heads in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeling.config import ModelConfig
from modeling.errors import ContextParallelError
from modeling.layers import (
    CausalDepthwiseConv, HeadwiseLinear, LayerNorm, MultiHeadLayerNorm, small_init_, wang_init_,
)


class SLSTMCell(nn.Module):
    """c_t = f' c + i' z, n_t = f' n + i', h_t = o * c_t / n_t with log-space stabilizer m."""

    def __init__(self, d: int, num_heads: int):
        super().__init__()
        self.d, self.num_heads, self.head_dim = d, num_heads, d // num_heads
        # recurrent weights per head: h_head (Dh) -> gate pre-activations (4 gates x Dh)
        self.recurrent = nn.Parameter(torch.zeros(num_heads, self.head_dim, 4 * self.head_dim))
        self.bias = nn.Parameter(torch.zeros(4, d))      # order: i, f, z, o
        with torch.no_grad():
            self.bias[1] = torch.linspace(3.0, 6.0, d)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict:
        zeros = lambda: torch.zeros(batch_size, self.d, device=device, dtype=dtype)
        return {"h": zeros(), "c": zeros(), "n": zeros(), "m": zeros()}

    def step(self, wx: torch.Tensor, state: dict):
        """wx (B, 4, d) input contributions -> (h_t (B, d), new state), cell math in fp32."""
        B = wx.shape[0]
        dtype = torch.promote_types(wx.dtype, torch.float32)    # fp32 at least, float64 kept
        h_prev = state["h"].to(dtype).view(B, self.num_heads, self.head_dim)
        rec = torch.einsum("bhi,hio->bho", h_prev, self.recurrent.to(dtype))
        rec = rec.view(B, self.num_heads, 4, self.head_dim).transpose(1, 2).reshape(B, 4, self.d)
        raw = wx.to(dtype) + rec + self.bias.to(dtype)
        i_t, f_t, z_t, o_t = raw.unbind(1)
        log_f = F.logsigmoid(f_t)
        m = torch.maximum(log_f + state["m"], i_t)
        i_p = torch.exp(i_t - m)
        f_p = torch.exp(log_f + state["m"] - m)
        c = f_p * state["c"] + i_p * torch.tanh(z_t)
        n = f_p * state["n"] + i_p
        h = torch.sigmoid(o_t) * c / n
        return h, {"h": h, "c": c, "n": n, "m": m}


class SLSTMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, H = cfg.d_model, cfg.slstm_num_heads
        self.cfg = cfg
        offset = cfg.norm_weight_offset
        self.headwise = cfg.slstm_gate_layout == "headwise"
        self.norm = LayerNorm(d, cfg.norm_eps, offset)
        self.conv = CausalDepthwiseConv(d, cfg.conv_kernel_size)
        if self.headwise:                                  # i, f from the conv activation,
            self.gate_i, self.gate_f, self.gate_z, self.gate_o = (   # z, o from the normed input
                HeadwiseLinear(d, d // H) for _ in range(4))
            gates = (self.gate_i, self.gate_f, self.gate_z, self.gate_o)
        else:
            self.gate_if = nn.Linear(d, 2 * d, bias=False)     # from the conv activation
            self.gate_zo = nn.Linear(d, 2 * d, bias=False)     # from the normed input
            gates = (self.gate_if, self.gate_zo)
        self.cell = SLSTMCell(d, H)
        self.outnorm = MultiHeadLayerNorm(H, d // H, cfg.norm_eps, offset)
        ff = cfg.ffn_dim
        self.ffn_norm = LayerNorm(d, cfg.norm_eps, offset)
        self.ffn_up = nn.Linear(d, 2 * ff, bias=False)
        self.ffn_down = nn.Linear(ff, d, bias=False)
        for lin in gates + (self.ffn_up,):
            small_init_(lin.weight, d)
        small_init_(self.cell.recurrent, d)
        wang_init_(self.ffn_down.weight, d, cfg.num_blocks)

    def _ffn(self, x):
        gate, up = self.ffn_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return self.ffn_down(F.gelu(gate) * up)

    def _inputs(self, xn, x_c):
        if self.headwise:
            i, f, z, o = self.gate_i(x_c), self.gate_f(x_c), self.gate_z(xn), self.gate_o(xn)
        else:
            i, f = self.gate_if(x_c).chunk(2, dim=-1)
            z, o = self.gate_zo(xn).chunk(2, dim=-1)
        return torch.stack([i, f, z, o], dim=-2)            # (..., 4, d)

    def _finish(self, x, h, heads_reversed=False):
        heads = h.to(x.dtype).unflatten(-1, (self.cfg.slstm_num_heads, -1))
        y = x + self.outnorm(heads.flip(-2) if heads_reversed else heads)
        return y + self._ffn(y) - x

    def forward(self, x, positions=None, cp_group=None, reverse=False, resets=None, rc_half=False):
        """x (B, S, d) -> residual branch (B, S, d); positions are not used (recurrence orders).
        `resets` (modeling.documents.PassResets): the fresh state at every document start.
        `rc_half`: this call computes the RC half of an RC-PS model (see the module docstring)."""
        if cp_group is not None:
            raise ContextParallelError(
                "sLSTM blocks cannot run context parallel (their state is not passed between "
                "ranks): set slstm_positions: [] or parallel.context_parallel_size: 1")
        xn = self.norm(x)
        x_c = F.silu(self.conv(xn, visible=None if resets is None else resets.conv_visible))
        wx = self._inputs(xn, x_c)
        fresh = self.cell.init_state(x.shape[0], x.device, torch.promote_types(x.dtype, torch.float32))
        state, hs = fresh, []
        for t in range(x.shape[1]):
            if resets is not None:
                keep = ~resets.state[:, t, None]
                state = {name: torch.where(keep, value, fresh[name]) for name, value in state.items()}
            h, state = self.cell.step(wx[:, t], state)
            hs.append(h)
        heads_reversed = rc_half and self.cfg.rc_half_slstm_head_order == "reversed"
        return self._finish(x, torch.stack(hs, dim=1), heads_reversed)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict:
        state = self.cell.init_state(batch_size, device, torch.promote_types(dtype, torch.float32))
        state["conv"] = torch.zeros(batch_size, self.conv.kernel_size - 1, self.cfg.d_model,
                                    device=device, dtype=dtype)
        return state

    def step(self, x_t, state: dict, positions=None):
        xn = self.norm(x_t)
        conv_out, conv_buf = self.conv.step(xn, state["conv"])
        wx = self._inputs(xn, F.silu(conv_out))
        h, cell_state = self.cell.step(wx, state)
        cell_state["conv"] = conv_buf
        return self._finish(x_t, h), cell_state
