"""A float64 implementation of the official Bio-xLSTM forward passes, written from the facts
(DESIGN.md sections 8 and 11, the issue, and the NX-AI xLSTM module semantics), not from this
project's modeling code, plus random official-format state dicts to feed it.

It reads official tensor names directly, so a wrong entry in the converter's key table, a
wrong transform or a wrong model option shows up as a logit mismatch. Facts used:
- every norm weight is an offset (effective 1 + w); LayerNorm and per-head group norm, eps 1e-5
- mLSTM layer: proj_up (+bias) -> x, z; causal depthwise conv (k, bias) + SiLU on x; q, k from
  the conv activation, v from x (headwise blocks, +bias); gates Linear(3 inner -> H) over
  concat[q, k, v] (Prot-xLSTM: q, k after RoPE over the whole inner dim; DNA-xLSTM: before
  RoPE per head); parallel stabilised mLSTM cell (k / sqrt(Dh), eps 1e-6); group norm;
  + learnable_skip * conv activation; * SiLU(z); proj_down (+bias)
- sLSTM layer (NX-AI): conv + SiLU on the normed input; i = fgate(x_conv), f = igate(x_conv),
  z = zgate(x), o = ogate(x), all block-diagonal per head; recurrent kernel "cuda" layout
  (H, Dh, 4 Dh), bias flat (head, gate, Dh); exponential gating with the stabiliser m = i at
  the first step; group norm; then the block's gated FFN (GeLU) with its own pre-norm
- DNA-xLSTM bidirectional: weight-tied = block(x) + flip(block(flip x)), the reversed pass at
  RoPE positions 0..S-1 along the flipped sequence; alternating = the even blocks reversed
- RC parameter sharing (Caduceus): hidden [fwd | rc] halves, RCPSWrapper on xlstm_norm, xlstm,
  ffn_norm, ffn, post_blocks_norm; embedding cat[E ids, flip(E rc(ids))]; head
  W h_fwd + W[comp] flip_channels(h_rc). For the RC half the wrapper calls the sLSTM layer with
  is_rc_flipped=True: the layer flips the cell output y (B, heads, S, Dh) along dim 1 (the
  heads), group-norms that and keeps the normed output in that order before the reshape to
  (B, S, d) (it un-flips y, which is not used afterwards)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS_NORM, EPS_CELL = 1e-5, 1e-6
COMPLEMENT = [0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11, 12, 13, 14, 15]


# ---- random official state dicts -----------------------------------------------------------------

def inner_dim(d, proj_factor, multiple, up):
    steps = proj_factor * d / multiple
    return int((math.ceil(steps) if up else math.floor(steps)) * multiple)


def mlstm_block_tensors(g, d, inner, heads, block, kernel, bias):
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g, dtype=torch.float64) * s   # noqa: E731
    t = {
        "xlstm_norm.weight": r(d, s=0.1),
        "xlstm.proj_up.weight": r(2 * inner, d),
        "xlstm.q_proj.weight": r(inner // block, block, block, s=0.4),
        "xlstm.k_proj.weight": r(inner // block, block, block, s=0.4),
        "xlstm.v_proj.weight": r(inner // block, block, block, s=0.4),
        "xlstm.conv1d.conv.weight": r(inner, 1, kernel, s=0.4),
        "xlstm.conv1d.conv.bias": r(inner, s=0.1),
        "xlstm.mlstm_cell.igate.weight": r(heads, 3 * inner, s=0.1),
        "xlstm.mlstm_cell.igate.bias": r(heads, s=0.5),
        "xlstm.mlstm_cell.fgate.weight": r(heads, 3 * inner, s=0.1),
        "xlstm.mlstm_cell.fgate.bias": torch.linspace(3.0, 6.0, heads, dtype=torch.float64) + r(heads, s=0.3),
        "xlstm.mlstm_cell.outnorm.weight": r(inner, s=0.1),
        "xlstm.learnable_skip": 1 + r(inner, s=0.1),
        "xlstm.proj_down.weight": r(d, inner),
    }
    if bias:
        t.update({"xlstm.proj_up.bias": r(2 * inner, s=0.1), "xlstm.q_proj.bias": r(inner, s=0.1),
                  "xlstm.k_proj.bias": r(inner, s=0.1), "xlstm.v_proj.bias": r(inner, s=0.1),
                  "xlstm.proj_down.bias": r(d, s=0.1)})
    return t


def slstm_block_tensors(g, d, heads, ff, kernel):
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g, dtype=torch.float64) * s   # noqa: E731
    dh = d // heads
    bias = r(heads, 4, dh, s=0.3)
    bias[:, 1] += 2.0                                        # forget gates mostly open
    return {
        "xlstm_norm.weight": r(d, s=0.1),
        "xlstm.conv1d.conv.weight": r(d, 1, kernel, s=0.4),
        "xlstm.conv1d.conv.bias": r(d, s=0.1),
        "xlstm.fgate.weight": r(heads, dh, dh, s=0.4),
        "xlstm.igate.weight": r(heads, dh, dh, s=0.4),
        "xlstm.zgate.weight": r(heads, dh, dh, s=0.4),
        "xlstm.ogate.weight": r(heads, dh, dh, s=0.4),
        "xlstm.slstm_cell._recurrent_kernel_": r(heads, dh, 4 * dh, s=0.3),
        "xlstm.slstm_cell._bias_": bias.reshape(-1),
        "xlstm.group_norm.weight": r(d, s=0.1),
        "ffn_norm.weight": r(d, s=0.1),
        "ffn.proj_up.weight": r(2 * ff, d),
        "ffn.proj_down.weight": r(d, ff),
    }


def model_tensors(g, vocab, d, blocks: list[dict], rcps=False):
    r = lambda *shape, s=0.5: torch.randn(*shape, generator=g, dtype=torch.float64) * s   # noqa: E731
    state = {}
    for b, tensors in enumerate(blocks):
        for name, tensor in tensors.items():
            if rcps:
                module, _, rest = name.partition(".")
                name = f"{module}.submodule.{rest}"
            state[f"xlstm_block_stack.blocks.{b}.{name}"] = tensor
    norm = "xlstm_block_stack.post_blocks_norm" + (".submodule" if rcps else "")
    state[norm + ".weight"] = r(d, s=0.1)
    if rcps:
        state["token_embedding.embedding.weight"] = r(vocab, d)
        state["lm_head.lm_head.weight"] = r(vocab, d)
        state["token_embedding.complement_map"] = torch.tensor(COMPLEMENT[:vocab])
        state["lm_head.complement_map"] = torch.tensor(COMPLEMENT[:vocab])
    else:
        state["token_embedding.weight"] = r(vocab, d)
        state["lm_head.weight"] = r(vocab, d)
    return state


# ---- the official forward, float64 ---------------------------------------------------------------

def layer_norm(x, w):
    return F.layer_norm(x, (x.shape[-1],), weight=1.0 + w, eps=EPS_NORM)


def group_norm(h, w, heads):
    """h (B, S, heads * Dh): per-head layer norm, offset weight over all channels."""
    B, S, C = h.shape
    y = F.group_norm(h.reshape(B * S, C), heads, weight=1.0 + w, eps=EPS_NORM)
    return y.reshape(B, S, C)


def headwise(x, w, b=None):
    nb, out, inp = w.shape
    y = torch.einsum("...hi,hoi->...ho", x.unflatten(-1, (nb, inp)), w).flatten(-2)
    return y if b is None else y + b


def causal_conv(x, w, b):
    k = w.shape[-1]
    return F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), w, b, groups=x.shape[-1]).transpose(1, 2)


def rope(x, positions, dim, theta):
    """Interleaved pairs of the last dim (size dim) rotated by pos * theta^(-2j/dim)."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions.to(torch.float64).unsqueeze(-1) * freqs
    while angles.dim() < x.dim():
        angles = angles.unsqueeze(-2)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(-2)


