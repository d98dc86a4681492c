"""Triton forward of the chunkwise mLSTM (DESIGN.md section 3, "chunkwise form").

Two kernels, TFLA / flash-linear-attention style:

1. `_chunk_states_kernel`: the inter-chunk recurrence. One program per (batch*head, Dqk tile,
   Dv tile) walks the chunks in order and stores the state (C, n, m) entering every chunk plus
   the final one: states[:, :, c] is the state before chunk c, states[:, :, NC] the final state.
2. `_chunk_outputs_kernel`: one program per (batch*head, chunk, Dv tile) computes the
   intra-chunk quadratic part plus the contribution of the entering state and stores h; the
   Dv-tile-0 program also stores the per-row stabilizer m_t and denominator n_t . q_t that the
   backward needs.

Conventions shared with chunkwise_bw.py: `b` is the cumulative log forget *inside* each chunk
(b_t = sum of log f from the chunk start to t, inclusive), so the chunk's total log forget is
b at its last row. k is multiplied by `scale` = 1/sqrt(Dqk) on load (the state convention of
docs/INTERFACES.md). Everything is computed in fp32; only plain pointer arithmetic is used
(no block pointers) so the kernels run on Triton 3.6+ and in TRITON_INTERPRET=1 on CPU.
"""

import math
import os

import torch
import triton
import triton.language as tl


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tests compare at 1e-4); narrower inputs allow tf32."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


# Under the interpreter (the CPU tests) output buffers start as NaN, so an element a kernel fails
# to write cannot pass a test; on a GPU that fill is one more full write of every buffer.
POISON_BUFFERS = os.environ.get("TRITON_INTERPRET") == "1"


