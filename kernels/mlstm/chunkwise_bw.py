"""Triton backward of the chunkwise mLSTM: the exact gradient with the stabilizer m detached.

Per row t of chunk c (entering state C_c, n_c, m_c; conventions of chunkwise_fw.py):
    D[t, s] = exp(log weight of s for t - m_t) (s <= t, same document),
    w_t = exp(b_t + m_c - m_t) (0 for rows after a reset in the chunk)
    num_t = sum_s (q_t . k_s) D[t, s] v_s + w_t C_c^T q_t,   den_t = same with v_s -> 1, C_c -> n_c
    h_t = num_t / N_t,  N_t = max(|den_t|, exp(-m_t)) + eps
The normalizer path is kept: dnum_t = dh_t / N_t and dden_t = -(dh_t . h_t) / N_t * sign(den_t)
where |den_t| wins the max (exp(-m_t) is a constant). Then, with dA[t, s] = dnum_t . v_s + dden_t:
    dq_t = sum_s dA D k_s + w_t (C_c dnum_t + n_c dden_t)
    dk_s = sum_t dA D q_t + e_s (dC_{c+1} v_s + dn_{c+1})     e_s = exp(g - b_s + i_s - m_{c+1})
    dv_s = sum_t (q_t . k_s) D dnum_t + e_s dC_{c+1}^T k_s
(e_s = 0 for sources that do not reach the chunk end), and the state gradients run backwards:
dC_c = exp(g + m_c - m_{c+1}) dC_{c+1} + sum_t w_t q_t dnum_t^T (decay 0 across a reset).

Kernels, in launch order: `_chunk_dq_kernel` (also forms N_t and dden_t), `_chunk_state_grads_kernel`
(the backward recurrence; states and their gradients only at chunk boundaries: dC[:, :, c] is the
gradient w.r.t. the state leaving chunk c), `_chunk_dkv_kernel`, `_gate_grads_kernel`.

Gate gradients. Every log weight is a sum of log f over the positions between source and row
plus the source's i (the entering state counts as a source with i = m, the state leaving a chunk
as a row). Adding x to log f_r shifts every weight that spans r, so
    di_s = k_s . dk_s,   dlog f_r = sum_{t >= r, t in r's chunk and document} (q_t . dq_t - k_t . dk_t)
                                    + [r's document reaches the chunk end] (<C_{c+1}, dC_{c+1}> + <n_{c+1}, dn_{c+1}>)
where the bracket is the sum over all later positions (the state leaving the chunk carries their
dependence on log f_r); dlog f = 0 exactly at a reset (it only decays the fresh, empty state);
df~ = sigmoid(-f~) dlog f. Sums stay inside a chunk: no sequence-long suffix sum whose large terms
cancel in fp32.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunkwise_fw import chunk_geometry, document_before, masked_log_weights, source_tile_log_weights
from kernels.mlstm.tiling import device_capability, dot_precision, kernel_buffer, kernel_settings, placeholder


@triton.jit
def tiles_log_forget(beta_ptr, seq, start, end, T: tl.constexpr):
    """The log forget of the sequence tiles [start, end): the sum of their totals G."""
    total = tl.zeros((), tl.float32)
    for tile in range(start, end):
        total += tl.load(beta_ptr + seq + tile * T + T - 1)
    return total


@triton.jit
def _chunk_dq_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, beta_ptr, doc_ptr, h_ptr, dh_ptr, mrow_ptr, den_ptr,
    C_ptr, n_ptr, m_ptr,
    dq_ptr, qdq_ptr, norm_ptr, dden_ptr,
    scale, eps,
    S, H, DQK, DV, NT, NC,
    T: tl.constexpr, TPC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    """One program per (batch*head, sequence tile, Dqk tile): dq of the tile's rows and this Dqk
    tile's share of q . dq; the Dqk-tile-0 program also stores N_t and dden_t for the kernels after.
    With the whole Dqk in one tile, dH V^T is formed once per tile pair."""
    bh = tl.program_id(0)
    tile = tl.program_id(1)
    tile_k = tl.program_id(2)
    chunk = tile // TPC
    first = chunk * TPC
    rows = tl.arange(0, T)
    t = tile * T + rows
    dk0 = tile_k * BK + tl.arange(0, BK // 2)
    dk1 = dk0 + BK // 2
    seq = bh.to(tl.int64) * S
    doc_off = (bh // H).to(tl.int64) * S
    dot_ty = q_ptr.dtype.element_ty

    # cotangent of the normalizer: dden_t = -(dh_t . h_t) / N_t sign(den_t) where |den_t| wins
    m_row = tl.load(mrow_ptr + seq + t)
    den = tl.load(den_ptr + seq + t)
    dh_h = tl.zeros((T,), dtype=tl.float32)
    for start_v in range(0, DV, BV):
        dv = start_v + tl.arange(0, BV)
        off = (seq + t[:, None]) * DV + dv[None, :]
        dh = tl.load(dh_ptr + off, mask=(dv < DV)[None, :], other=0.0).to(tl.float32)
        dh_h += tl.sum(dh * tl.load(h_ptr + off, mask=(dv < DV)[None, :], other=0.0).to(tl.float32), axis=1)
    floor = tl.exp(-m_row)
    normalizer = tl.maximum(tl.abs(den), floor) + eps
    sign = tl.where(den > 0, 1.0, tl.where(den < 0, -1.0, 0.0))
    dden = tl.where(tl.abs(den) > floor, -dh_h / normalizer * sign, 0.0)
    if tile_k == 0:
        tl.store(norm_ptr + seq + t, normalizer)
        tl.store(dden_ptr + seq + t, dden)

    beta_t = tl.load(beta_ptr + seq + t)
    doc_t = t
    if HAS_RESETS:
        doc_t = tl.load(doc_ptr + doc_off + t)
    # the entering state's share first, w_t (C_c dnum_t + n_c dden_t), w_t from the chunk's log
    # forget before t's tile
    m_prev = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + chunk)
    log_w_enter = tiles_log_forget(beta_ptr, seq, first, tile, T) + beta_t + m_prev - m_row
    if HAS_RESETS:        # masked before exp: m_t of a row after a reset does not bound it
        log_w_enter = tl.where(doc_t == document_before(doc_ptr, doc_off, first * T), log_w_enter, float("-inf"))
    w = tl.exp(log_w_enter)
    # dq in two halves of the Dqk tile, each with its accumulator: the same products, and the
    # final q . dq needs only half of q beside them (a whole q tile would spill registers)
    state = bh.to(tl.int64) * NC + chunk
    acc0 = entering_state_dq(dh_ptr, C_ptr, n_ptr, seq, t, state, dk0, w / normalizer, w * dden, scale,
                             DQK, DV, T, BK // 2, BV, NC, PRECISION)
    acc1 = entering_state_dq(dh_ptr, C_ptr, n_ptr, seq, t, state, dk1, w / normalizer, w * dden, scale,
                             DQK, DV, T, BK // 2, BV, NC, PRECISION)
    R = tl.zeros((), tl.float32)
    for j in range(0, tile - first + 1):
        R, s, log_w = source_tile_log_weights(beta_ptr, i_ptr, doc_ptr, seq, doc_off, tile, tile - j, R, t,
                                              beta_t, doc_t, T, HAS_RESETS, False)
        dh_v = tl.zeros((T, T), dtype=tl.float32)
        for start_v in range(0, DV, BV):
            dv = start_v + tl.arange(0, BV)
            mask_v = (dv < DV)[None, :]
            dh = tl.load(dh_ptr + (seq + t[:, None]) * DV + dv[None, :], mask=mask_v, other=0.0)
            v = tl.load(v_ptr + (seq + s[:, None]) * DV + dv[None, :], mask=mask_v, other=0.0)
            dh_v += tl.dot(dh, tl.trans(v), input_precision=PRECISION)
        dA = ((dh_v / normalizer[:, None] + dden[:, None]) * tl.exp(log_w - m_row[:, None])).to(dot_ty)
        k0 = tl.load(k_ptr + (seq + s[:, None]) * DQK + dk0[None, :], mask=(dk0 < DQK)[None, :], other=0.0)
        acc0 += tl.dot(dA, k0, input_precision=PRECISION)
        k1 = tl.load(k_ptr + (seq + s[:, None]) * DQK + dk1[None, :], mask=(dk1 < DQK)[None, :], other=0.0)
        acc1 += tl.dot(dA, k1, input_precision=PRECISION)

    q_dq = store_gradient_half(q_ptr, dq_ptr, seq, t, dk0, acc0 * scale, DQK)
    q_dq += store_gradient_half(q_ptr, dq_ptr, seq, t, dk1, acc1 * scale, DQK)
    tl.store(qdq_ptr + tile_k.to(tl.int64) * tl.num_programs(0) * S + seq + t, q_dq)


@triton.jit
def entering_state_dq(dh_ptr, C_ptr, n_ptr, seq, t, state, dk, w_over_N, w_dden, scale, DQK, DV,
                      T: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NC, PRECISION: tl.constexpr):
    """The entering state's share of dq / scale on columns dk: (w_t / N_t C_c dh_t + w_t dden_t n_c) / scale."""
    mask_k = dk < DQK
    acc = tl.zeros((T, BK), dtype=tl.float32)
    for start_v in range(0, DV, BV):
        dv = start_v + tl.arange(0, BV)
        mask_v = dv < DV
        dh = tl.load(dh_ptr + (seq + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :], other=0.0)
        C = tl.load(C_ptr + state * DQK * DV + dk[:, None] * DV + dv[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        acc += tl.dot(dh, tl.trans(C.to(dh.dtype)), input_precision=PRECISION)
    n = tl.load(n_ptr + (state + state // NC) * DQK + dk, mask=mask_k, other=0.0)
    return (acc * w_over_N[:, None] + w_dden[:, None] * n[None, :]) / scale


@triton.jit
def store_gradient_half(x_ptr, dx_ptr, seq, rows, cols, dx, D):
    """Store the gradient dx (rows, cols) and return the row sums x . dx (fp32, before rounding)."""
    off = (seq + rows[:, None]) * D + cols[None, :]
    mask = (cols < D)[None, :]
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    x = tl.load(x_ptr + off, mask=mask, other=0.0)
    return tl.sum(x.to(tl.float32) * dx, axis=1)


@triton.jit
def _chunk_state_grads_kernel(
    q_ptr, beta_ptr, doc_ptr, mrow_ptr, dh_ptr, norm_ptr, dden_ptr,
    C_ptr, n_ptr, m_ptr, C_final_ptr, dC_final_ptr, dn_final_ptr,
    dC_ptr, dn_ptr, dC0_ptr, dn0_ptr, cdc_ptr,
    S, H, DQK, DV, NT, NC,
    T: tl.constexpr, TPC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_RESETS: tl.constexpr, HAS_INITIAL: tl.constexpr,
    HAS_FINAL_GRAD: tl.constexpr,
):
    """One program per (batch*head, Dqk tile, Dv tile): dC, dn w.r.t. the state leaving each
    chunk, backwards over chunks, and this tile's share of <C, dC> + <n, dn> at each boundary;
    the initial state's gradient if there is an initial state."""
    bh = tl.program_id(0)
    tile_k = tl.program_id(1)
    tile_v = tl.program_id(2)
    rows = tl.arange(0, T)
    dk = tile_k * BK + tl.arange(0, BK)
    dv = tile_v * BV + tl.arange(0, BV)
    mask_k = dk < DQK
    mask_v = dv < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    seq = bh.to(tl.int64) * S
    doc_off = (bh // H).to(tl.int64) * S
    m_off = bh.to(tl.int64) * (NC + 1)
    C_off = bh.to(tl.int64) * NC * DQK * DV + dk[:, None] * DV + dv[None, :]
    n_off = bh.to(tl.int64) * (NC + 1) * DQK + dk
    dn_off = bh.to(tl.int64) * NC * DQK + dk
    one_state = bh.to(tl.int64) * DQK * DV + dk[:, None] * DV + dv[None, :]
    part_off = (tile_k * tl.num_programs(2) + tile_v).to(tl.int64) * tl.num_programs(0) * NC + bh.to(tl.int64) * NC
    dot_ty = q_ptr.dtype.element_ty

    if HAS_FINAL_GRAD:
        dC = tl.load(dC_final_ptr + one_state, mask=mask_kv, other=0.0)
        dn = tl.load(dn_final_ptr + bh.to(tl.int64) * DQK + dk, mask=mask_k, other=0.0)
    else:
        dC = tl.zeros((BK, BV), dtype=tl.float32)
        dn = tl.zeros((BK,), dtype=tl.float32)
    for step in range(0, NC):
        c = NC - 1 - step
        # gradient w.r.t. the state leaving chunk c (= entering chunk c + 1), and its inner
        # product with that state (the final state when c is the last chunk)
        tl.store(dC_ptr + C_off + c * DQK * DV, dC, mask=mask_kv)
        inner = tl.zeros((), tl.float32)
        if c + 1 < NC:
            inner += tl.sum(tl.sum(tl.load(C_ptr + C_off + (c + 1) * DQK * DV, mask=mask_kv, other=0.0) * dC, axis=1), axis=0)
        else:
            if HAS_FINAL_GRAD:
                inner += tl.sum(tl.sum(tl.load(C_final_ptr + one_state, mask=mask_kv, other=0.0) * dC, axis=1), axis=0)
        if tile_v == 0:
            tl.store(dn_ptr + dn_off + c * DQK, dn, mask=mask_k)
            inner += tl.sum(tl.load(n_ptr + n_off + (c + 1) * DQK, mask=mask_k, other=0.0) * dn, axis=0)
        tl.store(cdc_ptr + part_off + c, inner)

        first = c * TPC
        last = tl.minimum(first + TPC, NT)
        m_prev = tl.load(m_ptr + m_off + c)
        m_next = tl.load(m_ptr + m_off + c + 1)
        if HAS_RESETS:
            doc_enter = document_before(doc_ptr, doc_off, first * T)
        local_C = tl.zeros((BK, BV), dtype=tl.float32)
        local_n = tl.zeros((BK,), dtype=tl.float32)
        P = tl.zeros((), tl.float32)
        for tile in range(first, last):
            t = tile * T + rows
            log_w = P + tl.load(beta_ptr + seq + t) + m_prev - tl.load(mrow_ptr + seq + t)
            if HAS_RESETS:
                log_w = tl.where(tl.load(doc_ptr + doc_off + t) == doc_enter, log_w, float("-inf"))
            w = tl.exp(log_w)
            P += tl.load(beta_ptr + seq + tile * T + T - 1)
            q = tl.load(q_ptr + (seq + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :], other=0.0).to(tl.float32)
            dh = tl.load(dh_ptr + (seq + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :], other=0.0)
            qw = q * (w / tl.load(norm_ptr + seq + t))[:, None]
            local_C += tl.dot(tl.trans(qw.to(dot_ty)), dh, input_precision=PRECISION)
            local_n += tl.sum(q * (w * tl.load(dden_ptr + seq + t))[:, None], axis=0)
        log_decay = P + m_prev - m_next
        if HAS_RESETS:
            log_decay = tl.where(tl.load(doc_ptr + doc_off + last * T - 1) == doc_enter, log_decay, float("-inf"))
        decay = tl.exp(log_decay)
        dC = decay * dC + local_C
        dn = decay * dn + local_n
    if HAS_INITIAL:
        tl.store(dC0_ptr + one_state, dC, mask=mask_kv)
        if tile_v == 0:
            tl.store(dn0_ptr + bh.to(tl.int64) * DQK + dk, dn, mask=mask_k)


@triton.jit
def row_tile_decay(beta_ptr, doc_ptr, mrow_ptr, seq, doc_off, R, row_tile, s, beta_s, i_s, doc_s,
                   T: tl.constexpr, HAS_RESETS: tl.constexpr):
    """D^T of (sources s, rows of `row_tile`): sources along dim 0, rows along dim 1; R is the
    log forget from the sources' tile up to the rows' tile. Returns (rows t, D^T, R past the rows' tile)."""
    t = row_tile * T + tl.arange(0, T)
    doc_t = t
    if HAS_RESETS:
        doc_t = tl.load(doc_ptr + doc_off + t)
    log_w = masked_log_weights(R, tl.load(beta_ptr + seq + t)[None, :], beta_s[:, None], i_s[:, None],
                               t[None, :], s[:, None], doc_t[None, :], doc_s[:, None], HAS_RESETS)
    decay_T = tl.exp(log_w - tl.load(mrow_ptr + seq + t)[None, :])
    return t, decay_T, R + tl.load(beta_ptr + seq + row_tile * T + T - 1)


@triton.jit
def leaving_state_dk(v_ptr, dC_ptr, dn_ptr, seq, s, state, dk, e, DQK, DV,
                     T: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, PRECISION: tl.constexpr):
    """The leaving state's share of dk / scale on columns dk: e_s (dC_{c+1} v_s + dn_{c+1})."""
    mask_k = dk < DQK
    acc = tl.zeros((T, BK), dtype=tl.float32)
    for start_v in range(0, DV, BR):
        dv = start_v + tl.arange(0, BR)
        mask_v = dv < DV
        v = tl.load(v_ptr + (seq + s[:, None]) * DV + dv[None, :], mask=mask_v[None, :], other=0.0)
        dC = tl.load(dC_ptr + state * DQK * DV + dk[:, None] * DV + dv[None, :],
                     mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        acc += tl.dot(v, tl.trans(dC.to(v.dtype)), input_precision=PRECISION)
    dn = tl.load(dn_ptr + state * DQK + dk, mask=mask_k, other=0.0)
    return e[:, None] * (acc + dn[None, :])


@triton.jit
def _chunk_dkv_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, beta_ptr, doc_ptr, dh_ptr, mrow_ptr, norm_ptr, dden_ptr,
    m_ptr, dC_ptr, dn_ptr,
    dk_ptr, dv_ptr, kdk_ptr,
    scale,
    S, H, DQK, DV, NT, NC,
    T: tl.constexpr, TPC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr,
    PRECISION: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    """One program per (batch*head, source tile, j): for j < cdiv(Dqk, BK) dk of Dqk tile j (and
    this tile's share of k . dk), else dv of Dv tile j - cdiv(Dqk, BK). Each walks the query tiles
    of the chunk from its own onwards and forms its score tile (dA^T from V dH^T, or A^T from
    K Q^T, reduced over BR-wide head tiles) once per tile pair: with the whole head dim in one
    tile, each intra-chunk product of the backward is done once."""
    bh = tl.program_id(0)
    tile = tl.program_id(1)
    j = tl.program_id(2)
    tiles_k = tl.cdiv(DQK, BK)
    chunk = tile // TPC
    last = tl.minimum((chunk + 1) * TPC, NT)
    s = tile * T + tl.arange(0, T)
    seq = bh.to(tl.int64) * S
    doc_off = (bh // H).to(tl.int64) * S
    dot_ty = q_ptr.dtype.element_ty

    beta_s = tl.load(beta_ptr + seq + s)
    i_s = tl.load(i_ptr + seq + s)
    doc_s = s
    if HAS_RESETS:
        doc_s = tl.load(doc_ptr + doc_off + s)
    # the state leaving the chunk: e_s = exp(g - b_s + i_s - m_{c+1}), g - b_s from the tiles' totals
    m_next = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + chunk + 1)
    log_e = tiles_log_forget(beta_ptr, seq, tile, last, T) - beta_s + i_s - m_next
    if HAS_RESETS:
        log_e = tl.where(doc_s == tl.load(doc_ptr + doc_off + last * T - 1), log_e, float("-inf"))
    e = tl.exp(log_e)
    state = bh.to(tl.int64) * NC + chunk                  # dC, dn of the state leaving the chunk
    if j < tiles_k:
        # dk in two halves of the Dqk tile (as in the dq kernel: k . dk beside half a k tile)
        dk0 = j * BK + tl.arange(0, BK // 2)
        dk1 = dk0 + BK // 2
        acc0 = leaving_state_dk(v_ptr, dC_ptr, dn_ptr, seq, s, state, dk0, e, DQK, DV, T, BK // 2, BR, PRECISION)
        acc1 = leaving_state_dk(v_ptr, dC_ptr, dn_ptr, seq, s, state, dk1, e, DQK, DV, T, BK // 2, BR, PRECISION)
        R = tl.zeros((), tl.float32)
        for row_tile in range(tile, last):
            t, decay_T, R = row_tile_decay(beta_ptr, doc_ptr, mrow_ptr, seq, doc_off, R, row_tile, s, beta_s, i_s,
                                           doc_s, T, HAS_RESETS)
            v_dh = tl.zeros((T, T), dtype=tl.float32)
            for start_v in range(0, DV, BR):
                dvv = start_v + tl.arange(0, BR)
                mask_vv = (dvv < DV)[None, :]
                v = tl.load(v_ptr + (seq + s[:, None]) * DV + dvv[None, :], mask=mask_vv, other=0.0)
                dh = tl.load(dh_ptr + (seq + t[:, None]) * DV + dvv[None, :], mask=mask_vv, other=0.0)
                v_dh += tl.dot(v, tl.trans(dh), input_precision=PRECISION)
            dA_T = ((v_dh / tl.load(norm_ptr + seq + t)[None, :] + tl.load(dden_ptr + seq + t)[None, :])
                    * decay_T).to(dot_ty)
            q0 = tl.load(q_ptr + (seq + t[:, None]) * DQK + dk0[None, :], mask=(dk0 < DQK)[None, :], other=0.0)
            acc0 += tl.dot(dA_T, q0, input_precision=PRECISION)
            q1 = tl.load(q_ptr + (seq + t[:, None]) * DQK + dk1[None, :], mask=(dk1 < DQK)[None, :], other=0.0)
            acc1 += tl.dot(dA_T, q1, input_precision=PRECISION)
        # w.r.t. the unscaled k; k . dk is the same for the scaled k and its gradient as for the unscaled ones
        k_dk = store_gradient_half(k_ptr, dk_ptr, seq, s, dk0, scale * acc0, DQK)
        k_dk += store_gradient_half(k_ptr, dk_ptr, seq, s, dk1, scale * acc1, DQK)
        tl.store(kdk_ptr + j.to(tl.int64) * tl.num_programs(0) * S + seq + s, k_dk)
    else:
        dv = (j - tiles_k) * BV + tl.arange(0, BV)
        mask_v = dv < DV
        # the state's term first: e_s scale dC_{c+1}^T k_s
        acc = tl.zeros((T, BV), dtype=tl.float32)
        for start_k in range(0, DQK, BR):
            dkk = start_k + tl.arange(0, BR)
            mask_kk = dkk < DQK
            k = tl.load(k_ptr + (seq + s[:, None]) * DQK + dkk[None, :], mask=mask_kk[None, :], other=0.0)
            dC = tl.load(dC_ptr + state * DQK * DV + dkk[:, None] * DV + dv[None, :],
                         mask=mask_kk[:, None] & mask_v[None, :], other=0.0)
            acc += tl.dot(k, dC.to(dot_ty), input_precision=PRECISION)
        acc = acc * (e * scale)[:, None]
        R = tl.zeros((), tl.float32)
        for row_tile in range(tile, last):
            t, decay_T, R = row_tile_decay(beta_ptr, doc_ptr, mrow_ptr, seq, doc_off, R, row_tile, s, beta_s, i_s,
                                           doc_s, T, HAS_RESETS)
            k_q = tl.zeros((T, T), dtype=tl.float32)
            for start_k in range(0, DQK, BR):
                dkk = start_k + tl.arange(0, BR)
                mask_kk = (dkk < DQK)[None, :]
                k = tl.load(k_ptr + (seq + s[:, None]) * DQK + dkk[None, :], mask=mask_kk, other=0.0)
                q = tl.load(q_ptr + (seq + t[:, None]) * DQK + dkk[None, :], mask=mask_kk, other=0.0)
                k_q += tl.dot(k, tl.trans(q), input_precision=PRECISION)
            A_T = k_q * (scale / tl.load(norm_ptr + seq + t))[None, :] * decay_T
            dh = tl.load(dh_ptr + (seq + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :], other=0.0)
            acc += tl.dot(A_T.to(dot_ty), dh, input_precision=PRECISION)
        tl.store(dv_ptr + (seq + s[:, None]) * DV + dv[None, :], acc.to(dv_ptr.dtype.element_ty),
                 mask=mask_v[None, :])


@triton.jit
def _gate_grads_kernel(
    f_ptr, doc_ptr, qdq_ptr, kdk_ptr, cdc_ptr,
    di_ptr, df_ptr,
    S, H, NT, NC, NUM_QDQ, NUM_KDK, NUM_CDC,
    T: tl.constexpr, TPC: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    """One program per (batch*head, chunk): di = k . dk and df from the per-document suffix sums
    inside the chunk plus the boundary term <C, dC> + <n, dn> of the state leaving it."""
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    BH = tl.num_programs(0)
    rows = tl.arange(0, T)
    seq = bh.to(tl.int64) * S
    doc_off = (bh // H).to(tl.int64) * S
    first = chunk * TPC
    last = tl.minimum(first + TPC, NT)

    part_stride = BH.to(tl.int64) * S
    carry = tl.zeros((), tl.float32)
    for p in range(0, NUM_CDC):
        carry += tl.load(cdc_ptr + (p * BH + bh).to(tl.int64) * NC + chunk)
    carry_doc = tl.zeros((), tl.int32)
    if HAS_RESETS:
        carry_doc = tl.load(doc_ptr + doc_off + last * T - 1)
    for j in range(0, last - first):
        tile = last - 1 - j
        t = tile * T + rows
        q_dq = tl.zeros((T,), dtype=tl.float32)
        for p in range(0, NUM_QDQ):
            q_dq += tl.load(qdq_ptr + p * part_stride + seq + t)
        k_dk = tl.zeros((T,), dtype=tl.float32)
        for p in range(0, NUM_KDK):
            k_dk += tl.load(kdk_ptr + p * part_stride + seq + t)
        term = q_dq - k_dk
        after = rows[None, :] >= rows[:, None]               # (t, u): u >= t
        if HAS_RESETS:
            doc = tl.load(doc_ptr + doc_off + t)
            after = after & (doc[None, :] == doc[:, None])
            suffix = tl.sum(tl.where(after, term[None, :], 0.0), axis=1) + tl.where(doc == carry_doc, carry, 0.0)
            dlog_f = tl.where(doc != document_before(doc_ptr, doc_off, t), 0.0, suffix)
            carry_doc = tl.sum(tl.where(rows == 0, doc, 0), axis=0)
        else:
            suffix = tl.sum(tl.where(after, term[None, :], 0.0), axis=1) + carry
            dlog_f = suffix
        carry = tl.sum(tl.where(rows == 0, suffix, 0.0), axis=0)
        f = tl.load(f_ptr + seq + t).to(tl.float32)
        e = tl.exp(-tl.abs(f))                               # sigmoid(-f) without overflow
        df = dlog_f * tl.where(f > 0, e / (1.0 + e), 1.0 / (1.0 + e))
        tl.store(di_ptr + seq + t, k_dk.to(di_ptr.dtype.element_ty))
        tl.store(df_ptr + seq + t, df.to(df_ptr.dtype.element_ty))


def chunk_dq(q, k, v, i, beta, doc, h, dh, m_row, den, states, chunk_size, tile, eps):
    """dq (B, H, S, Dqk) in q's dtype, the per-Dqk-tile row sums q . dq (tiles, B, H, S), and the
    normalizer N_t and its cotangent dden_t (B, H, S) fp32."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    NT, TPC, NC = chunk_geometry(S, chunk_size, tile)
    C, n, m = states
    cfg = kernel_settings("dq", Dqk, Dv, device_capability(q.device))
    tiles_k = triton.cdiv(Dqk, cfg.BK)
    dq = kernel_buffer(q.shape, q.dtype, q.device)
    qdq = kernel_buffer((tiles_k, B, H, S), torch.float32, q.device)
    normalizer = kernel_buffer((B, H, S), torch.float32, q.device)
    dden = kernel_buffer((B, H, S), torch.float32, q.device)
    _chunk_dq_kernel[(B * H, NT, tiles_k)](
        q, k, v, i, beta, placeholder(q.device) if doc is None else doc, h, dh, m_row, den, C, n, m,
        dq, qdq, normalizer, dden,
        1.0 / math.sqrt(Dqk), eps, S, H, Dqk, Dv, NT, NC,
        T=tile, TPC=TPC, BK=cfg.BK, BV=cfg.BV, PRECISION=dot_precision(q.dtype), HAS_RESETS=doc is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dq, qdq, normalizer, dden


def chunk_state_grads(q, beta, doc, m_row, dh, normalizer, dden, states, C_final, final_grads,
                      has_initial, chunk_size, tile):
    """dC (B, H, NC, Dqk, Dv), dn (B, H, NC, Dqk): gradient w.r.t. the state leaving each chunk;
    the initial state's (dC0, dn0), or (None, None) without an initial state; and the partial
    inner products <C, dC> + <n, dn> at every chunk end (tiles, B, H, NC). `final_grads` is
    (dC_final, dn_final) or None (no gradient reaches the final state)."""
    B, H, S, Dqk = q.shape
    Dv = dh.shape[-1]
    NT, TPC, NC = chunk_geometry(S, chunk_size, tile)
    C, n, m = states
    cfg = kernel_settings("state_grads", Dqk, Dv, device_capability(q.device))
    grid = (B * H, triton.cdiv(Dqk, cfg.BK), triton.cdiv(Dv, cfg.BV))
    dC = kernel_buffer(C.shape, torch.float32, q.device)
    dn = kernel_buffer((B, H, NC, Dqk), torch.float32, q.device)
    dC0 = kernel_buffer((B, H, Dqk, Dv), torch.float32, q.device) if has_initial else None
    dn0 = kernel_buffer((B, H, Dqk), torch.float32, q.device) if has_initial else None
    cdc = kernel_buffer((grid[1] * grid[2], B, H, NC), torch.float32, q.device)
    unused = placeholder(q.device)
    dC_final, dn_final = final_grads if final_grads is not None else (unused, unused)
    _chunk_state_grads_kernel[grid](
        q, beta, unused if doc is None else doc, m_row, dh, normalizer, dden, C, n, m,
        C_final if final_grads is not None else unused, dC_final, dn_final,
        dC, dn, unused if dC0 is None else dC0, unused if dn0 is None else dn0, cdc,
        S, H, Dqk, Dv, NT, NC,
        T=tile, TPC=TPC, BK=cfg.BK, BV=cfg.BV, PRECISION=dot_precision(q.dtype), HAS_RESETS=doc is not None,
        HAS_INITIAL=has_initial, HAS_FINAL_GRAD=final_grads is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dC, dn, dC0, dn0, cdc


def chunk_dkv(q, k, v, i, beta, doc, dh, m_row, normalizer, dden, m_states, state_grads, chunk_size, tile):
    """dk (B, H, S, Dqk) (w.r.t. the unscaled k) and dv (B, H, S, Dv) in the inputs' dtypes, and the
    per-Dqk-tile row sums k . dk (tiles, B, H, S)."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    NT, TPC, NC = chunk_geometry(S, chunk_size, tile)
    dC, dn = state_grads
    cfg = kernel_settings("dkv", Dqk, Dv, device_capability(q.device))
    tiles_k, tiles_v = triton.cdiv(Dqk, cfg.BK), triton.cdiv(Dv, cfg.BV)
    dk = kernel_buffer(k.shape, k.dtype, k.device)
    dv = kernel_buffer(v.shape, v.dtype, v.device)
    kdk = kernel_buffer((tiles_k, B, H, S), torch.float32, k.device)
    _chunk_dkv_kernel[(B * H, NT, tiles_k + tiles_v)](
        q, k, v, i, beta, placeholder(q.device) if doc is None else doc, dh, m_row, normalizer, dden,
        m_states, dC, dn, dk, dv, kdk,
        1.0 / math.sqrt(Dqk), S, H, Dqk, Dv, NT, NC,
        T=tile, TPC=TPC, BK=cfg.BK, BV=cfg.BV, BR=cfg.BR, PRECISION=dot_precision(q.dtype),
        HAS_RESETS=doc is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dk, dv, kdk


def gate_grads(f, doc, qdq, kdk, cdc, chunk_size, tile, i_dtype):
    """di (B, H, S) in `i_dtype`, df in f's dtype (see the module docstring for why this is exact)."""
    B, H, S = f.shape
    NT, TPC, NC = chunk_geometry(S, chunk_size, tile)
    di = kernel_buffer((B, H, S), i_dtype, f.device)
    df = kernel_buffer((B, H, S), f.dtype, f.device)
    _gate_grads_kernel[(B * H, NC)](
        f, placeholder(f.device) if doc is None else doc, qdq, kdk, cdc, di, df,
        S, H, NT, NC, qdq.shape[0], kdk.shape[0], cdc.shape[0],
        T=tile, TPC=TPC, HAS_RESETS=doc is not None,
    )
    return di, df
