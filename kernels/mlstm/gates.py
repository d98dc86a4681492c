"""Gate preprocessing of the Triton chunkwise mLSTM: document ids and tile-local log forget.

The kernels never form the cumulative log forget of a whole chunk. They get beta, the cumulative
log sigmoid(f~) inside each sequence tile (T positions), and add whole tiles' totals one at a
time while walking over tiles: the log weight of source s for row t, b_t - b_s + i_s, becomes
R + beta_t - beta_s + i_s with R the sum of the totals of the tiles from s's tile up to t's.
No two large cumulative sums are subtracted, so at any chunk size a log weight is as exact as
within one tile (at chunk 1024 a chunk-wide fp32 cumsum would lose ~1e-3 in every weight of a
strongly forgetting head).

Document packing (DESIGN.md section 9, kernels/mlstm/resets.py): the kernels see document ids
doc_t = number of resets at or before t (int32 (B, S), shared by all heads): s and t interact only where doc_s == doc_t, and beta
restarts at every reset (beta at a reset is its own log f: the reset's forget gate decays the
fresh state, m = 0).
"""

import torch
import triton
import triton.language as tl

from kernels.mlstm.tiling import kernel_buffer, placeholder


@triton.jit
def log_sigmoid(x):
    """log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), log1p by its series where exp(-|x|) is tiny."""
    y = tl.exp(-tl.abs(x))
    log1p = tl.where(y < 1e-4, y * (1.0 - 0.5 * y), tl.log(1.0 + y))
    return tl.minimum(x, 0.0) - log1p


@triton.jit
def _tile_log_forget_kernel(f_ptr, doc_ptr, beta_ptr, S, H, T: tl.constexpr, HAS_RESETS: tl.constexpr):
    """One program per (batch*head, tile): beta_t = sum of log f_u over u <= t in t's tile (and
    t's document), as a masked (T, T) sum: exact segments, no scan carried across resets."""
    bh = tl.program_id(0)
    tile = tl.program_id(1)
    rows = tl.arange(0, T)
    t = tile * T + rows
    seq = bh.to(tl.int64) * S
    log_f = log_sigmoid(tl.load(f_ptr + seq + t).to(tl.float32))
    upto = rows[None, :] <= rows[:, None]
    if HAS_RESETS:
        doc = tl.load(doc_ptr + (bh // H).to(tl.int64) * S + t)
        upto = upto & (doc[None, :] == doc[:, None])
    beta = tl.sum(tl.where(upto, log_f[None, :], 0.0), axis=1)
    tl.store(beta_ptr + seq + t, beta)


def tile_log_forget(f: torch.Tensor, doc, tile: int) -> torch.Tensor:
    """beta (B, H, S) fp32 from forget pre-activations f (B, H, S), S a multiple of `tile`;
    `doc` the (B, S) document ids or None."""
    B, H, S = f.shape
    f = f.contiguous()
    beta = kernel_buffer((B, H, S), torch.float32, f.device)
    _tile_log_forget_kernel[(B * H, S // tile)](
        f, placeholder(f.device) if doc is None else doc, beta, S, H, T=tile, HAS_RESETS=doc is not None,
    )
    return beta
