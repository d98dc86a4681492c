"""Context-length curriculum: stages of (context length, micro-batch, token budget).

Tokens per optimizer step stay constant across stages (context_len x micro_batch_size x
grad_accum x dp_size), so "tokens seen" and "optimizer steps" are proportional and the LR
schedule, which runs over tokens, is continuous across stage boundaries. A stage lasts
ceil(tokens / tokens_per_step) steps: it ends at the first step boundary at or after its
budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

from pretrain.errors import ConfigError


def stage_grad_accum(stage, default_grad_accum: int) -> int:
    return stage.grad_accum if stage.grad_accum is not None else default_grad_accum


def validate_stages(stages: Sequence, default_grad_accum: int, context_parallel_size: int,
                    source: str = "config") -> None:
    """Each stage sane, and the same tokens per step per data-parallel replica in every stage."""
    if not stages:
        raise ConfigError(f"{source}: curriculum.stages is empty; give at least one "
                          "{context_len, micro_batch_size, tokens}")
    per_replica = []
    for index, stage in enumerate(stages):
        key = f"curriculum.stages.{index}"
        accum = stage_grad_accum(stage, default_grad_accum)
        if stage.context_len < 2:
            raise ConfigError(f"{source}: {key}.context_len={stage.context_len}: must be >= 2")
        if stage.micro_batch_size < 1:
            raise ConfigError(f"{source}: {key}.micro_batch_size={stage.micro_batch_size}: must be >= 1")
        if stage.tokens <= 0:
            raise ConfigError(f"{source}: {key}.tokens={stage.tokens}: give the stage a positive token budget")
        if accum < 1:
            raise ConfigError(f"{source}: {key}.grad_accum={accum}: must be >= 1")
        if stage.context_len % context_parallel_size:
            raise ConfigError(f"{source}: {key}.context_len={stage.context_len} is not divisible by "
                              f"parallel.context_parallel_size={context_parallel_size}")
        per_replica.append(stage.context_len * stage.micro_batch_size * accum)
    for index, value in enumerate(per_replica):
        if value != per_replica[0]:
            stage = stages[index]
            raise ConfigError(
                f"{source}: curriculum.stages.{index}: context_len x micro_batch_size x grad_accum = "
                f"{stage.context_len} x {stage.micro_batch_size} x {stage_grad_accum(stage, default_grad_accum)} "
                f"= {value} tokens per step per data-parallel replica, but stage 0 has {per_replica[0]}; "
                "tokens per optimizer step must stay constant across stages (halve the micro-batch or "
                "grad_accum when the context doubles)")


@dataclass(frozen=True)
class StagePlan:
    index: int
    context_len: int
    micro_batch_size: int
    grad_accum: int
    tokens: int              # budget from the config
    first_step: int          # global optimizer step at which the stage starts
    num_steps: int
    start_tokens: int        # tokens seen when the stage starts


class Curriculum:
    """The stage plan for a run with `dp_size` data-parallel replicas."""

    def __init__(self, stages: Sequence, default_grad_accum: int, dp_size: int):
        first = stages[0]
        self.tokens_per_step = (first.context_len * first.micro_batch_size
                                * stage_grad_accum(first, default_grad_accum) * dp_size)
        plans: List[StagePlan] = []
        step = 0
        for index, stage in enumerate(stages):
            accum = stage_grad_accum(stage, default_grad_accum)
            tokens_per_step = stage.context_len * stage.micro_batch_size * accum * dp_size
            if tokens_per_step != self.tokens_per_step:
                raise ConfigError(f"curriculum.stages.{index}: {tokens_per_step} tokens per step, stage 0 has "
                                  f"{self.tokens_per_step}; keep tokens per step constant")
            num_steps = math.ceil(stage.tokens / tokens_per_step)
            plans.append(StagePlan(index, stage.context_len, stage.micro_batch_size, accum, stage.tokens,
                                   step, num_steps, step * tokens_per_step))
            step += num_steps
        self.stages = plans
        self.total_steps = step
        self.total_tokens = step * self.tokens_per_step

    def stage_at(self, step: int) -> StagePlan:
        """The stage that optimizer step `step` (0-based, not yet taken) belongs to."""
        for plan in self.stages:
            if step < plan.first_step + plan.num_steps:
                return plan
        return self.stages[-1]

    def tokens_at(self, step: int) -> int:
        return step * self.tokens_per_step
