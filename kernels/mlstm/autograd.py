"""Public Triton chunkwise mLSTM: forward and exact backward kernels joined by one autograd.Function.

Forward saves the inputs, h and two floats per row (stabilizer m_t and denominator n_t . q_t);
the per-chunk states are recomputed in backward (one cheap recurrent kernel) instead of being
kept for the whole forward-backward window.
"""

import math

import torch
import torch.nn.functional as F

from kernels.mlstm.chunkwise_bw import chunk_input_grads, chunk_state_grads, gate_grads, output_cotangents
from kernels.mlstm.chunkwise_fw import chunk_outputs_fw, chunk_states_fw

EPS = 1e-6


class ChunkSizeError(ValueError):
    """The sequence length is not a multiple of the chunk size, or the chunk size is unusable."""

    user_facing = True


def _check_chunking(S: int, chunk_size: int, on_gpu: bool) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 \
            or chunk_size & (chunk_size - 1):
        raise ChunkSizeError(
            f"chunk_size: the Triton mLSTM kernel needs a power of two (e.g. 64), got {chunk_size!r}")
    if on_gpu and chunk_size < 16:
        raise ChunkSizeError(
            f"chunk_size: on the GPU the Triton mLSTM kernel needs at least 16 (tl.dot tiles), "
            f"got {chunk_size}; use 64")
    if S % chunk_size != 0:
        raise ChunkSizeError(
            f"sequence length {S} is not a multiple of chunk_size {chunk_size}; pad the sequence "
            f"(kernels.mlstm_chunkwise pads automatically) or choose a context length that is a "
            f"multiple of {chunk_size}")


def _chunk_cumulative_log_forget(f: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """b_t: sum of log sigmoid(f~) from the start of t's chunk up to t (inclusive), fp32."""
    B, H, S = f.shape
    log_f = F.logsigmoid(f.to(torch.float32))
    return log_f.reshape(B, H, S // chunk_size, chunk_size).cumsum(-1).reshape(B, H, S).contiguous()


class _MLSTMChunkwiseTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        i32 = i.to(torch.float32).contiguous()
        b = _chunk_cumulative_log_forget(f, chunk_size)
        C, n, m = chunk_states_fw(k, v, i32, b, (C0, n0, m0), chunk_size)
        h, m_row, den = chunk_outputs_fw(q, k, v, i32, b, (C, n, m), chunk_size, EPS)
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, m_row, den)
        ctx.chunk_size = chunk_size
        C_final, n_final, m_final = C[:, :, -1].clone(), n[:, :, -1].clone(), m[:, :, -1].clone()
        ctx.mark_non_differentiable(m_final)
        return h, C_final, n_final, m_final

    @staticmethod
    def backward(ctx, dh, dC_final, dn_final, _dm_final):
        q, k, v, i, f, C0, n0, m0, h, m_row, den = ctx.saved_tensors
        L = ctx.chunk_size
        if dh is None:
            dh = torch.zeros_like(h)
        dC_final = torch.zeros_like(C0) if dC_final is None else dC_final.to(torch.float32).contiguous()
        dn_final = torch.zeros_like(n0) if dn_final is None else dn_final.to(torch.float32).contiguous()
        i32 = i.to(torch.float32).contiguous()
        b = _chunk_cumulative_log_forget(f, L)
        states = chunk_states_fw(k, v, i32, b, (C0, n0, m0), L)
        dh = dh.contiguous()
        normalizer, dden = output_cotangents(dh, h, den, m_row, EPS)
        dC, dn = chunk_state_grads(q, b, m_row, dh, normalizer, dden, states[2], dC_final, dn_final, L)
        dq, dk, dv, qdq, kdk = chunk_input_grads(q, k, v, i32, b, m_row, dh, normalizer, dden, states,
                                                 (dC, dn), L)
        di, df = gate_grads(f, qdq, kdk, (states[0][:, :, -1], states[1][:, :, -1]), (dC_final, dn_final))
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), di.to(i.dtype), df.to(f.dtype),
                dC[:, :, 0], dn[:, :, 0], None, None)


@torch.compiler.disable
def mlstm_chunkwise_triton(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64,
                           resets=None):
    """Chunkwise mLSTM on Triton (semantics of docs/INTERFACES.md, DESIGN.md section 3).

    q, k (B, H, S, Dqk); v (B, H, S, Dv); i, f (B, H, S) gate pre-activations; S a multiple of
    chunk_size (a power of two). Returns h (B, H, S, Dv) in v's dtype, and with
    return_final_state also the fp32 state (C, n, m). Gradients are exact with m detached,
    including the normalizer path and the initial C, n (m_0 gets none).
    """
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    if resets is not None:
        from kernels.errors import BackendUnavailableError
        raise BackendUnavailableError(
            "mLSTM backend 'triton' does not take state resets (packed documents) yet; "
            "use backend='torch' or data.packing=false")
    _check_chunking(S, chunk_size, on_gpu=q.is_cuda)
    if initial_state is None:
        C0 = torch.zeros(B, H, Dqk, Dv, dtype=torch.float32, device=q.device)
        n0 = torch.zeros(B, H, Dqk, dtype=torch.float32, device=q.device)
        m0 = torch.zeros(B, H, dtype=torch.float32, device=q.device)
    else:
        C0, n0, m0 = initial_state
        C0, n0 = (x.to(torch.float32).contiguous() for x in (C0, n0))
        m0 = m0.detach().to(torch.float32).contiguous()
    h, C, n, m = _MLSTMChunkwiseTriton.apply(q, k, v, i, f, C0, n0, m0, chunk_size)
    return (h, (C, n, m)) if return_final_state else h


__all__ = ["mlstm_chunkwise_triton", "ChunkSizeError"]
