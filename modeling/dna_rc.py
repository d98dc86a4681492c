"""Reverse complement of DNA token ids and of per-token tensors (DESIGN.md section 8 vocabulary).

Ids: [CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6 A7 C8 G9 T10 N11 (padded to 16);
the complement swaps A<->T and C<->G and leaves every other id (N and specials) unchanged.
"""
from __future__ import annotations

import torch

DNA_A, DNA_C, DNA_G, DNA_T = 7, 8, 9, 10


def complement_table(vocab_size: int, device=None) -> torch.Tensor:
    """(vocab_size,) long: id -> id of its complement."""
    table = torch.arange(vocab_size, device=device)
    table[DNA_A], table[DNA_T] = DNA_T, DNA_A
    table[DNA_C], table[DNA_G] = DNA_G, DNA_C
    return table


def reverse_complement_ids(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, S) ids -> ids of the reverse-complement strand."""
    return complement_table(vocab_size, input_ids.device)[input_ids].flip(-1)


def reverse_complement_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, S, V) logits -> the logits that predict the reverse-complement strand."""
    table = complement_table(logits.shape[-1], logits.device)
    return logits.flip(1)[..., table]


def reverse_complement_hidden(hidden: torch.Tensor) -> torch.Tensor:
    """(B, S, d) hidden -> RC in the channel-mapped representation: flip sequence and channels."""
    return hidden.flip(1).flip(-1)
