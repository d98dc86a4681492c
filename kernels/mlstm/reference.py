"""Float64-capable torch references of the mLSTM cell (DESIGN.md section 3).

These two functions are the ground truth for every kernel test in the project, and autograd
through them is the gradient reference. They favour plainness over speed: the recurrent form
is a Python loop over time, the parallel form materialises the (S, S) decay matrix.

Conventions (docs/INTERFACES.md): q, k (B, H, S, Dqk); v (B, H, S, Dv); i, f (B, H, S) gate
pre-activations; log f = logsigmoid(f); k is scaled by 1/sqrt(Dqk) inside the state; state
C (B, H, Dqk, Dv) (so h = q^T C), n (B, H, Dqk), m (B, H); no initial state means the fresh
state C = 0, n = 0, m = 0. `resets` (B, S) bool replaces the state entering a position by the
fresh state (kernels/mlstm/resets.py).

Why the stabilizer m may be detached: every term of the numerator and of the denominator
carries the same factor exp(-m_t), so h_t = N_t / (max(|D_t|, 1) + eps * exp(m_t)) with the
unstabilised N_t, D_t. m_t only reaches h_t through the eps term, so its gradient is
negligible (exactly zero for eps = 0); `detach_stabilizer=False` keeps it for the test that
proves this.
"""

import math

import torch
import torch.nn.functional as F

from kernels.mlstm.resets import document_index, per_head, restarted_cumsum

DEFAULT_EPS = 1e-6


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (the reference precision); anything narrower runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _exp_from(log_weight: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """exp(log_weight - m), exactly 0 where log_weight is -inf (also when m is -inf)."""
    empty = torch.isneginf(log_weight)
    shifted = torch.where(empty, torch.zeros_like(log_weight), log_weight - m)
    return torch.where(empty, torch.zeros_like(log_weight), torch.exp(shifted))


def _initial_state(initial_state, B, H, Dqk, Dv, dtype, device):
    if initial_state is None:
        return (
            torch.zeros(B, H, Dqk, Dv, dtype=dtype, device=device),
            torch.zeros(B, H, Dqk, dtype=dtype, device=device),
            torch.zeros(B, H, dtype=dtype, device=device),
        )
    C0, n0, m0 = initial_state
    return C0.to(dtype), n0.to(dtype), m0.to(dtype)


def mlstm_recurrent_reference(
    q, k, v, i, f, initial_state=None, return_final_state=False,
    eps=DEFAULT_EPS, detach_stabilizer=True, resets=None,
):
    """Step-by-step mLSTM recurrence of DESIGN.md section 3 (a Python loop over time); at a
    reset the state is literally replaced by the fresh one."""
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    dtype = _compute_dtype(q)
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    k = k / math.sqrt(Dqk)
    log_f = F.logsigmoid(f)
    C, n, m = _initial_state(initial_state, B, H, Dqk, Dv, dtype, q.device)
    outputs = []
    for t in range(S):
        if resets is not None:
            keep = ~resets[:, t].to(q.device)[:, None]                     # (B, 1)
            C = torch.where(keep[..., None, None], C, torch.zeros_like(C))
            n = torch.where(keep[..., None], n, torch.zeros_like(n))
            m = torch.where(keep, m, torch.zeros_like(m))
        m_new = torch.maximum(log_f[:, :, t] + m, i[:, :, t])
        if detach_stabilizer:
            m_new = m_new.detach()
        decay = _exp_from(log_f[:, :, t] + m, m_new)
        write = torch.exp(i[:, :, t] - m_new)
        k_t, v_t, q_t = k[:, :, t], v[:, :, t], q[:, :, t]
        C = decay[..., None, None] * C + write[..., None, None] * (k_t[..., :, None] * v_t[..., None, :])
        n = decay[..., None] * n + write[..., None] * k_t
        m = m_new
        numerator = torch.einsum("bhd,bhde->bhe", q_t, C)
        denominator = (q_t * n).sum(-1)
        outputs.append(numerator / (torch.maximum(denominator.abs(), torch.exp(-m)) + eps)[..., None])
    h = torch.stack(outputs, dim=2)
    return (h, (C, n, m)) if return_final_state else h


def mlstm_parallel_reference(
    q, k, v, i, f, initial_state=None, return_final_state=False,
    eps=DEFAULT_EPS, detach_stabilizer=True, resets=None,
):
    """Stabilised quadratic (parallel) mLSTM with initial-state contributions and final state.

    Unrolling the recurrence, source s contributes to position t with log weight
    D[t, s] = b_t - b_s + i_s (b = cumulative log forget) and the initial state with
    b_t + m_0; m_t is the maximum of these, which is exactly the recurrent stabilizer.
    With resets, sources reach only rows of their own document, b restarts at every reset, and
    a later document's entering state is the fresh one (log weight b_t + 0, C = n = 0).
    """
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    dtype = _compute_dtype(q)
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    k = k / math.sqrt(Dqk)
    C0, n0, m0 = _initial_state(initial_state, B, H, Dqk, Dv, dtype, q.device)
    log_f = F.logsigmoid(f)
    visible = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    first_document = torch.ones_like(log_f, dtype=torch.bool)
    if resets is None:
        b = torch.cumsum(log_f, dim=-1)
    else:
        b = restarted_cumsum(log_f, per_head(resets.to(q.device), log_f))
        doc = per_head(document_index(resets.to(q.device)), log_f)
        visible = visible & (doc[..., :, None] == doc[..., None, :])
        first_document = (doc == 0).expand_as(log_f)
    log_d = (b[..., :, None] - b[..., None, :] + i[..., None, :]).masked_fill(~visible, float("-inf"))
    entering_m = torch.where(first_document, m0[..., None].expand_as(b), torch.zeros_like(b))
    log_init = b + entering_m
    m = torch.maximum(log_init, log_d.amax(dim=-1))
    if detach_stabilizer:
        m = m.detach()
    weights = _exp_from(log_d, m[..., None])
    init_weight = _exp_from(log_init, m) * first_document          # a fresh state has C = n = 0
    scores = (q @ k.transpose(-1, -2)) * weights
    numerator = scores @ v + init_weight[..., None] * (q @ C0)
    denominator = scores.sum(-1) + init_weight * (q @ n0[..., None])[..., 0]
    h = numerator / (torch.maximum(denominator.abs(), torch.exp(-m)) + eps)[..., None]
    if not return_final_state:
        return h
    last = weights[:, :, -1, :]                       # (B, H, S): weight of each source at the end
    C = (k * last[..., None]).transpose(-1, -2) @ v + init_weight[..., -1, None, None] * C0
    n = (k * last[..., None]).sum(-2) + init_weight[..., -1, None] * n0
    return h, (C, n, m[..., -1])
