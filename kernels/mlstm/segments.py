"""State passing across segments: summaries, their associative combine, the scan, and
segmented evaluation (DESIGN.md section 3, "State passing across segments").

A segment is summarised by its local final state from the *empty* start (C = 0, n = 0,
m = -inf) and its total log forget F. With m = -inf as the empty start, combining is exact,
stabilizer included: the true m after segment b from a start with stabilizer m_a is
max(F_b + m_a, m_b). (Starting summaries from m = 0 would instead give max(F_b, m_b) and bend
m, hence the eps term.) -inf is handled explicitly so that no NaN appears, even in gradients.

With resets (kernels/mlstm/resets.py) a segment that holds one drops whatever entered it: its
F is -inf (combine then ignores every earlier summary) and its local state is the one from the
fresh state at its last reset (m included, so the eps term stays exact).

Everything here is plain differentiable torch, so autograd carries gradients of the initial
states back into the summaries; context parallelism (kernels/mlstm/context_parallel.py) uses
the same functions across ranks. The stabilizer m carries no gradient (see reference.py).
"""

import math
from typing import Callable, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F

from kernels.errors import KernelInputError
from kernels.mlstm.resets import document_index, per_head, reset_kwargs
from kernels.mlstm.weighted_state import weighted_state_sum

NEG_INF = float("-inf")


