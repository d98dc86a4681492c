"""Triton backward of the chunkwise mLSTM: the exact gradient with the stabilizer m detached.

Per row t of chunk c (entering state C_c, n_c, m_c; conventions of chunkwise_fw.py):
    D[t, s] = exp(b_t - b_s + i_s - m_t) (s <= t),  w_t = exp(b_t + m_c - m_t)
    num_t = sum_s (q_t . k_s) D[t, s] v_s + w_t C_c^T q_t,   den_t = same with v_s -> 1, C_c -> n_c
    h_t = num_t / (max(|den_t|, exp(-m_t)) + eps)
The normalizer path is kept: dnum_t = dh_t / N_t and dden_t = -(dh_t . h_t) / N_t * sign(den_t)
where |den_t| wins the max (exp(-m_t) is a constant). Then, with dA[t, s] = dnum_t . v_s + dden_t:
    dq_t = sum_s dA D k_s + w_t (C_c dnum_t + n_c dden_t)
    dk_s = sum_t dA D q_t + e_s (dC_{c+1} v_s + dn_{c+1})          e_s = exp(g - b_s + i_s - m_{c+1})
    dv_s = sum_t (q_t . k_s) D dnum_t + e_s dC_{c+1}^T k_s
and the state gradients run backwards: dC_c = exp(g + m_c - m_{c+1}) dC_{c+1} + sum_t w_t q_t dnum_t^T.

The gate gradients need no kernel of their own. Every log weight in the unrolled recurrence is
B_t - B_s + i_s (B = cumulative log forget over the whole sequence; the initial state counts as
a source with i = m_0, the final state as a row at t = S). The row term B_t collects q_t . dq_t,
the source term -B_s + i_s collects k_s . dk_s, so
    di_s = k_s . dk_s,   dlog f_r = sum_{t >= r} (q_t . dq_t - k_t . dk_t) + <C_S, dC_S> + <n_S, dn_S>
and df~ = sigmoid(-f~) dlog f (see `gate_grads`).
"""

import math

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunkwise_fw import dot_precision, head_dim_tile, kernel_buffer


