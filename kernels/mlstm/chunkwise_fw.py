"""Triton forward of the chunkwise mLSTM (DESIGN.md section 3, "chunkwise form"), two-level tiled.

1. `_chunk_states_kernel`: the inter-chunk recurrence. One program per (batch*head, Dqk tile,
   Dv tile) walks the sequence tile by tile (each tile is a short segment, combined exactly with
   the summary combine of segments.py) and stores the state (C, n, m) only at chunk boundaries:
   C[:, :, c], n[:, :, c], m[:, :, c] enter chunk c; n and m (small) keep the final state at
   index NC, C's final state is a tensor of its own, so that the kernels reading the entering
   states are not handed it.
2. `_chunk_outputs_kernel`: one program per (batch*head, sequence tile, Dv tile). It walks the
   source tiles of its chunk from its own tile backwards, twice: first over the gates only, for
   the exact row stabilizer m_t (the max of all log weights; they do not depend on q, k), then
   with q k^T and the values; plus the entering state's contribution. It stores h and, from the
   Dv-tile-0 program, m_t and the denominator n_t . q_t that the backward needs.

Conventions shared with chunkwise_bw.py (gates.py explains beta): rows t, sources s; the log
weight of s for t inside a chunk is R + beta_t - beta_s + i_s (R: sum of the tile totals G from
s's tile up to t's), the entering state's is P + beta_t + m_prev (P: totals of the chunk's tiles
before t's). With resets (HAS_RESETS) s reaches t only in t's document, the entering state only
rows before the chunk's first reset, and a reset source offers the fresh state's m = 0 (log
weight R + beta_t) as a stabilizer candidate. k is scaled by `scale` = 1/sqrt(Dqk) (the state
convention of docs/INTERFACES.md). Dots take the inputs' dtype (bf16 on the tensor cores, fp32
values cast down first) and accumulate in fp32; states are fp32. Plain pointer arithmetic only
(no block pointers), so the kernels run on Triton 3.6 to 3.9 and in TRITON_INTERPRET=1.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.mlstm.tiling import device_capability, dot_precision, kernel_buffer, kernel_settings, placeholder


@triton.jit
def masked_log_weights(R, beta_row, beta_src, i_src, pos_row, pos_src, doc_row, doc_src,
                       HAS_RESETS: tl.constexpr):
    """Log weights R + beta_t - beta_s + i_s of a tile pair, -inf where s does not reach t
    (s after t, or another document). Arguments broadcast to the (rows, sources) orientation
    the caller wants; positions are absolute, so causality holds across tiles too."""
    valid = pos_row >= pos_src
    if HAS_RESETS:
        valid = valid & (doc_row == doc_src)
    return tl.where(valid, R + beta_row - beta_src + i_src, float("-inf"))


@triton.jit
def document_before(doc_ptr, doc_off, pos):
    """Document id of the position before `pos` (0 before the sequence start)."""
    return tl.load(doc_ptr + doc_off + pos - 1, mask=pos > 0, other=0)


@triton.jit
def source_tile_log_weights(beta_ptr, i_ptr, doc_ptr, seq, doc_off, tile, src, R, t, beta_t, doc_t,
                            T: tl.constexpr, HAS_RESETS: tl.constexpr, STABILIZER: tl.constexpr):
    """One step of the walk over a chunk's source tiles from the rows' tile `tile` backwards:
    R gains the total G of `src` if it lies before the rows' tile; returns (R, the sources'
    positions s, the (rows, sources) log weights). STABILIZER: a reset source also offers the
    fresh state (m = 0), log weight R + beta_t, which is its own weight with i_s replaced by
    beta_s (= log f_s at a reset); only the row maximum may use that."""
    R += tl.where(src < tile, tl.load(beta_ptr + seq + src * T + T - 1), 0.0)
    s = src * T + tl.arange(0, T)
    beta_s = tl.load(beta_ptr + seq + s)
    i_s = tl.load(i_ptr + seq + s)
    doc_s = s
    if HAS_RESETS:
        doc_s = tl.load(doc_ptr + doc_off + s)
        if STABILIZER:
            is_reset = doc_s != document_before(doc_ptr, doc_off, s)
            i_s = tl.where(is_reset, tl.maximum(i_s, beta_s), i_s)
    log_w = masked_log_weights(R, beta_t[:, None], beta_s[None, :], i_s[None, :], t[:, None], s[None, :],
                               doc_t[:, None], doc_s[None, :], HAS_RESETS)
    return R, s, log_w


@triton.jit
def _chunk_states_kernel(
    k_ptr, v_ptr, i_ptr, beta_ptr, doc_ptr,
    C0_ptr, n0_ptr, m0_ptr,
    C_ptr, n_ptr, m_ptr, C_final_ptr,
    scale,
    S, H, DQK, DV, NT, NC,
    T: tl.constexpr, TPC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_RESETS: tl.constexpr, HAS_INITIAL: tl.constexpr,
):
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
    dot_ty = v_ptr.dtype.element_ty

    C_off = bh.to(tl.int64) * NC * DQK * DV + dk[:, None] * DV + dv[None, :]
    n_off = bh.to(tl.int64) * (NC + 1) * DQK + dk
    one_state = bh.to(tl.int64) * DQK * DV + dk[:, None] * DV + dv[None, :]
    if HAS_INITIAL:
        C = tl.load(C0_ptr + one_state, mask=mask_kv, other=0.0)
        n = tl.load(n0_ptr + bh.to(tl.int64) * DQK + dk, mask=mask_k, other=0.0)
    else:                                       # the fresh state C = 0, n = 0 (m0 = 0 is given)
        C = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
    m = tl.load(m0_ptr + bh)
    for tile in range(0, NT):
        if tile % TPC == 0:                     # a chunk boundary: store the state entering it
            c = tile // TPC
            tl.store(C_ptr + C_off + c * DQK * DV, C, mask=mask_kv)
            if tile_v == 0:
                tl.store(n_ptr + n_off + c * DQK, n, mask=mask_k)
                if tile_k == 0:
                    tl.store(m_ptr + bh.to(tl.int64) * (NC + 1) + c, m)
        t = tile * T + rows
        beta = tl.load(beta_ptr + seq + t)
        ig = tl.load(i_ptr + seq + t)
        total = tl.load(beta_ptr + seq + tile * T + T - 1)      # the tile's log forget G
        log_end = total - beta + ig                               # source -> tile end
        log_enter = total + m
        if HAS_RESETS:
            doc = tl.load(doc_ptr + doc_off + t)
            doc_last = tl.load(doc_ptr + doc_off + tile * T + T - 1)
            has_reset = doc_last != document_before(doc_ptr, doc_off, tile * T)
            log_end = tl.where(doc == doc_last, log_end, float("-inf"))
            log_enter = tl.where(has_reset, total, log_enter)    # the fresh state's m = 0
        m_next = tl.maximum(log_enter, tl.max(log_end, axis=0))
        decay = tl.exp(log_enter - m_next)
        if HAS_RESETS:
            decay = tl.where(has_reset, 0.0, decay)              # the fresh state has C = n = 0
        write = tl.exp(log_end - m_next) * scale
        k = tl.load(k_ptr + (seq + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :], other=0.0)
        v = tl.load(v_ptr + (seq + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :], other=0.0)
        kw = k.to(tl.float32) * write[:, None]
        C = decay * C + tl.dot(tl.trans(kw.to(dot_ty)), v, input_precision=PRECISION)
        n = decay * n + tl.sum(kw, axis=0)
        m = m_next
    tl.store(C_final_ptr + one_state, C, mask=mask_kv)
    if tile_v == 0:
        tl.store(n_ptr + n_off + NC * DQK, n, mask=mask_k)
        if tile_k == 0:
            tl.store(m_ptr + bh.to(tl.int64) * (NC + 1) + NC, m)


@triton.jit
def _chunk_outputs_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, beta_ptr, doc_ptr,
    C_ptr, n_ptr, m_ptr,
    h_ptr, mrow_ptr, den_ptr,
    scale, eps,
    S, H, DQK, DV, NT, NC,
    T: tl.constexpr, TPC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    bh = tl.program_id(0)
    tile = tl.program_id(1)
    tile_v = tl.program_id(2)
    chunk = tile // TPC
    first = chunk * TPC
    rows = tl.arange(0, T)
    t = tile * T + rows
    dv = tile_v * BV + tl.arange(0, BV)
    mask_v = dv < DV
    seq = bh.to(tl.int64) * S
    doc_off = (bh // H).to(tl.int64) * S
    dot_ty = v_ptr.dtype.element_ty

    beta_t = tl.load(beta_ptr + seq + t)
    m_prev = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + chunk)
    doc_t = t
    if HAS_RESETS:
        doc_t = tl.load(doc_ptr + doc_off + t)

    # pass 1, gates only: m_t = max over the chunk's sources and the entering state
    m_row = tl.full((T,), float("-inf"), tl.float32)
    R = tl.zeros((), tl.float32)
    for j in range(0, tile - first + 1):
        R, s, log_w = source_tile_log_weights(beta_ptr, i_ptr, doc_ptr, seq, doc_off, tile, tile - j, R, t,
                                              beta_t, doc_t, T, HAS_RESETS, True)
        m_row = tl.maximum(m_row, tl.max(log_w, axis=1))
    log_inter = R + beta_t + m_prev
    if HAS_RESETS:
        doc_enter = document_before(doc_ptr, doc_off, first * T)
        log_inter = tl.where(doc_t == doc_enter, log_inter, float("-inf"))
    m_row = tl.maximum(m_row, log_inter)

    # the entering state first (one accumulator for h): exp(log_inter - m_t) (C^T q_t, n . q_t)
    acc = tl.zeros((T, BV), dtype=tl.float32)
    q_n = tl.zeros((T,), dtype=tl.float32)
    for start_k in range(0, DQK, BK):
        dk = start_k + tl.arange(0, BK)
        mask_k = dk < DQK
        q = tl.load(q_ptr + (seq + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :], other=0.0)
        C = tl.load(C_ptr + (bh.to(tl.int64) * NC + chunk) * DQK * DV + dk[:, None] * DV + dv[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        n = tl.load(n_ptr + (bh.to(tl.int64) * (NC + 1) + chunk) * DQK + dk, mask=mask_k, other=0.0)
        acc += tl.dot(q, C.to(dot_ty), input_precision=PRECISION)
        q_n += tl.sum(q.to(tl.float32) * n[None, :], axis=1)
    inter = tl.exp(log_inter - m_row)
    acc = acc * inter[:, None]
    den = inter * q_n

    # pass 2: intra-chunk numerator and denominator, tile pair by tile pair
    R = tl.zeros((), tl.float32)
    for j in range(0, tile - first + 1):
        R, s, log_w = source_tile_log_weights(beta_ptr, i_ptr, doc_ptr, seq, doc_off, tile, tile - j, R, t,
                                              beta_t, doc_t, T, HAS_RESETS, False)
        qk = tl.zeros((T, T), dtype=tl.float32)
        for start_k in range(0, DQK, BK):
            dk = start_k + tl.arange(0, BK)
            mask_k = dk < DQK
            q = tl.load(q_ptr + (seq + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :], other=0.0)
            k = tl.load(k_ptr + (seq + s[:, None]) * DQK + dk[None, :], mask=mask_k[None, :], other=0.0)
            qk += tl.dot(q, tl.trans(k), input_precision=PRECISION)
        weights = qk * scale * tl.exp(log_w - m_row[:, None])
        v = tl.load(v_ptr + (seq + s[:, None]) * DV + dv[None, :], mask=mask_v[None, :], other=0.0)
        acc += tl.dot(weights.to(dot_ty), v, input_precision=PRECISION)
        den += tl.sum(weights, axis=1)

    normalizer = tl.maximum(tl.abs(den), tl.exp(-m_row)) + eps
    h = acc / normalizer[:, None]
    tl.store(h_ptr + (seq + t[:, None]) * DV + dv[None, :], h.to(h_ptr.dtype.element_ty), mask=mask_v[None, :])
    if tile_v == 0:
        tl.store(mrow_ptr + seq + t, m_row)
        tl.store(den_ptr + seq + t, den)


def chunk_geometry(S: int, chunk_size: int, tile: int):
    """(tiles NT, tiles per chunk TPC, chunks NC) of a sequence of S = NT * tile positions; the
    last chunk may hold fewer tiles."""
    NT = S // tile
    TPC = chunk_size // tile
    return NT, TPC, triton.cdiv(NT, TPC)


def chunk_states_fw(k, v, i, beta, doc, C0, n0, m0, chunk_size, tile):
    """States entering each chunk, C (B, H, NC, Dqk, Dv), n (B, H, NC+1, Dqk), m (B, H, NC+1)
    (n, m with the final state at NC), and the final C (B, H, Dqk, Dv), all fp32. k, v contiguous
    (B, H, S, D); i, beta fp32 (B, H, S); doc (B, S) int32 or None; C0, n0 fp32 or None for the
    fresh state; m0 (B, H) fp32."""
    B, H, S, Dqk = k.shape
    Dv = v.shape[-1]
    NT, TPC, NC = chunk_geometry(S, chunk_size, tile)
    C = kernel_buffer((B, H, NC, Dqk, Dv), torch.float32, k.device)
    n = kernel_buffer((B, H, NC + 1, Dqk), torch.float32, k.device)
    m = kernel_buffer((B, H, NC + 1), torch.float32, k.device)
    C_final = kernel_buffer((B, H, Dqk, Dv), torch.float32, k.device)
    cfg = kernel_settings("states", Dqk, Dv, device_capability(k.device))
    unused = placeholder(k.device)
    grid = (B * H, triton.cdiv(Dqk, cfg.BK), triton.cdiv(Dv, cfg.BV))
    _chunk_states_kernel[grid](
        k, v, i, beta, unused if doc is None else doc, unused if C0 is None else C0,
        unused if n0 is None else n0, m0, C, n, m, C_final,
        1.0 / math.sqrt(Dqk), S, H, Dqk, Dv, NT, NC,
        T=tile, TPC=TPC, BK=cfg.BK, BV=cfg.BV, PRECISION=dot_precision(k.dtype), HAS_RESETS=doc is not None,
        HAS_INITIAL=C0 is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return (C, n, m), C_final


def chunk_outputs_fw(q, k, v, i, beta, doc, states, chunk_size, tile, eps):
    """h (B, H, S, Dv) in v's dtype, and per-row stabilizer m_t and denominator n_t . q_t (fp32)."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    NT, TPC, NC = chunk_geometry(S, chunk_size, tile)
    C, n, m = states
    h = kernel_buffer((B, H, S, Dv), v.dtype, v.device)
    m_row = kernel_buffer((B, H, S), torch.float32, v.device)
    den = kernel_buffer((B, H, S), torch.float32, v.device)
    cfg = kernel_settings("outputs", Dqk, Dv, device_capability(q.device))
    grid = (B * H, NT, triton.cdiv(Dv, cfg.BV))
    _chunk_outputs_kernel[grid](
        q, k, v, i, beta, placeholder(q.device) if doc is None else doc, C, n, m, h, m_row, den,
        1.0 / math.sqrt(Dqk), eps, S, H, Dqk, Dv, NT, NC,
        T=tile, TPC=TPC, BK=cfg.BK, BV=cfg.BV, PRECISION=dot_precision(q.dtype), HAS_RESETS=doc is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return h, m_row, den