class SegmentSummary(NamedTuple):
    """Local final state of a segment from the empty start, plus its total log forget.

    F: (...,) sum of log f over the segment; C: (..., Dqk, Dv); n: (..., Dqk); m: (...,),
    -inf for a segment that writes nothing.
    """

    F: torch.Tensor
    C: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def exp_from(log_weight: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """exp(log_weight - m), exactly 0 where log_weight is -inf (also when m is -inf).

    The masked branch never produces NaN gradients: torch.where sends zero gradient there.
    """
    empty = torch.isneginf(log_weight)
    shifted = torch.where(empty, torch.zeros_like(log_weight), log_weight - m)
    return torch.where(empty, torch.zeros_like(log_weight), torch.exp(shifted))


def segment_summary(k, v, i, f, resets=None) -> SegmentSummary:
    """Summary of each sequence in (B, H, S): one weighted matmul, computed in fp32 (fp64 stays fp64).

    k (B, H, S, Dqk) unscaled (scaled by 1/sqrt(Dqk) here, as inside the state); v (B, H, S, Dv);
    i, f (B, H, S) gate pre-activations; resets (B, S) bool or None. Source s reaches the
    segment end with log weight i_s + sum_{r > s} log f_r (only from the last document); the
    suffix sums come from a reversed cumsum so that no two large partial sums are subtracted at
    long S, and never cross a reset.
    """
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    i, f = i.to(dtype), f.to(dtype)                    # k, v stay as given (weighted_state_sum)
    log_f = F.logsigmoid(f)
    suffix_inclusive = torch.flip(torch.cumsum(torch.flip(log_f, [-1]), -1), [-1])
    suffix_after = torch.cat([suffix_inclusive[..., 1:], torch.zeros_like(log_f[..., :1])], dim=-1)
    log_w = suffix_after + i
    total = suffix_inclusive[..., 0]
    if resets is not None:
        doc = per_head(document_index(resets.to(k.device)), log_f)
        in_last = doc == doc[..., -1:]
        log_w = log_w.masked_fill(~in_last, NEG_INF)
        has_reset = (doc[..., -1] > 0).expand_as(total)
        # the fresh state entering the last document at its reset r: log weight sum_{t >= r} log f_t
        first_of_last = torch.argmax(in_last.to(torch.int32).expand_as(log_f), dim=-1, keepdim=True)
        fresh = torch.gather(suffix_inclusive, -1, first_of_last)[..., 0]
    m = log_w.detach().amax(dim=-1)
    if resets is not None:
        m = torch.where(has_reset, torch.maximum(m, fresh.detach()), m)
        total = total.masked_fill(has_reset, NEG_INF)
    weights = exp_from(log_w, m[..., None])
    C, n = weighted_state_sum(k, v, weights, 1.0 / math.sqrt(k.shape[-1]))
    return SegmentSummary(total, C, n, m)


def combine_summaries(a: SegmentSummary, b: SegmentSummary) -> SegmentSummary:
    """Summary of segment a followed by segment b (associative)."""
    log_a = b.F + a.m.detach()
    m = torch.maximum(log_a, b.m.detach()).detach()
    weight_a = exp_from(log_a, m)
    weight_b = exp_from(b.m.detach(), m)
    return SegmentSummary(
        a.F + b.F,
        weight_a[..., None, None] * a.C + weight_b[..., None, None] * b.C,
        weight_a[..., None] * a.n + weight_b[..., None] * b.n,
        m,
    )


def state_as_summary(state) -> SegmentSummary:
    """A state (C, n, m) seen as a summary with F = 0, so it can be the left operand of combine."""
    C, n, m = state
    return SegmentSummary(torch.zeros_like(m), C, n, m)


def apply_summary(state, summary: SegmentSummary):
    """State (C, n, m) after running a segment with this summary from `state`."""
    combined = combine_summaries(state_as_summary(state), summary)
    return combined.C, combined.n, combined.m


def fresh_state(batch_shape, Dqk, Dv, dtype=torch.float32, device=None):
    """The public fresh state C = 0, n = 0, m = 0 (docs/INTERFACES.md)."""
    return (
        torch.zeros(*batch_shape, Dqk, Dv, dtype=dtype, device=device),
        torch.zeros(*batch_shape, Dqk, dtype=dtype, device=device),
        torch.zeros(*batch_shape, dtype=dtype, device=device),
    )


def scan_summaries(
    summaries: Union[SegmentSummary, Sequence[SegmentSummary]], initial_state=None
):
    """States entering each segment (exclusive prefix scan), starting from `initial_state`.

    `summaries` is a list of P summaries or one summary stacked on a leading P dimension; the
    result has the same form (a list of (C, n, m), or (C, n, m) stacked on P). With
    `initial_state=None` the first segment enters the fresh state C = 0, n = 0, m = 0. The
    scan is sequential over P: P is small (segments per GPU or context-parallel ranks) and the
    per-step work is a few (Dqk, Dv) multiply-adds.
    """
    stacked = isinstance(summaries, SegmentSummary)
    if stacked:
        items = [SegmentSummary(*(x[p] for x in summaries)) for p in range(summaries.F.shape[0])]
    else:
        items = list(summaries)
    if not items:
        raise KernelInputError("scan_summaries: got no summaries; pass at least one segment")
    first = items[0]
    if initial_state is None:
        Dqk, Dv = first.C.shape[-2:]
        state = fresh_state(first.m.shape, Dqk, Dv, first.C.dtype, first.C.device)
    else:
        state = tuple(x.to(first.C.dtype) for x in initial_state)
    entering = []
    for summary in items:
        entering.append(state)
        state = apply_summary(state, summary)
    if stacked:
        return tuple(torch.stack(parts) for parts in zip(*entering))
    return entering


def _split_segments(x: torch.Tensor, P: int) -> torch.Tensor:
    """(B, H, S, ...) -> (B*P, H, S/P, ...), segment p of batch b at row b*P + p."""
    B, H, S = x.shape[:3]
    x = x.reshape(B, H, P, S // P, *x.shape[3:]).transpose(1, 2)
    return x.reshape(B * P, H, S // P, *x.shape[4:])


def _merge_segments(x: torch.Tensor, B: int, P: int) -> torch.Tensor:
    """Inverse of _split_segments."""
    H, L = x.shape[1], x.shape[2]
    x = x.reshape(B, P, H, L, *x.shape[3:]).transpose(1, 2)
    return x.reshape(B, H, P * L, *x.shape[4:])


def mlstm_segmented(
    q, k, v, i, f, num_segments: int, sequence_fn: Callable, initial_state=None,
    return_final_state: bool = False, chunk_size: int = 64, resets=None,
):
    """Evaluate `sequence_fn` on P segments in parallel with exact state passing.

    Reshapes (B, H, S) into (B*P, H, S/P), summarises every segment, scans the summaries to get
    each segment's true initial state, and recomputes each segment from it with `sequence_fn`
    (any backend with the kernels signature). Equals the unsegmented result to rounding,
    including the final state and all gradients; useful when B*H alone cannot fill a GPU.
    """
    P = int(num_segments)
    B, H, S = i.shape
    if P < 1 or S % P != 0:
        raise KernelInputError(
            f"segments={num_segments}: the sequence length S={S} must split into equal segments; "
            f"choose a number of segments that divides S (or segments='auto')"
        )
    if P == 1:
        return sequence_fn(q, k, v, i, f, initial_state=initial_state,
                           return_final_state=return_final_state, chunk_size=chunk_size,
                           **reset_kwargs(resets))
    q_s, k_s, v_s, i_s, f_s = (_split_segments(x, P) for x in (q, k, v, i, f))
    resets_s = None if resets is None else resets.reshape(B * P, S // P)
    local = segment_summary(k_s, v_s, i_s, f_s, resets_s)
    per_segment = SegmentSummary(*(x.reshape(B, P, *x.shape[1:]).transpose(0, 1) for x in local))
    entering = scan_summaries(per_segment, initial_state)                  # each (P, B, H, ...)
    entering = tuple(x.transpose(0, 1).reshape(B * P, *x.shape[2:]) for x in entering)
    h, final = sequence_fn(q_s, k_s, v_s, i_s, f_s, initial_state=entering,
                           return_final_state=True, chunk_size=chunk_size, **reset_kwargs(resets_s))
    h = _merge_segments(h, B, P)
    if not return_final_state:
        return h
    last = tuple(x.reshape(B, P, *x.shape[1:])[:, -1] for x in final)
    return h, last
