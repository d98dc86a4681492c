"""Exact padding of the time axis, so backends that need S to be a multiple of the chunk size
accept any S.

A padded position has q = k = v = 0, i~ = -inf (writes nothing and cannot raise the stabilizer:
m_t = max(log f + m_{t-1}, -inf) = m_{t-1}) and f~ = +inf (log f = logsigmoid(+inf) = 0: no
decay). The state after the padding is therefore exactly the state before it, at any m. The
peers' i~ = -25, f~ = +25 is not exact: it lifts m to -25 whenever m is below that.
"""

import functools
from typing import Callable

import torch

from kernels.mlstm.resets import reset_kwargs

NO_WRITE = float("-inf")
NO_DECAY = float("inf")


def pad_time(x: torch.Tensor, pad: int, value: float) -> torch.Tensor:
    """Pad the time axis (dim 2) of (B, H, S, ...) on the right with `value`."""
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[2] = pad
    return torch.cat([x, x.new_full(shape, value)], dim=2)


def with_exact_padding(fn: Callable) -> Callable:
    """Wrap a backend that needs S % chunk_size == 0 so that it takes any S (see module doc)."""

    @functools.wraps(fn)
    def padded(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64,
               resets=None):
        S = q.shape[2]
        pad = -S % chunk_size
        if pad:
            q, k, v = (pad_time(x, pad, 0.0) for x in (q, k, v))
            i, f = pad_time(i, pad, NO_WRITE), pad_time(f, pad, NO_DECAY)
            if resets is not None:                      # a padded position is never a reset
                resets = torch.cat([resets, resets.new_zeros(resets.shape[0], pad)], dim=1)
        out = fn(q, k, v, i, f, initial_state=initial_state,
                 return_final_state=return_final_state, chunk_size=chunk_size, **reset_kwargs(resets))
        if not pad:
            return out
        if return_final_state:
            return out[0][:, :, :S], out[1]
        return out[:, :, :S]

    return padded
