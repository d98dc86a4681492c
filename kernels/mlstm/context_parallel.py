"""Context parallelism for the mLSTM: exact state passing across ranks (LASP-2 style).

Each rank of `cp_group` holds one contiguous slice of every sequence, in rank order. Per mLSTM
layer (DESIGN.md section 3, "State passing across segments"):

1. summarise the local slice: its final state from the empty start and its total log forget
   (`segment_summary`, fp32, size B*H*(Dqk*Dv + Dqk + 2): independent of the sequence length);
2. all-gather the summaries of every rank in one collective (`all_gather_differentiable`);
3. scan the summaries locally to get the state entering this rank's slice;
4. run the chunkwise kernel on the slice from that initial state.

Autograd carries the gradient of the initial state back through the scan and the all-gather,
whose backward is one reduce-scatter: one collective forward and one backward per layer.
The causal conv in front of the cell needs the last few inputs of the previous rank; that is
`exchange_conv_halo`.

Direction. With `reverse=True` the caller's tensors are already flipped locally (a backward
block runs the same code on flip(x)); the global order of slices is then reversed too, so state
and halo come from the *next* rank. Outputs are in the caller's (flipped) order.

Every rank must execute the same collectives: the scan always runs over all P summaries and
the result is selected by position, so the all-gather's backward is reached on every rank
(also on the first, whose initial state is the fresh one), and the backward never deadlocks.
Works with any torch.distributed backend that has all-gather and reduce-scatter (gloo, NCCL).
"""

import torch
import torch.distributed as dist

from kernels import mlstm_chunkwise
from kernels.errors import KernelInputError
from kernels.mlstm.segments import SegmentSummary, scan_summaries, segment_summary
from kernels.mlstm.validation import check_sequence_inputs

# torch 2.13 renamed the flat-tensor collectives (the old names warn); older torch has only those.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _AllGather(torch.autograd.Function):
    """All-gather on a new leading dim; backward sums each rank's slice of the gradient back
    to its producer (reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        ctx.shape = x.shape
        size = dist.get_world_size(group=group)
        flat = x.contiguous().reshape(-1)           # flat buffers: what every backend accepts
        out = flat.new_empty(size * flat.numel())
        _all_gather(out, flat, group=group)
        return out.view((size,) + tuple(x.shape))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat = grad.contiguous().reshape(-1)
        out = flat.new_empty(flat.numel() // grad.shape[0])
        _reduce_scatter(out, flat, group=ctx.group)
        return out.view(ctx.shape), None


@torch.compiler.disable
def all_gather_differentiable(x: torch.Tensor, group) -> torch.Tensor:
    """(...) on each rank -> (P, ...) with rank r's tensor at index r; differentiable."""
    return _AllGather.apply(x, group)


def _cp_size_and_rank(cp_group):
    if cp_group is None:
        return 1, 0
    return dist.get_world_size(group=cp_group), dist.get_rank(group=cp_group)


def _pack(summary: SegmentSummary, local_len: int) -> torch.Tensor:
    """One flat buffer per rank: F, C, n, m (detached: the stabilizer carries no gradient) and
    the local length, so that ranks with different lengths are caught after the gather."""
    parts = [summary.F, summary.C, summary.n, summary.m.detach()]
    length = summary.F.new_full((1,), float(local_len))
    return torch.cat([p.reshape(-1) for p in parts] + [length])


def _unpack(flat: torch.Tensor, like: SegmentSummary) -> SegmentSummary:
    """(P, numel) -> summary stacked on P, shaped like `like`."""
    P = flat.shape[0]
    pieces, offset = [], 0
    for ref in like:
        numel = ref.numel()
        pieces.append(flat[:, offset:offset + numel].reshape(P, *ref.shape))
        offset += numel
    return SegmentSummary(*pieces)


_checked_lengths = set()


def _check_equal_lengths(lengths: torch.Tensor, local_len: int, cp_group) -> None:
    """All ranks raise together (they all see the gathered lengths). Reading them back is a
    host sync, so on CUDA each (group, length) pair is checked once, not at every layer."""
    key = (id(cp_group), local_len)
    if lengths.is_cuda and key in _checked_lengths:
        return
    values = [int(x) for x in lengths.tolist()]
    if len(set(values)) > 1:
        raise KernelInputError(
            f"context parallelism: the local sequence length differs between ranks ({values}); "
            f"every rank must hold an equal contiguous slice (split the global sequence with "
            f"pretrain.parallel.split_sequence_for_cp)"
        )
    _checked_lengths.add(key)