@triton.jit
def _chunk_state_grads_kernel(
    q_ptr, b_ptr, mrow_ptr, dh_ptr, norm_ptr, dden_ptr,
    m_ptr, dC_final_ptr, dn_final_ptr,
    dC_ptr, dn_ptr,
    S, DQK, DV, NC,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (batch*head, Dqk tile, Dv tile): dC, dn leaving each chunk, backwards."""
    bh = tl.program_id(0)
    tile_k = tl.program_id(1)
    tile_v = tl.program_id(2)
    rows = tl.arange(0, L)
    dk = tile_k * BK + tl.arange(0, BK)
    dv = tile_v * BV + tl.arange(0, BV)
    mask_k = dk < DQK
    mask_v = dv < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    seq_off = bh.to(tl.int64) * S
    m_off = bh.to(tl.int64) * (NC + 1)
    state_C_off = bh.to(tl.int64) * (NC + 1) * DQK * DV + dk[:, None] * DV + dv[None, :]
    state_n_off = bh.to(tl.int64) * (NC + 1) * DQK + dk

    dC = tl.load(dC_final_ptr + bh.to(tl.int64) * DQK * DV + dk[:, None] * DV + dv[None, :],
                 mask=mask_kv, other=0.0)
    dn = tl.load(dn_final_ptr + bh.to(tl.int64) * DQK + dk, mask=mask_k, other=0.0)
    for step in range(NC):
        c = NC - 1 - step
        # gradient w.r.t. the state leaving chunk c (= entering chunk c + 1)
        tl.store(dC_ptr + state_C_off + (c + 1) * DQK * DV, dC, mask=mask_kv)
        if tile_v == 0:
            tl.store(dn_ptr + state_n_off + (c + 1) * DQK, dn, mask=mask_k)
        t = c * L + rows
        b = tl.load(b_ptr + seq_off + t)
        m_row = tl.load(mrow_ptr + seq_off + t)
        m_prev = tl.load(m_ptr + m_off + c)
        m_next = tl.load(m_ptr + m_off + c + 1)
        g = tl.sum(tl.where(rows == L - 1, b, 0.0), axis=0)
        decay = tl.exp(g + m_prev - m_next)
        w = tl.exp(b + m_prev - m_row)
        q = tl.load(q_ptr + (seq_off + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :],
                    other=0.0).to(tl.float32)
        dnum = tl.load(dh_ptr + (seq_off + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :],
                       other=0.0).to(tl.float32) / tl.load(norm_ptr + seq_off + t)[:, None]
        dden = tl.load(dden_ptr + seq_off + t)
        qw = q * w[:, None]
        dC = decay * dC + tl.dot(tl.trans(qw), dnum, input_precision=PRECISION)
        dn = decay * dn + tl.sum(qw * dden[:, None], axis=0)
    tl.store(dC_ptr + state_C_off, dC, mask=mask_kv)
    if tile_v == 0:
        tl.store(dn_ptr + state_n_off, dn, mask=mask_k)


@triton.jit
def _chunk_dqk_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, b_ptr, mrow_ptr, dh_ptr, norm_ptr, dden_ptr,
    C_ptr, n_ptr, m_ptr, dC_ptr, dn_ptr,
    dq_ptr, dk_ptr, qdq_ptr, kdk_ptr,
    scale,
    S, DQK, DV, NC,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (batch*head, chunk, Dqk tile): dq and dk of the chunk's rows, and this
    tile's share of the row sums q . dq and k . dk (for the gate gradients)."""
    bh = tl.program_id(0)
    c = tl.program_id(1)
    tile_k = tl.program_id(2)
    rows = tl.arange(0, L)
    dk_idx = tile_k * BK + tl.arange(0, BK)
    mask_k = dk_idx < DQK
    seq_off = bh.to(tl.int64) * S
    t = c * L + rows
    prev_off = (bh.to(tl.int64) * (NC + 1) + c) * DQK
    next_off = prev_off + DQK

    norm = tl.load(norm_ptr + seq_off + t)
    dA = tl.zeros((L, L), dtype=tl.float32)
    dq_state = tl.zeros((L, BK), dtype=tl.float32)
    dk_state = tl.zeros((L, BK), dtype=tl.float32)
    for start_v in range(0, DV, BV):
        dv_idx = start_v + tl.arange(0, BV)
        mask_v = dv_idx < DV
        mask_kv = mask_k[:, None] & mask_v[None, :]
        v = tl.load(v_ptr + (seq_off + t[:, None]) * DV + dv_idx[None, :], mask=mask_v[None, :],
                    other=0.0).to(tl.float32)
        dnum = tl.load(dh_ptr + (seq_off + t[:, None]) * DV + dv_idx[None, :],
                       mask=mask_v[None, :], other=0.0).to(tl.float32) / norm[:, None]
        C_prev = tl.load(C_ptr + prev_off * DV + dk_idx[:, None] * DV + dv_idx[None, :],
                         mask=mask_kv, other=0.0)
        dC_next = tl.load(dC_ptr + next_off * DV + dk_idx[:, None] * DV + dv_idx[None, :],
                          mask=mask_kv, other=0.0)
        dA += tl.dot(dnum, tl.trans(v), input_precision=PRECISION)
        dq_state += tl.dot(dnum, tl.trans(C_prev), input_precision=PRECISION)
        dk_state += tl.dot(v, tl.trans(dC_next), input_precision=PRECISION)

    b = tl.load(b_ptr + seq_off + t)
    ig = tl.load(i_ptr + seq_off + t)
    m_row = tl.load(mrow_ptr + seq_off + t)
    dden = tl.load(dden_ptr + seq_off + t)
    m_prev = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + c)
    m_next = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + c + 1)
    g = tl.sum(tl.where(rows == L - 1, b, 0.0), axis=0)
    causal = rows[:, None] >= rows[None, :]
    log_d = tl.where(causal, b[:, None] - b[None, :] + ig[None, :], float("-inf"))
    dAD = (dA + dden[:, None]) * tl.exp(log_d - m_row[:, None])
    w = tl.exp(b + m_prev - m_row)
    e = tl.exp(g - b + ig - m_next)

    q = tl.load(q_ptr + (seq_off + t[:, None]) * DQK + dk_idx[None, :], mask=mask_k[None, :],
                other=0.0).to(tl.float32)
    k = tl.load(k_ptr + (seq_off + t[:, None]) * DQK + dk_idx[None, :], mask=mask_k[None, :],
                other=0.0).to(tl.float32) * scale
    n_prev = tl.load(n_ptr + prev_off + dk_idx, mask=mask_k, other=0.0)
    dn_next = tl.load(dn_ptr + next_off + dk_idx, mask=mask_k, other=0.0)
    dq = tl.dot(dAD, k, input_precision=PRECISION) + w[:, None] * (dq_state + dden[:, None] * n_prev[None, :])
    dk = tl.dot(tl.trans(dAD), q, input_precision=PRECISION) + e[:, None] * (dk_state + dn_next[None, :])
    out = (seq_off + t[:, None]) * DQK + dk_idx[None, :]
    tl.store(dq_ptr + out, dq.to(dq_ptr.dtype.element_ty), mask=mask_k[None, :])
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask_k[None, :])
    # k . dk is the same for the scaled k and its gradient as for the raw ones
    part_off = tile_k.to(tl.int64) * tl.num_programs(0) * S + seq_off + t
    tl.store(qdq_ptr + part_off, tl.sum(q * dq, axis=1))
    tl.store(kdk_ptr + part_off, tl.sum(k * dk, axis=1))


