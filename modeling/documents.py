"""Packed documents as the blocks see them (DESIGN.md section 9), worked out once per forward.

`document_starts` (B, S) bool marks the first position of every document of a packed row. Each
recurrence resets there so that every document equals itself run alone: the mLSTM state (the
kernels' `resets`), the sLSTM state, and the causal conv (no input of an earlier document
reaches a later one). A right-to-left pass (bidirectional and RC variants) meets the documents
from their last token, so it resets at every document's *end*, in the flipped order.

Under context parallelism a rank holds one contiguous slice, but a document may begin on one
rank and end on another, and the conv looks K-1 positions across the slice edge. The starts are
therefore all-gathered once per forward (B * S bytes, tiny against the activations), and every
quantity below is read off the global view and sliced back to this rank.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from modeling.errors import ModelInputError


class PassResets(NamedTuple):
    """Where one pass over this rank's slice resets, in that pass's own order.

    state: (B, S) bool, True where the recurrent state entering a position is the fresh one.
    conv_visible: (K, B, S) bool; conv_visible[j][b, t] says whether the input j positions
    before t (in pass order, halo included) belongs to t's document; conv_visible[0] is all True.
    """

    state: torch.Tensor
    conv_visible: torch.Tensor


class BlockResets(NamedTuple):
    """What a block wrapper hands its passes: `forward` for left-to-right, `reverse` for
    right-to-left (each None when nothing is packed)."""

    forward: Optional[PassResets]
    reverse: Optional[PassResets]


def check_document_starts(document_starts, input_ids) -> None:
    """One clear error for a wrong `document_starts` (it is user input to the model)."""
    if document_starts is None:
        return
    if not isinstance(document_starts, torch.Tensor):
        raise ModelInputError(f"document_starts: expected a bool tensor (B, S) like input_ids, got "
                              f"{type(document_starts).__name__}")
    if document_starts.dtype != torch.bool:
        raise ModelInputError(f"document_starts: expected dtype torch.bool (True at each document's first "
                              f"token), got {document_starts.dtype}")
    if tuple(document_starts.shape) != tuple(input_ids.shape):
        raise ModelInputError(f"document_starts: expected shape (B, S) = {tuple(input_ids.shape)} like "
                              f"input_ids, got {tuple(document_starts.shape)}")
    if document_starts.device != input_ids.device:
        raise ModelInputError(f"document_starts: on {document_starts.device}, but input_ids is on "
                              f"{input_ids.device}")


def gather_sequence(x: torch.Tensor, cp_group) -> torch.Tensor:
    """(B, S_local) on every rank -> (B, S_global), slices in rank order (not differentiable)."""
    if cp_group is None:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group=cp_group))]
    dist.all_gather(parts, x.contiguous(), group=cp_group)
    return torch.cat(parts, dim=1)


class DocumentLayout:
    """Document boundaries of this rank's slice: resets for both pass directions, and the
    per-position document facts that positions and the sequence index need.

    `document_starts=None` means one document per row (the whole global sequence): then no
    block resets anything (`packed` is False) and the facts are those of one long document.
    """

    def __init__(self, document_starts: Optional[torch.Tensor], batch: int, local_len: int,
                 cp_group, conv_kernel_size: int, device):
        self.cp_group, self.kernel_size = cp_group, conv_kernel_size
        self.offset, self.local_len, self.total_len = 0, local_len, local_len
        if cp_group is not None:
            import torch.distributed as dist
            self.offset = dist.get_rank(group=cp_group) * local_len
            self.total_len = dist.get_world_size(group=cp_group) * local_len
        self.packed = document_starts is not None
        if self.packed:
            starts = gather_sequence(document_starts.to(torch.uint8), cp_group).bool()
        else:
            starts = torch.zeros(batch, self.total_len, dtype=torch.bool, device=device)
        starts[:, 0] = True                       # the sequence's own start
        self.starts = starts                      # (B, T) global
        self.ends = torch.cat([starts[:, 1:], torch.ones_like(starts[:, :1])], dim=1)
        positions = torch.arange(self.total_len, device=device).expand_as(starts)
        first = torch.cummax(torch.where(starts, positions, 0), dim=1).values
        last = torch.flip(torch.cummin(torch.flip(torch.where(self.ends, positions, self.total_len), [1]),
                                       dim=1).values, [1])
        self._first = first                       # global facts, sliced on demand
        self._since_start = positions - first
        self._to_end = last - positions

    # -- per-position facts of this rank's slice ----------------------------------------------
    def _local(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.offset:self.offset + self.local_len]

    @property
    def since_start(self) -> torch.Tensor:
        """(B, S) positions since the document's first token (0 there)."""
        return self._local(self._since_start)

    @property
    def to_end(self) -> torch.Tensor:
        """(B, S) positions until the document's last token (0 there)."""
        return self._local(self._to_end)

    def running_count(self, flags: torch.Tensor) -> torch.Tensor:
        """Inclusive count of `flags` (B, S local) since the start of each position's document,
        across ranks under context parallelism."""
        flags = gather_sequence(flags.long(), self.cp_group)
        count = torch.cumsum(flags, dim=1)
        base = torch.gather(count - flags, 1, self._first)        # the count before the document
        return self._local(count - base)

    # -- resets of the two pass directions ----------------------------------------------------
    def forward_resets(self) -> Optional[PassResets]:
        """Left-to-right pass: reset at every document start; None when nothing is packed."""
        if not self.packed:
            return None
        K = self.kernel_size
        lo = self.offset - (K - 1)
        window = self.starts[:, max(lo, 0):self.offset + self.local_len]
        if lo < 0:                                          # before the sequence: the conv's zeros
            window = torch.cat([window.new_zeros(window.shape[0], -lo), window], dim=1)
        return PassResets(self._local(self.starts), _conv_visibility(window, K, self.local_len))

    def reverse_resets(self) -> Optional[PassResets]:
        """Right-to-left pass, in its flipped order: reset at every document end."""
        if not self.packed:
            return None
        K = self.kernel_size
        hi = self.offset + self.local_len + K - 1
        window = self.ends[:, self.offset:min(hi, self.total_len)]
        if hi > self.total_len:
            window = torch.cat([window, window.new_zeros(window.shape[0], hi - self.total_len)], dim=1)
        return PassResets(self._local(self.ends).flip(1), _conv_visibility(window.flip(1), K, self.local_len))

    def block_resets(self) -> Optional[BlockResets]:
        """Both directions' resets, computed once for every block; None when nothing is packed."""
        if not self.packed:
            return None
        return BlockResets(self.forward_resets(), self.reverse_resets())

    def flipped(self) -> "DocumentLayout":
        """The layout of the flipped sequence (a whole-sequence RC pass, one rank only)."""
        if self.cp_group is not None:
            raise ValueError("DocumentLayout.flipped needs the whole sequence on one rank")
        starts = self.ends.flip(1) if self.packed else None
        return DocumentLayout(starts, self.starts.shape[0], self.local_len, None, self.kernel_size,
                              self.starts.device)


def _conv_visibility(window: torch.Tensor, kernel_size: int, length: int) -> torch.Tensor:
    """(K, B, S) from the reset flags of [K-1 halo positions, S positions] in pass order: the
    input j positions back is visible unless a reset lies in (t - j, t]."""
    K = kernel_size
    visible = [torch.ones_like(window[:, K - 1:K - 1 + length])]
    blocked = torch.zeros_like(visible[0])
    for j in range(1, K):
        blocked = blocked | window[:, K - j:K - j + length]
        visible.append(~blocked)
    return torch.stack(visible)
