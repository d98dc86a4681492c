"""How a block's residual branch is applied: causal, reversed, bidirectional or RC-shared.

Each wrapper is one entry of `model.blocks` with the same forward(x, positions, cp_group,
reversed_positions) -> x_out, so activation checkpointing can wrap any of them and the model
calls them all alike. `positions` are the clamped RoPE positions (B, S) of the left-to-right
pass; `reversed_positions` (B, S) are those of a right-to-left pass, already in the flipped
order (the model builds them by `ModelConfig.reversed_positions`; None for causal stacks).
`resets` (modeling.documents.BlockResets, None unless the row is packed) tells each pass where
documents begin in its own direction: a right-to-left pass resets at every document's end.
`rc_half` is True while the model runs the RC half of rc_mode=param_sharing_halves; it reaches
the block (the official RC-PS sLSTM treats that half differently, `rc_half_slstm_head_order`).
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

    def forward(self, x, positions=None, cp_group=None, reversed_positions=None, resets=None, rc_half=False):
        return x + self.inner(x, positions, cp_group, resets=_forward(resets), rc_half=rc_half)

    def init_state(self, batch_size, device=None, dtype=torch.float32):
        return self.inner.init_state(batch_size, device, dtype)

    def step(self, x_t, state, positions=None):
        out, state = self.inner.step(x_t, state, positions)
        return x_t + out, state


class ReversedBlock(nn.Module):
    """x + flip(f(flip(x))): right-to-left (the reversed blocks of an "alternating" stack).
    The residual commutes with the flips, so branch and whole-block forms are the same here."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None, cp_group=None, reversed_positions=None, resets=None, rc_half=False):
        return x + _reversed_branch(self.inner, x, reversed_positions, cp_group, resets, rc_half)


class WeightTiedBidirectionalBlock(nn.Module):
    """One set of weights for both directions. Branch form: x + f(x) + flip(f(flip(x))).
    Whole-block form (official DNA-xLSTM: the block, residual included, runs on x and on
    flip(x) and the two are summed): 2x + f(x) + flip(f(flip(x)))."""

    def __init__(self, inner: nn.Module, whole_block: bool = False):
        super().__init__()
        self.inner = inner
        self.whole_block = whole_block

    def forward(self, x, positions=None, cp_group=None, reversed_positions=None, resets=None, rc_half=False):
        both = (self.inner(x, positions, cp_group, resets=_forward(resets), rc_half=rc_half)
                + _reversed_branch(self.inner, x, reversed_positions, cp_group, resets, rc_half))
        return (2 * x if self.whole_block else x) + both


class RCSharedBlock(nn.Module):
    """x + f(x) + RC(f(RC(x))), RC = flip sequence and channels: reverse-complement equivariant
    (g(RC x) = RC g(x), since RC is an involution) with one set of weights for both strands.
    `reversed_positions` are the positions of the RC strand's tokens (its own left-to-right
    index). This project's own design (rc_mode=param_sharing), not the official one."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None, cp_group=None, reversed_positions=None, resets=None, rc_half=False):
        rc = reverse_complement_hidden
        back = rc(self.inner(rc(x), reversed_positions, cp_group, reverse=cp_group is not None,
                             resets=_reverse(resets)))
        return x + self.inner(x, positions, cp_group, resets=_forward(resets)) + back


def _forward(resets):
    return None if resets is None else resets.forward


def _reverse(resets):
    return None if resets is None else resets.reverse


def _reversed_branch(inner, x, reversed_positions, cp_group, resets, rc_half=False):
    out = inner(x.flip(1), reversed_positions, cp_group, reverse=cp_group is not None,
                resets=_reverse(resets), rc_half=rc_half)
    return out.flip(1)


def no_step(kind: str):
    raise StepModeError(
        f"this model is {kind}: every output depends on later tokens, so it has no recurrent "
        "step mode; use a causal model (bidirectional: none, rc_mode: none, head: lm)")
