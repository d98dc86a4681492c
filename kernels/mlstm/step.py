"""One-token recurrent mLSTM step (DESIGN.md section 3), used by generation.

The state is always fp32 (float64 stays float64), whatever the input dtype, so that long
generations do not accumulate bf16 rounding in C and n.
"""

import math

import torch
import torch.nn.functional as F

from kernels.mlstm.reference import DEFAULT_EPS
from kernels.mlstm.segments import exp_from, fresh_state


def mlstm_step(q, k, v, i, f, state=None, eps=DEFAULT_EPS):
    """Advance the state by one token: q, k (B, H, Dqk), v (B, H, Dv), i, f (B, H).

    Returns (h (B, H, Dv) in the input dtype, (C, n, m)). `state=None` is the fresh state.
    """
    B, H, Dqk = q.shape
    Dv = v.shape[-1]
    in_dtype = v.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    k = k / math.sqrt(Dqk)
    if state is None:
        state = fresh_state((B, H), Dqk, Dv, dtype, q.device)
    C, n, m = (x.to(dtype) for x in state)
    log_decay = F.logsigmoid(f) + m.detach()
    m_new = torch.maximum(log_decay, i).detach()
    decay = exp_from(log_decay, m_new)
    write = torch.exp(i - m_new)
    C = decay[..., None, None] * C + write[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = decay[..., None] * n + write[..., None] * k
    numerator = (q[..., None, :] @ C)[..., 0, :]
    denominator = (q * n).sum(-1)
    h = numerator / (torch.maximum(denominator.abs(), torch.exp(-m_new)) + eps)[..., None]
    return h.to(in_dtype), (C, n, m_new)
