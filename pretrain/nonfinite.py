"""Steps with a non-finite loss or gradient: skipped on every rank, counted, and bounded.

A NaN or inf in one micro-batch must neither reach the weights nor the optimizer moments, and
all ranks must make the same decision (one rank skipping while another updates would desync
the replicas). The mechanism rests on DeepSpeed's own overflow skip, which every optimizer
wrapper it builds applies when the global gradient norm is not finite (DeepSpeed 0.19: ZeRO-1/2
in fp32 and bf16 with bf16.check_grad_overflow (default true), ZeRO-3, the bf16 optimizer):
the update is not applied, the accumulated gradients are dropped, and `was_step_applied()`
reports False. That norm is reduced over the data x context group, so its verdict is the same
on every rank.

Two gaps are closed here:
- a non-finite loss whose gradient happens to be finite (an inf loss from a label whose logit
  is -inf has the finite gradient softmax - onehot) would be applied: `poison_nonfinite`
  multiplies such a loss by NaN before backward, so its gradient is NaN everywhere and the
  norm check fires;
- ZeRO-0 in fp32 hands the torch optimizer to the engine unwrapped, with no check at all:
  `drop_nonfinite_gradients` looks at the (already all-reduced) gradients before the step,
  agrees with the other ranks, and drops them; the caller then does not call `engine.step()`
  on any rank (with no gradients DeepSpeed 0.19's fp32 clipping indexes an empty list). The
  engine's own counters (global_steps) then count applied steps only; the trainer's step
  counter is TrainState.step, and with manual accumulation boundaries nothing else reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from pretrain.errors import NonFiniteStepsError

SKIPPED_REASON = "nonfinite loss/grad"


def poison_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged when finite, else loss x NaN: its backward then makes every gradient NaN.

    No host synchronisation: the factor is computed on the loss's device."""
    nan = torch.full_like(loss, float("nan"))
    return loss * torch.where(torch.isfinite(loss), torch.ones_like(loss), nan)


def has_builtin_overflow_skip(engine) -> bool:
    """True when DeepSpeed's optimizer wrapper skips steps whose gradient norm is not finite
    (DeepSpeed's own test in `_take_model_step` is the same attribute)."""
    return hasattr(engine.optimizer, "overflow")


def drop_nonfinite_gradients(engine, group) -> bool:
    """For an engine without the overflow skip: if any gradient is non-finite on any rank of
    `group`, drop all gradients and return True: the caller must then skip `engine.step()`
    (every rank gets the same answer). Call after the last backward of the step, on every rank."""
    import torch.distributed as dist

    if has_builtin_overflow_skip(engine):
        return False
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    bad = torch.zeros(1, device=device)
    for grad in grads:
        bad = torch.maximum(bad, (~torch.isfinite(grad)).any().to(bad.dtype).reshape(1))
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)
    if bad.item() > 0:
        engine.zero_grad()
        return True
    return False


@dataclass
class BadStepCounter:
    """Consecutive skipped steps; the run stops when `limit` (train.max_bad_steps) is reached."""

    limit: int
    in_a_row: int = 0

    def update(self, skipped: bool) -> None:
        self.in_a_row = self.in_a_row + 1 if skipped else 0

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.limit

    def describe(self, step: int, loss: float) -> str:
        """The console line of a skipped step."""
        return (f"step {step}: non-finite loss or gradient norm (loss {loss}); update skipped on every rank "
                f"({self.in_a_row} in a row, train.max_bad_steps={self.limit})")

    def stop_error(self, step: int, latest: Optional[Path], metrics_path: Path) -> NonFiniteStepsError:
        good = (f"The last good checkpoint is {latest}" if latest is not None
                else "There is no checkpoint yet (a restart begins at step 0)")
        return NonFiniteStepsError(
            f"step {step}: {self.in_a_row} consecutive steps with a non-finite loss or gradient norm "
            f"(train.max_bad_steps={self.limit}); stopped without writing a checkpoint. {good}; see the "
            f"skipped steps in {metrics_path}. Lower train.lr or raise train.warmup_tokens, check the data "
            "of those steps, then run again (it resumes from `latest`)")
