"""How a block's residual branch is applied: causal, reversed, bidirectional or RC-shared.

Each wrapper is one entry of `model.blocks` with forward(x, positions, cp_group) -> x_out, so
activation checkpointing can wrap it. `positions` are the clamped RoPE positions (B, S).
"""
from __future__ import annotations

import torch
from torch import nn

from modeling.dna_rc import reverse_complement_hidden
from modeling.errors import StepModeError


class CausalBlock(nn.Module):
    """x + f(x): left-to-right, and the only wrapper with a recurrent step form."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None, cp_group=None):
        return x + self.inner(x, positions, cp_group)

    def init_state(self, batch_size, device=None, dtype=torch.float32):
        return self.inner.init_state(batch_size, device, dtype)

    def step(self, x_t, state, positions=None):
        out, state = self.inner.step(x_t, state, positions)
        return x_t + out, state


class ReversedBlock(nn.Module):
    """x + flip(f(flip(x))): right-to-left (odd blocks of an "alternating" stack).
    Tokens keep their own position ids (flipped with x)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None, cp_group=None):
        return x + _reversed_branch(self.inner, x, positions, cp_group)


class WeightTiedBidirectionalBlock(nn.Module):
    """x + f(x) + flip(f(flip(x))) with one set of weights for both directions."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None, cp_group=None):
        return x + self.inner(x, positions, cp_group) + _reversed_branch(self.inner, x, positions, cp_group)


class RCSharedBlock(nn.Module):
    """x + f(x) + RC(f(RC(x))), RC = flip sequence and channels: reverse-complement equivariant
    (g(RC x) = RC g(x), since RC is an involution) with one set of weights for both strands.
    `rc_positions` are the positions of the RC strand's tokens (its own left-to-right index)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None, cp_group=None, rc_positions=None):
        rc = reverse_complement_hidden
        back = rc(self.inner(rc(x), rc_positions, cp_group, reverse=cp_group is not None))
        return x + self.inner(x, positions, cp_group) + back


def _reversed_branch(inner, x, positions, cp_group):
    flipped_pos = None if positions is None else positions.flip(1)
    out = inner(x.flip(1), flipped_pos, cp_group, reverse=cp_group is not None)
    return out.flip(1)


def no_step(kind: str):
    raise StepModeError(
        f"this model is {kind}: every output depends on later tokens, so it has no recurrent "
        "step mode; use a causal model (bidirectional: none, rc_mode: none, head: lm)")