def mlstm_cell(q, k, v, i, f):
    """The official recurrent form (protxlstm backends `recurrent_step_stabilized_simple`, to which
    its `chunkwise_simple` is equal: both start from C = n = 0, m = 0), q, k, v (B, H, S, Dh), i,
    f (B, H, S). The official `parallel_stabilized_simple` starts from m = -inf instead and
    differs from both by the eps term only (relative ~1e-6)."""
    B, H, S, dh = q.shape
    C = q.new_zeros(B, H, dh, dh)
    n = q.new_zeros(B, H, dh, 1)
    m = q.new_zeros(B, H, 1, 1)
    out = []
    for t in range(S):
        qt, kt, vt = q[:, :, t, :, None], k[:, :, t, :, None] / math.sqrt(dh), v[:, :, t, :, None]
        log_f = F.logsigmoid(f[:, :, t, None, None])
        it = i[:, :, t, None, None]
        m_new = torch.maximum(log_f + m, it)
        f_act, i_act = torch.exp(log_f + m - m_new), torch.exp(it - m_new)
        C = f_act * C + i_act * (kt @ vt.transpose(-1, -2))
        n = f_act * n + i_act * kt
        denominator = torch.maximum((qt.transpose(-1, -2) @ n).abs(), torch.exp(-m_new)) + EPS_CELL
        out.append((qt.transpose(-1, -2) @ C / denominator)[:, :, 0])
        m = m_new
    return torch.stack(out, dim=2)