def mlstm_context_parallel(
    q, k, v, i, f, cp_group, reverse: bool = False, chunk_size: int = 64, backend: str = "auto",
    resets=None,
):
    """mLSTM over a sequence split into contiguous slices across `cp_group` -> h (B, H, S_local, Dv).

    Equals slicing `mlstm_chunkwise` on the full sequence (outputs and gradients of q, k, v, i, f
    to rounding); the global sequence starts from the fresh state. `cp_group=None` or a
    one-rank group runs `mlstm_chunkwise` directly. `resets` (B, S_local) bool: this slice's
    state resets (in the caller's order, so already flipped with the tensors when `reverse`); a
    slice holding one cuts every earlier slice off (its summary's F is -inf).
    """
    check_sequence_inputs(q, k, v, i, f, None, chunk_size, resets)
    cp_size, cp_rank = _cp_size_and_rank(cp_group)
    if cp_size == 1:
        return mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size, backend=backend, resets=resets)
    local = segment_summary(k, v, i, f, resets)
    gathered = all_gather_differentiable(_pack(local, q.shape[2]), cp_group)
    _check_equal_lengths(gathered[:, -1].detach(), q.shape[2], cp_group)
    summaries = _unpack(gathered[:, :-1], local)
    position = cp_rank
    if reverse:
        summaries = SegmentSummary(*(torch.flip(x, [0]) for x in summaries))
        position = cp_size - 1 - cp_rank
    entering = scan_summaries(summaries)              # (P, ...) states entering each slice
    initial_state = tuple(x[position] for x in entering)
    return mlstm_chunkwise(q, k, v, i, f, initial_state=initial_state, chunk_size=chunk_size,
                           backend=backend, resets=resets)


def exchange_conv_halo(x: torch.Tensor, halo_len: int, cp_group, reverse: bool = False) -> torch.Tensor:
    """The `halo_len` inputs that precede this rank's slice: x (B, S_local, C) -> (B, halo_len, C).

    Forward direction: the last `halo_len` positions of the previous rank, zeros on the first
    rank. `reverse=True` (x flipped locally): the last positions of the next rank's flipped x,
    zeros on the last rank. Differentiable: the halo's gradient flows back to its producer.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise KernelInputError(f"exchange_conv_halo: x must be (B, S_local, C), got {getattr(x, 'shape', type(x))}")
    if isinstance(halo_len, bool) or not isinstance(halo_len, int) or halo_len < 0:
        raise KernelInputError(f"exchange_conv_halo: halo_len must be a non-negative int, got {halo_len!r}")
    B, S, C = x.shape
    cp_size, cp_rank = _cp_size_and_rank(cp_group)
    if cp_size == 1 or halo_len == 0:
        return x.new_zeros(B, halo_len, C)
    if S < halo_len:
        raise KernelInputError(
            f"exchange_conv_halo: the local slice has {S} positions but the conv needs {halo_len} "
            f"from the neighbouring rank; use a context length of at least {halo_len} per rank"
        )
    tails = all_gather_differentiable(x[:, S - halo_len:], cp_group)      # (P, B, halo, C)
    zeros = tails.new_zeros((1,) + tuple(tails.shape[1:]))
    # Select from a zero-padded stack rather than returning fresh zeros on the edge rank, so the
    # gather's backward (a collective) runs on every rank.
    if reverse:
        return torch.cat([tails, zeros])[cp_rank + 1]
    return torch.cat([zeros, tails])[cp_rank]


def cp_summary_bytes(B: int, H: int, Dqk: int, Dv: int, cp_size: int, element_size: int = 4) -> int:
    """Bytes one rank receives from the summary all-gather of one mLSTM layer (forward).

    Independent of the sequence length: P buffers of B*H*(Dqk*Dv + Dqk + 2) + 1 elements
    (F, C, n, m per head and one length entry), fp32 by default. The backward reduce-scatter
    moves the same amount.
    """
    return cp_size * (B * H * (Dqk * Dv + Dqk + 2) + 1) * element_size