def kernel_buffer(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An output buffer every element of which the kernel writes (NaN-filled under the tests)."""
    if POISON_BUFFERS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


# Largest tile over a head dimension; tests lower it to run several masked tiles on small dims.
MAX_HEAD_TILE = 64


def head_dim_tile(dim: int) -> int:
    """Tile size over a head dimension: a power of two >= 16 (tl.dot minimum), at most
    MAX_HEAD_TILE; dims that are not powers of two are covered by masked tiles."""
    return max(16, min(MAX_HEAD_TILE, triton.next_power_of_2(dim)))


@triton.jit
def _chunk_states_kernel(
    k_ptr, v_ptr, i_ptr, b_ptr,
    C0_ptr, n0_ptr, m0_ptr,
    C_ptr, n_ptr, m_ptr,
    scale,
    S, DQK, DV, NC,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    tile_k = tl.program_id(1)
    tile_v = tl.program_id(2)
    rows = tl.arange(0, L)
    dk = tile_k * BK + tl.arange(0, BK)
    dv = tile_v * BV + tl.arange(0, BV)
    mask_k = dk < DQK
    mask_v = dv < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]

    state_C_off = bh.to(tl.int64) * (NC + 1) * DQK * DV + dk[:, None] * DV + dv[None, :]
    state_n_off = bh.to(tl.int64) * (NC + 1) * DQK + dk
    C = tl.load(C0_ptr + bh.to(tl.int64) * DQK * DV + dk[:, None] * DV + dv[None, :],
                mask=mask_kv, other=0.0)
    n = tl.load(n0_ptr + bh.to(tl.int64) * DQK + dk, mask=mask_k, other=0.0)
    m = tl.load(m0_ptr + bh)

    seq_off = bh.to(tl.int64) * S
    for c in range(NC):
        # store the state entering chunk c
        tl.store(C_ptr + state_C_off + c * DQK * DV, C, mask=mask_kv)
        if tile_v == 0:
            tl.store(n_ptr + state_n_off + c * DQK, n, mask=mask_k)
            if tile_k == 0:
                tl.store(m_ptr + bh.to(tl.int64) * (NC + 1) + c, m)
        t = c * L + rows
        b = tl.load(b_ptr + seq_off + t)
        ig = tl.load(i_ptr + seq_off + t)
        g = tl.sum(tl.where(rows == L - 1, b, 0.0), axis=0)          # chunk total log forget
        log_end = g - b + ig                                         # source -> chunk end
        m_next = tl.maximum(g + m, tl.max(log_end, axis=0))
        decay = tl.exp(g + m - m_next)
        write = tl.exp(log_end - m_next)
        k = tl.load(k_ptr + (seq_off + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :],
                    other=0.0).to(tl.float32) * scale
        v = tl.load(v_ptr + (seq_off + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :],
                    other=0.0).to(tl.float32)
        kw = k * write[:, None]
        C = decay * C + tl.dot(tl.trans(kw), v, input_precision=PRECISION)
        n = decay * n + tl.sum(kw, axis=0)
        m = m_next
    tl.store(C_ptr + state_C_off + NC * DQK * DV, C, mask=mask_kv)
    if tile_v == 0:
        tl.store(n_ptr + state_n_off + NC * DQK, n, mask=mask_k)
        if tile_k == 0:
            tl.store(m_ptr + bh.to(tl.int64) * (NC + 1) + NC, m)


@triton.jit
def _chunk_outputs_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, b_ptr,
    C_ptr, n_ptr, m_ptr,
    h_ptr, mrow_ptr, den_ptr,
    scale, eps,
    S, DQK, DV, NC,
    L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    c = tl.program_id(1)
    tile_v = tl.program_id(2)
    rows = tl.arange(0, L)
    dv = tile_v * BV + tl.arange(0, BV)
    mask_v = dv < DV
    seq_off = bh.to(tl.int64) * S
    t = c * L + rows

    b = tl.load(b_ptr + seq_off + t)
    ig = tl.load(i_ptr + seq_off + t)
    m_prev = tl.load(m_ptr + bh.to(tl.int64) * (NC + 1) + c)
    state_off = (bh.to(tl.int64) * (NC + 1) + c) * DQK

    # q k^T over all Dqk tiles, and the entering state's numerator / denominator terms
    qk = tl.zeros((L, L), dtype=tl.float32)
    q_C = tl.zeros((L, BV), dtype=tl.float32)
    q_n = tl.zeros((L,), dtype=tl.float32)
    for start_k in range(0, DQK, BK):
        dk = start_k + tl.arange(0, BK)
        mask_k = dk < DQK
        q = tl.load(q_ptr + (seq_off + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :],
                    other=0.0).to(tl.float32)
        k = tl.load(k_ptr + (seq_off + t[:, None]) * DQK + dk[None, :], mask=mask_k[None, :],
                    other=0.0).to(tl.float32) * scale
        C = tl.load(C_ptr + state_off * DV + dk[:, None] * DV + dv[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        n = tl.load(n_ptr + state_off + dk, mask=mask_k, other=0.0)
        qk += tl.dot(q, tl.trans(k), input_precision=PRECISION)
        q_C += tl.dot(q, C, input_precision=PRECISION)
        q_n += tl.sum(q * n[None, :], axis=1)

    # log weights: source s -> row t is b_t - b_s + i_s (s <= t); entering state is b_t + m_prev
    causal = rows[:, None] >= rows[None, :]
    log_d = tl.where(causal, b[:, None] - b[None, :] + ig[None, :], float("-inf"))
    log_inter = b + m_prev
    m_row = tl.maximum(log_inter, tl.max(log_d, axis=1))
    weights = qk * tl.exp(log_d - m_row[:, None])
    inter = tl.exp(log_inter - m_row)

    v = tl.load(v_ptr + (seq_off + t[:, None]) * DV + dv[None, :], mask=mask_v[None, :],
                other=0.0).to(tl.float32)
    numerator = tl.dot(weights, v, input_precision=PRECISION) + inter[:, None] * q_C
    den = tl.sum(weights, axis=1) + inter * q_n
    normalizer = tl.maximum(tl.abs(den), tl.exp(-m_row)) + eps
    h = numerator / normalizer[:, None]
    tl.store(h_ptr + (seq_off + t[:, None]) * DV + dv[None, :], h.to(h_ptr.dtype.element_ty),
             mask=mask_v[None, :])
    if tile_v == 0:
        tl.store(mrow_ptr + seq_off + t, m_row)
        tl.store(den_ptr + seq_off + t, den)


def chunk_states_fw(k, v, i, b, initial_state, chunk_size):
    """States entering each chunk and the final state: C (B, H, NC+1, Dqk, Dv), n (B, H, NC+1,
    Dqk), m (B, H, NC+1), fp32. k, v contiguous (B, H, S, D); i, b fp32 (B, H, S);
    initial_state a full (C0, n0, m0) (the caller turns None into zeros)."""
    B, H, S, Dqk = k.shape
    Dv = v.shape[-1]
    NC = S // chunk_size
    C = kernel_buffer((B, H, NC + 1, Dqk, Dv), torch.float32, k.device)
    n = kernel_buffer((B, H, NC + 1, Dqk), torch.float32, k.device)
    m = kernel_buffer((B, H, NC + 1), torch.float32, k.device)
    BK, BV = head_dim_tile(Dqk), head_dim_tile(Dv)
    C0, n0, m0 = (x.to(torch.float32).contiguous() for x in initial_state)
    grid = (B * H, triton.cdiv(Dqk, BK), triton.cdiv(Dv, BV))
    _chunk_states_kernel[grid](
        k, v, i, b, C0, n0, m0, C, n, m,
        1.0 / math.sqrt(Dqk), S, Dqk, Dv, NC,
        L=chunk_size, BK=BK, BV=BV, PRECISION=dot_precision(k.dtype),
    )
    return C, n, m


def chunk_outputs_fw(q, k, v, i, b, states, chunk_size, eps):
    """h (B, H, S, Dv) in v's dtype, and per-row stabilizer m_t and denominator n_t . q_t (fp32)."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    NC = S // chunk_size
    C, n, m = states
    h = kernel_buffer((B, H, S, Dv), v.dtype, v.device)
    m_row = kernel_buffer((B, H, S), torch.float32, v.device)
    den = kernel_buffer((B, H, S), torch.float32, v.device)
    BK, BV = head_dim_tile(Dqk), head_dim_tile(Dv)
    grid = (B * H, NC, triton.cdiv(Dv, BV))
    _chunk_outputs_kernel[grid](
        q, k, v, i, b, C, n, m, h, m_row, den,
        1.0 / math.sqrt(Dqk), eps, S, Dqk, Dv, NC,
        L=chunk_size, BK=BK, BV=BV, PRECISION=dot_precision(q.dtype),
    )
    return h, m_row, den
