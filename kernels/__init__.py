"""Chunkwise mLSTM kernels (Triton + float64 torch reference) and state passing.

Public API (docs/INTERFACES.md):
    h = mlstm_chunkwise(q, k, v, i, f, initial_state=None, return_final_state=False,
                        chunk_size="auto", backend="auto", segments="auto", resets=None)
    h_t, state = mlstm_step(q_t, k_t, v_t, i_t, f_t, state)
    list_mlstm_backends()
"""

import torch

from kernels.errors import BackendUnavailableError, KernelError, KernelInputError, UnknownBackendError
from kernels.mlstm.chunking import choose_chunk_size, resolve_chunk_size
from kernels.mlstm.backends import (
    get_mlstm_backend,
    list_mlstm_backends,
    register_mlstm_backend,
    resolve_mlstm_backend,
)
from kernels.mlstm.segments import (
    SegmentSummary,
    apply_summary,
    combine_summaries,
    mlstm_segmented,
    scan_summaries,
    segment_summary,
)
from kernels.mlstm.resets import reset_kwargs
from kernels.mlstm.step import mlstm_step as _mlstm_step
from kernels.mlstm.validation import check_sequence_inputs, check_step_inputs

__all__ = [
    "mlstm_chunkwise", "mlstm_step", "list_mlstm_backends", "register_mlstm_backend",
    "get_mlstm_backend", "choose_chunk_size", "choose_num_segments", "segment_summary", "combine_summaries",
    "scan_summaries", "apply_summary", "mlstm_segmented", "SegmentSummary",
    "KernelError", "KernelInputError", "UnknownBackendError", "BackendUnavailableError",
]

# Segments are worth it only while B*H recurrences leave the GPU's SMs idle, and only while each
# segment keeps enough chunks to amortise its summary and recompute.
_TARGET_RECURRENCES_PER_SM = 2
_MIN_CHUNKS_PER_SEGMENT = 8


def choose_num_segments(B: int, H: int, S: int, chunk_size: int, device: torch.device) -> int:
    """Segments per sequence for segments="auto": 1 on CPU; on CUDA the largest power of two
    that brings B*H*P up to about two recurrences per SM while every segment keeps at least
    8 whole chunks."""
    if device.type != "cuda":
        return 1
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    best = 1
    P = 2
    while B * H * P <= _TARGET_RECURRENCES_PER_SM * sm_count:
        if S % (P * chunk_size) != 0 or S // P < _MIN_CHUNKS_PER_SEGMENT * chunk_size:
            break
        best = P
        P *= 2
    return best


def _num_segments(segments, B, H, S, chunk_size, device) -> int:
    if segments == "auto":
        return choose_num_segments(B, H, S, chunk_size, device)
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise KernelInputError(f"segments: expected 'auto' or a positive int, got {segments!r}")
    return segments


def mlstm_chunkwise(
    q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size="auto",
    backend="auto", segments="auto", resets=None,
):
    """mLSTM over whole sequences (DESIGN.md section 3).

    q, k (B, H, S, Dqk); v (B, H, S, Dv); i, f (B, H, S) gate pre-activations (they may be
    kept in fp32 while q, k, v are bf16). Returns h (B, H, S, Dv) in v's dtype, and with
    `return_final_state` also the fp32 state (C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H)).
    Any S works (partial chunks are padded exactly). `chunk_size` "auto" takes the rule of
    kernels/mlstm/chunking.py (from the head dims; 1024 at head dim 512). `segments` splits each
    sequence into P segments with exact state passing ("auto": only on CUDA when B*H is too
    small to fill it).
    `resets` (B, S) bool: True where the state entering a position is replaced by the fresh
    state (packed documents, kernels/mlstm/resets.py); no gradient crosses a reset.
    """
    check_sequence_inputs(q, k, v, i, f, initial_state, chunk_size, resets)
    B, H, S, _ = q.shape
    chunk_size = resolve_chunk_size(chunk_size, q.shape[-1], v.shape[-1], S)
    name = resolve_mlstm_backend(backend, q.device)
    fn = get_mlstm_backend(name)
    P = _num_segments(segments, B, H, S, chunk_size, q.device)
    if P == 1:
        return fn(q, k, v, i, f, initial_state=initial_state,
                  return_final_state=return_final_state, chunk_size=chunk_size, **reset_kwargs(resets))
    return mlstm_segmented(q, k, v, i, f, P, fn, initial_state=initial_state,
                           return_final_state=return_final_state, chunk_size=chunk_size,
                           resets=resets)


def mlstm_step(q, k, v, i, f, state=None):
    """One token of the recurrent form: q, k (B, H, Dqk), v (B, H, Dv), i, f (B, H).

    Returns (h (B, H, Dv), (C, n, m)); `state=None` is the fresh state C = 0, n = 0, m = 0.
    """
    check_step_inputs(q, k, v, i, f, state)
    return _mlstm_step(q, k, v, i, f, state)
