"""Public Triton chunkwise mLSTM: forward and exact backward kernels joined by one autograd.Function.

Forward saves the inputs, h, two floats per row (stabilizer m_t and denominator n_t . q_t) and
the states at chunk boundaries (fp32; with the chunk sizes of kernels/mlstm/chunking.py they
cost about half of q, k, v, h), so the backward starts at once with the gradient kernels. Without
an initial state, or without a gradient on the final state, the kernels skip those tensors.
"""

import math

import torch

from kernels.mlstm.chunkwise_bw import chunk_dkv, chunk_dq, chunk_state_grads, gate_grads
from kernels.mlstm.chunkwise_fw import chunk_outputs_fw, chunk_states_fw
from kernels.mlstm.gates import tile_log_forget
from kernels.mlstm.resets import document_index
from kernels.mlstm.padding import NO_DECAY, NO_WRITE, pad_time
from kernels.mlstm.tiling import MIN_DOT_TILE, seq_tile

EPS = 1e-6


class ChunkSizeError(ValueError):
    """The chunk size is unusable for the Triton kernels."""

    user_facing = True


def _check_chunk_size(chunk_size, on_gpu: bool) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 \
            or chunk_size & (chunk_size - 1):
        raise ChunkSizeError(
            f"chunk_size: the Triton mLSTM kernel needs a power of two (e.g. 64, or 'auto' through "
            f"kernels.mlstm_chunkwise), got {chunk_size!r}")
    if on_gpu and chunk_size < MIN_DOT_TILE:
        raise ChunkSizeError(
            f"chunk_size: on the GPU the Triton mLSTM kernel needs at least {MIN_DOT_TILE} "
            f"(tl.dot tiles), got {chunk_size}; use 'auto' or 64")


class _MLSTMChunkwiseTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, doc, chunk_size, tile):
        """C0, n0 None for the fresh state (m0 is then zeros)."""
        ctx.set_materialize_grads(False)          # an unused output's gradient stays None
        i32 = i.to(torch.float32).contiguous()
        f = f.contiguous()
        beta = tile_log_forget(f, doc, tile)
        states, C_final = chunk_states_fw(k, v, i32, beta, doc, C0, n0, m0, chunk_size, tile)
        h, m_row, den = chunk_outputs_fw(q, k, v, i32, beta, doc, states, chunk_size, tile, EPS)
        C, n, m = states
        ctx.save_for_backward(q, k, v, i32, beta, f, doc, h, m_row, den, C, n, m, C_final)
        ctx.chunk_size, ctx.tile, ctx.i_dtype, ctx.has_initial = chunk_size, tile, i.dtype, C0 is not None
        n_final, m_final = n[:, :, -1], m[:, :, -1]
        ctx.mark_non_differentiable(m_final)
        return h, C_final, n_final, m_final

    @staticmethod
    def backward(ctx, dh, dC_final, dn_final, _dm_final):
        q, k, v, i32, beta, f, doc, h, m_row, den, C, n, m, C_final = ctx.saved_tensors
        L, T = ctx.chunk_size, ctx.tile
        dh = torch.zeros_like(h) if dh is None else dh.to(h.dtype).contiguous()
        final_grads = None
        if dC_final is not None or dn_final is not None:
            final_grads = (
                torch.zeros_like(C_final) if dC_final is None else dC_final.to(torch.float32).contiguous(),
                torch.zeros_like(n[:, :, -1]) if dn_final is None else dn_final.to(torch.float32).contiguous(),
            )
        dq, qdq, normalizer, dden = chunk_dq(q, k, v, i32, beta, doc, h, dh, m_row, den, (C, n, m), L, T, EPS)
        dC, dn, dC0, dn0, cdc = chunk_state_grads(q, beta, doc, m_row, dh, normalizer, dden, (C, n, m), C_final,
                                                  final_grads, ctx.has_initial, L, T)
        dk, dv, kdk = chunk_dkv(q, k, v, i32, beta, doc, dh, m_row, normalizer, dden, m, (dC, dn), L, T)
        di, df = gate_grads(f, doc, qdq, kdk, cdc, L, T, ctx.i_dtype)
        return dq, dk, dv, di, df, dC0, dn0, None, None, None, None


def _pad_to_tiles(q, k, v, i, f, resets, tile):
    """Pad the time axis to whole sequence tiles with positions that leave the state unchanged
    (kernels/mlstm/padding.py); the last chunk may stay partial, so no more is needed."""
    pad = -q.shape[2] % tile
    if not pad:
        return q, k, v, i, f, resets
    q, k, v = (pad_time(x, pad, 0.0) for x in (q, k, v))
    i, f = pad_time(i, pad, NO_WRITE), pad_time(f, pad, NO_DECAY)
    if resets is not None:
        resets = torch.cat([resets, resets.new_zeros(resets.shape[0], pad)], dim=1)
    return q, k, v, i, f, resets


@torch.compiler.disable
def mlstm_chunkwise_triton(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64,
                           resets=None):
    """Chunkwise mLSTM on Triton (semantics of docs/INTERFACES.md, DESIGN.md sections 3 and 9).

    q, k (B, H, S, Dqk); v (B, H, S, Dv); i, f (B, H, S) gate pre-activations; any S (padded
    exactly to whole tiles of min(64, chunk_size) positions); chunk_size a power of two;
    resets (B, S) bool or None. Returns h (B, H, S, Dv) in v's dtype, and with
    return_final_state also the fp32 state (C, n, m). Gradients are exact with m detached,
    including the normalizer path and the initial C, n (m_0 gets none).
    """
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    _check_chunk_size(chunk_size, on_gpu=q.is_cuda)
    tile = seq_tile(chunk_size)
    k, v = k.to(q.dtype), v.to(q.dtype)
    q, k, v, i, f, resets = _pad_to_tiles(q, k, v, i, f, resets, tile)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    doc = None if resets is None else document_index(resets).to(torch.int32).contiguous()
    if initial_state is None:
        C0 = n0 = None
        m0 = torch.zeros(B, H, dtype=torch.float32, device=q.device)
    else:
        C0, n0, m0 = initial_state
        C0, n0 = (x.to(torch.float32).contiguous() for x in (C0, n0))
        m0 = m0.detach().to(torch.float32).contiguous()
    h, C, n, m = _MLSTMChunkwiseTriton.apply(q, k, v, i, f, C0, n0, m0, doc, chunk_size, tile)
    h = h[:, :, :S]
    return (h, (C, n, m)) if return_final_state else h


__all__ = ["mlstm_chunkwise_triton", "ChunkSizeError"]