@triton.jit
def _chunk_dv_kernel(
    q_ptr, k_ptr, i_ptr, b_ptr, mrow_ptr, dh_ptr, norm_ptr,
    m_ptr, dC_ptr,
    dv_ptr,
    scale,
    S, DQK, DV, NC,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (batch*head, chunk, Dv tile): dv of the chunk's rows."""
    bh = tl.program_id(0)
    c = tl.program_id(1)
    tile_v = tl.program_id(2)
    rows = tl.arange(0, L)
    dv_idx = tile_v * BV + tl.arange(0, BV)
    mask_v = dv_idx < DV
    seq_off = bh.to(tl.int64) * S
    t = c * L + rows
    next_off = (bh.to(tl.int64) * (NC + 1) + c + 1) * DQK

    qk = tl.zeros((L, L), dtype=tl.float32)
    dv_state = tl.zeros((L, BV), dtype=tl.float32)
    for start_k in range(0, DQK, BK):
        dk_idx = start_k + tl.arange(0, BK)
        mask_k = dk_idx < DQK
        q = tl.load(q_ptr + (seq_off + t[:, None]) * DQK + dk_idx[None, :], mask=mask_k[None, :],
                    other=0.0).to(tl.float32)
        k = tl.load(k_ptr + (seq_off + t[:, None]) * DQK + dk_idx[None, :], mask=mask_k[None, :],
                    other=0.0).to(tl.float32) * scale
        dC_next = tl.load(dC_ptr + next_off * DV + dk_idx[:, None] * DV + dv_idx[None, :],
                          mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        qk += tl.dot(q, tl.trans(k), input_precision=PRECISION)
        dv_state += tl.dot(k, dC_next, input_precision=PRECISION)

    b = tl.load(b_ptr + seq_off + t)
    ig = tl.load(i_ptr + seq_off + t)
    m_row = tl.load(mrow_ptr + seq_off + t)
    m_next = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + c + 1)
    g = tl.sum(tl.where(rows == L - 1, b, 0.0), axis=0)
    causal = rows[:, None] >= rows[None, :]
    log_d = tl.where(causal, b[:, None] - b[None, :] + ig[None, :], float("-inf"))
    A = qk * tl.exp(log_d - m_row[:, None])
    e = tl.exp(g - b + ig - m_next)
    dnum = tl.load(dh_ptr + (seq_off + t[:, None]) * DV + dv_idx[None, :], mask=mask_v[None, :],
                   other=0.0).to(tl.float32) / tl.load(norm_ptr + seq_off + t)[:, None]
    dv = tl.dot(tl.trans(A), dnum, input_precision=PRECISION) + e[:, None] * dv_state
    tl.store(dv_ptr + (seq_off + t[:, None]) * DV + dv_idx[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=mask_v[None, :])


def output_cotangents(dh, h, den, m_row, eps):
    """Per-row normalizer N_t = max(|den_t|, exp(-m_t)) + eps and dden (B, H, S), fp32: the
    gradient through the normalizer, where only the |den| branch depends on the inputs (the
    kernels form dnum = dh / N on load)."""
    normalizer = torch.maximum(den.abs(), torch.exp(-m_row)) + eps
    den_wins = (den.abs() > torch.exp(-m_row)).to(torch.float32)
    dh_dot_h = (dh.to(torch.float32) * h.to(torch.float32)).sum(-1)
    dden = -dh_dot_h / normalizer * torch.sign(den) * den_wins    # d/dN of num / N is -h / N
    return normalizer.contiguous(), dden.contiguous()


def chunk_state_grads(q, b, m_row, dh, normalizer, dden, m_states, dC_final, dn_final, chunk_size):
    """dC (B, H, NC+1, Dqk, Dv), dn (B, H, NC+1, Dqk): gradient w.r.t. the state entering each
    chunk (index 0 = the initial state, NC = the final state's own cotangent)."""
    B, H, S, Dqk = q.shape
    Dv = dh.shape[-1]
    NC = S // chunk_size
    dC = kernel_buffer((B, H, NC + 1, Dqk, Dv), torch.float32, q.device)
    dn = kernel_buffer((B, H, NC + 1, Dqk), torch.float32, q.device)
    BK, BV = head_dim_tile(Dqk), head_dim_tile(Dv)
    grid = (B * H, triton.cdiv(Dqk, BK), triton.cdiv(Dv, BV))
    _chunk_state_grads_kernel[grid](
        q, b, m_row, dh, normalizer, dden, m_states, dC_final, dn_final, dC, dn,
        S, Dqk, Dv, NC,
        L=chunk_size, BK=BK, BV=BV, PRECISION=dot_precision(q.dtype),
    )
    return dC, dn


def chunk_input_grads(q, k, v, i, b, m_row, dh, normalizer, dden, states, state_grads, chunk_size):
    """dq, dk (B, H, S, Dqk) and dv (B, H, S, Dv) in fp32 (k's gradient w.r.t. the unscaled k),
    and the row sums q . dq and k . dk (B, H, S)."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    NC = S // chunk_size
    C, n, m = states
    dC, dn = state_grads
    scale = 1.0 / math.sqrt(Dqk)
    BK, BV = head_dim_tile(Dqk), head_dim_tile(Dv)
    tiles_k = triton.cdiv(Dqk, BK)
    # fp32 buffers, rounded once by torch: Triton's interpreter truncates on fp32 -> bf16 stores,
    # and the gradients are worth the extra bytes
    dq = kernel_buffer(q.shape, torch.float32, q.device)
    dk = kernel_buffer(dq.shape, dq.dtype, dq.device)
    dv = kernel_buffer(v.shape, torch.float32, v.device)
    qdq = kernel_buffer((tiles_k, B, H, S), torch.float32, q.device)
    kdk = kernel_buffer(qdq.shape, qdq.dtype, qdq.device)
    precision = dot_precision(q.dtype)
    _chunk_dqk_kernel[(B * H, NC, tiles_k)](
        q, k, v, i, b, m_row, dh, normalizer, dden, C, n, m, dC, dn, dq, dk, qdq, kdk,
        scale, S, Dqk, Dv, NC,
        L=chunk_size, BK=BK, BV=BV, PRECISION=precision,
    )
    _chunk_dv_kernel[(B * H, NC, triton.cdiv(Dv, BV))](
        q, k, i, b, m_row, dh, normalizer, m, dC, dv,
        scale, S, Dqk, Dv, NC,
        L=chunk_size, BK=BK, BV=BV, PRECISION=precision,
    )
    return dq, dk, dv, qdq.sum(0), kdk.sum(0)


def gate_grads(f, qdq, kdk, final_state, final_grads):
    """di, df (B, H, S) fp32 from the row sums q . dq and k . dk (see the module docstring for
    why this is exact)."""
    C_final, n_final = final_state
    dC_final, dn_final = final_grads
    final_term = (C_final * dC_final).sum((-2, -1)) + (n_final * dn_final).sum(-1)
    dlog_f = (qdq - kdk).flip(-1).cumsum(-1).flip(-1) + final_term[..., None]
    df = dlog_f * torch.sigmoid(-f.to(torch.float32))
    return kdk, df