def mlstm_layer(x, p, heads, positions, rope_mode, theta):
    """rope_mode: None, "inner_after_gates_input" (Prot: gates read rotated q, k) or
    "head_before" (DNA: gates read q, k before RoPE, RoPE per head)."""
    inner = p["xlstm.learnable_skip"].shape[0]
    up = F.linear(x, p["xlstm.proj_up.weight"], p.get("xlstm.proj_up.bias"))
    x_m, z = up[..., :inner], up[..., inner:]
    x_c = F.silu(causal_conv(x_m, p["xlstm.conv1d.conv.weight"], p["xlstm.conv1d.conv.bias"]))
    q = headwise(x_c, p["xlstm.q_proj.weight"], p.get("xlstm.q_proj.bias"))
    k = headwise(x_c, p["xlstm.k_proj.weight"], p.get("xlstm.k_proj.bias"))
    v = headwise(x_m, p["xlstm.v_proj.weight"], p.get("xlstm.v_proj.bias"))
    dh = inner // heads
    if rope_mode == "inner":
        q, k = rope(q, positions, inner, theta), rope(k, positions, inner, theta)
    gate_in = torch.cat([q, k, v], dim=-1)
    i = F.linear(gate_in, p["xlstm.mlstm_cell.igate.weight"], p["xlstm.mlstm_cell.igate.bias"])
    f = F.linear(gate_in, p["xlstm.mlstm_cell.fgate.weight"], p["xlstm.mlstm_cell.fgate.bias"])
    split = lambda t: t.unflatten(-1, (heads, dh)).transpose(1, 2)   # noqa: E731
    q, k, v = split(q), split(k), split(v)
    if rope_mode == "head":
        pos = positions[:, None, :]
        q, k = rope(q, pos, dh, theta), rope(k, pos, dh, theta)
    h = mlstm_cell(q, k, v, i.transpose(1, 2), f.transpose(1, 2)).transpose(1, 2).flatten(-2)
    h = group_norm(h, p["xlstm.mlstm_cell.outnorm.weight"], heads) + p["xlstm.learnable_skip"] * x_c
    return F.linear(h * F.silu(z), p["xlstm.proj_down.weight"], p.get("xlstm.proj_down.bias"))


def slstm_layer(x, p, heads, is_rc_flipped=False):
    B, S, d = x.shape
    dh = d // heads
    x_c = F.silu(causal_conv(x, p["xlstm.conv1d.conv.weight"], p["xlstm.conv1d.conv.bias"]))
    wx = torch.stack([headwise(x_c, p["xlstm.fgate.weight"]), headwise(x_c, p["xlstm.igate.weight"]),
                      headwise(x, p["xlstm.zgate.weight"]), headwise(x, p["xlstm.ogate.weight"])], dim=-2)
    R = p["xlstm.slstm_cell._recurrent_kernel_"]                        # (H, Dh_in, 4 Dh_out)
    bias = p["xlstm.slstm_cell._bias_"].reshape(heads, 4, dh).transpose(0, 1).reshape(4, d)
    y, c, n, m = (torch.zeros(B, d, dtype=x.dtype) for _ in range(4))
    out = []
    for t in range(S):
        ry = torch.einsum("bha,hao->bho", y.view(B, heads, dh), R).view(B, heads, 4, dh).transpose(1, 2).reshape(B, 4, d)
        raw = wx[:, t] + ry + bias
        i_raw, f_raw, z_raw, o_raw = raw.unbind(1)
        log_f_plus_m = m + F.logsigmoid(f_raw)
        m_new = i_raw if t == 0 else torch.maximum(i_raw, log_f_plus_m)
        i_g, f_g = torch.exp(i_raw - m_new), torch.exp(log_f_plus_m - m_new)
        c = f_g * c + i_g * torch.tanh(z_raw)
        n = f_g * n + i_g
        y = torch.sigmoid(o_raw) * c / n
        m = m_new
        out.append(y)
    y = torch.stack(out, dim=1).unflatten(-1, (heads, dh)).transpose(1, 2)     # (B, heads, S, Dh)
    if is_rc_flipped:
        y = y.flip(1)
    return group_norm(y.transpose(1, 2).flatten(-2), p["xlstm.group_norm.weight"], heads)


