"""Pure torch chunkwise mLSTM: parallel inside a chunk, recurrent on (C, n, m) across chunks.

Runs on CPU and GPU with plain differentiable torch ops (autograd gives the backward). The
work inside chunks is vectorised over all chunks at once; only the inter-chunk recurrence is a
Python loop, and each step of it is the summary combine of kernels/mlstm/segments.py (a chunk
is a short segment). Inputs of any float dtype are computed in fp32 (float64 stays float64).

A sequence length that is not a multiple of the chunk size is padded with positions that
leave the state exactly unchanged: i~ = -inf (nothing written) and log f = 0 (no decay); see
kernels/mlstm/padding.py.

Resets (kernels/mlstm/resets.py) enter per chunk: the cumulative log forget restarts at each
reset, sources reach only rows of their own document, a chunk holding a reset drops the state
entering it (its summary has F = -inf), and rows after a reset see the fresh state's m = 0 as
their entering stabilizer candidate instead of the chunk's entering m.
"""

import math

import torch
import torch.nn.functional as F

from kernels.mlstm.padding import NO_WRITE, pad_time
from kernels.mlstm.reference import DEFAULT_EPS
from kernels.mlstm.resets import document_index, restarted_cumsum
from kernels.mlstm.segments import NEG_INF, SegmentSummary, apply_summary, exp_from, fresh_state


def mlstm_chunkwise_torch(
    q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64, eps=DEFAULT_EPS,
    resets=None,
):
    """Chunkwise mLSTM (DESIGN.md section 3) with initial state in and final state out, and
    optional state resets (B, S) bool."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    in_dtype = v.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    k = k / math.sqrt(Dqk)
    log_f = F.logsigmoid(f)

    L = chunk_size
    num_chunks = max(1, -(-S // L))
    pad = num_chunks * L - S
    q, k, v = (pad_time(x, pad, 0.0) for x in (q, k, v))
    i = pad_time(i, pad, NO_WRITE)
    log_f = pad_time(log_f, pad, 0.0)          # no decay (kernels/mlstm/padding.py)

    # (B, H, NC, L, ...): every chunk handled at once
    q, k, v = (x.reshape(B, H, num_chunks, L, x.shape[-1]) for x in (q, k, v))
    i, log_f = (x.reshape(B, H, num_chunks, L) for x in (i, log_f))
    if resets is None:
        seg = torch.zeros(1, 1, 1, L, dtype=torch.int32, device=q.device)
        b = torch.cumsum(log_f, dim=-1)                 # log forget from chunk start to t
    else:
        flags = torch.cat([resets.to(q.device), resets.new_zeros(B, pad)], dim=-1)
        flags = flags.reshape(B, 1, num_chunks, L)
        seg = document_index(flags)                     # resets in the chunk up to t
        b = restarted_cumsum(log_f, flags)              # ... and since the last of them
    seg_last = seg[..., -1:]
    has_reset = seg_last[..., 0] > 0
    chunk_log_f = b[..., -1]

    # chunk summaries: source s reaches the chunk end with log weight g - b_s + i_s (if no reset
    # lies between); a chunk with a reset enters from the fresh state (candidate g + 0 for m)
    log_w_end = (chunk_log_f[..., None] - b + i).masked_fill(seg != seg_last, NEG_INF)
    m_local = log_w_end.detach().amax(dim=-1)
    m_local = torch.where(has_reset, torch.maximum(m_local, chunk_log_f.detach()), m_local)
    chunk_log_f = chunk_log_f.masked_fill(has_reset, NEG_INF)
    weighted_k = k * exp_from(log_w_end, m_local[..., None])[..., None]
    C_local = weighted_k.transpose(-1, -2) @ v
    n_local = weighted_k.sum(dim=-2)

    # inter-chunk recurrence: the state entering each chunk
    if initial_state is None:
        state = fresh_state((B, H), Dqk, Dv, dtype, q.device)
    else:
        state = tuple(x.to(dtype) for x in initial_state)
    entering = []
    for c in range(num_chunks):
        entering.append(state)
        summary = SegmentSummary(chunk_log_f[:, :, c], C_local[:, :, c], n_local[:, :, c], m_local[:, :, c])
        state = apply_summary(state, summary)
    C_prev, n_prev, m_prev = (torch.stack(parts, dim=2) for parts in zip(*entering))

    # outputs: intra-chunk sources with log weight b_t - b_s + i_s, entering state with b_t + m_prev
    visible = torch.ones(L, L, dtype=torch.bool, device=q.device).tril() & (seg[..., :, None] == seg[..., None, :])
    log_d = (b[..., :, None] - b[..., None, :] + i[..., None, :]).masked_fill(~visible, NEG_INF)
    entering = seg == 0                                 # rows the entering state still reaches
    log_inter = b + torch.where(entering, m_prev.detach()[..., None], torch.zeros_like(b))
    m = torch.maximum(log_inter, log_d.amax(dim=-1)).detach()
    scores = (q @ k.transpose(-1, -2)) * exp_from(log_d, m[..., None])
    inter_weight = exp_from(log_inter.masked_fill(~entering, NEG_INF), m)
    numerator = scores @ v + inter_weight[..., None] * (q @ C_prev)
    denominator = scores.sum(dim=-1) + inter_weight * (q @ n_prev[..., None])[..., 0]
    h = numerator / (torch.maximum(denominator.abs(), torch.exp(-m)) + eps)[..., None]
    h = h.reshape(B, H, num_chunks * L, Dv)[:, :, :S].to(in_dtype)
    if not return_final_state:
        return h
    return h, state