def block_forward(x, p, spec, kind, positions):
    """One official block, residual included."""
    if kind == "m":
        x = x + mlstm_layer(layer_norm(x, p["xlstm_norm.weight"]), p, spec["heads"], positions,
                            spec.get("rope"), spec.get("theta", 5e5))
        return x
    x = x + slstm_layer(layer_norm(x, p["xlstm_norm.weight"]), p, spec["slstm_heads"])
    return x + gated_ffn(layer_norm(x, p["ffn_norm.weight"]), p)


def gated_ffn(x, p):
    gate, up = F.linear(x, p["ffn.proj_up.weight"]).chunk(2, dim=-1)
    return F.linear(F.gelu(gate) * up, p["ffn.proj_down.weight"])


def _block_params(state, b, rcps):
    prefix = f"xlstm_block_stack.blocks.{b}."
    out = {}
    for name, tensor in state.items():
        if name.startswith(prefix):
            name = name[len(prefix):]
            out[name.replace(".submodule", "") if rcps else name] = tensor
    return out


def stack_forward(x, state, spec, positions, rcps=False):
    """The block stack with the official direction wrappers; x (B, S, d)."""
    S = x.shape[1]
    arange = torch.arange(S).expand(x.shape[0], S)
    for b, kind in enumerate(spec["kinds"]):
        p = _block_params(state, b, rcps)
        run = lambda h, pos: block_forward(h, p, spec, kind, pos)   # noqa: E731
        direction = spec.get("bidirectional")
        if direction == "weight_tied":
            x = run(x, positions) + run(x.flip(1), arange).flip(1)
        elif direction == "alternating" and b % 2 == 0:
            x = run(x.flip(1), arange).flip(1)
        else:
            x = run(x, positions)
    return x


def forward(state, spec, ids, positions=None):
    """Official logits (B, S, V) from an official state dict (prefix stripped)."""
    if positions is None:
        positions = torch.arange(ids.shape[1]).expand_as(ids)
    if spec.get("rcps"):
        return _rcps_forward(state, spec, ids)
    x = state["token_embedding.weight"][ids]
    x = stack_forward(x, state, spec, positions)
    x = layer_norm(x, state["xlstm_block_stack.post_blocks_norm.weight"])
    return x @ state["lm_head.weight"].T


def _rc(h):
    return h.flip(-2).flip(-1)


def _rcps_forward(state, spec, ids):
    """Caduceus-style RC parameter sharing, written literally with halves (not per strand)."""
    comp = torch.tensor(COMPLEMENT[: state["token_embedding.embedding.weight"].shape[0]])
    E = state["token_embedding.embedding.weight"]
    rc_ids = comp[ids].flip(-1)
    x = torch.cat([E[ids], _rc(E[rc_ids])], dim=-1)
    d = E.shape[1]

    def halves(fn, h):       # RCPSWrapper: fn on the forward half and on rc(the RC half)
        return torch.cat([fn(h[..., :d], False), _rc(fn(_rc(h[..., d:]), True))], dim=-1)

    for b, kind in enumerate(spec["kinds"]):
        p = _block_params(state, b, rcps=True)
        assert kind == "s", "official RC-PS exists for sLSTM blocks only"

        def block(h, p=p):
            h = h + halves(lambda u, rc: slstm_layer(layer_norm(u, p["xlstm_norm.weight"]), p, spec["slstm_heads"],
                                                     is_rc_flipped=rc), h)
            return h + halves(lambda u, rc: gated_ffn(layer_norm(u, p["ffn_norm.weight"]), p), h)

        if spec.get("bidirectional") == "weight_tied":
            x = block(x) + block(x.flip(1)).flip(1)
        else:
            x = block(x)
    w_norm = state["xlstm_block_stack.post_blocks_norm.submodule.weight"]
    x = halves(lambda u, rc: layer_norm(u, w_norm), x)
    W = state["lm_head.lm_head.weight"]
    return x[..., :d] @ W.T + x[..., d:].flip(-1) @ W[comp].T
