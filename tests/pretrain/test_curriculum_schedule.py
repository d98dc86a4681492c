"""Curriculum plan (constant tokens per step, stage boundaries) and the token-based LR schedule."""
import math
from types import SimpleNamespace

import pytest

from pretrain.config import StageConfig, TrainConfig
from pretrain.curriculum import Curriculum
from pretrain.errors import ConfigError
from pretrain.schedule import learning_rate

# Prot-xLSTM-style doubling: context x2, micro-batch /2, same tokens per step.
STAGES = [StageConfig(context_len=256, micro_batch_size=8, tokens=10_000),
          StageConfig(context_len=512, micro_batch_size=4, tokens=20_000),
          StageConfig(context_len=1024, micro_batch_size=1, tokens=8192, grad_accum=2)]


def test_stage_boundaries_fall_at_the_first_step_covering_each_budget():
    plan = Curriculum(STAGES, default_grad_accum=1, dp_size=2)
    assert plan.tokens_per_step == 256 * 8 * 2 == 4096
    assert [s.num_steps for s in plan.stages] == [math.ceil(10_000 / 4096), math.ceil(20_000 / 4096), 2]
    assert [s.first_step for s in plan.stages] == [0, 3, 8]
    assert [plan.stage_at(step).index for step in range(10)] == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert plan.stages[1].start_tokens == 3 * 4096 >= STAGES[0].tokens
    assert plan.total_steps == 10 and plan.total_tokens == 10 * 4096


def test_tokens_per_step_constant_in_every_stage():
    plan = Curriculum(STAGES, default_grad_accum=1, dp_size=4)
    for stage in plan.stages:
        assert stage.context_len * stage.micro_batch_size * stage.grad_accum * 4 == plan.tokens_per_step


def test_a_stage_with_other_tokens_per_step_is_refused():
    bad = STAGES[:1] + [StageConfig(context_len=512, micro_batch_size=8, tokens=100)]
    with pytest.raises(ConfigError, match="curriculum.stages.1"):
        Curriculum(bad, default_grad_accum=1, dp_size=1)


def _train(**kw):
    return TrainConfig(**{"lr": 1e-3, "min_lr": 1e-4, "warmup_tokens": 1000, "warmup_start_lr": 1e-6, **kw})


def test_cosine_warms_up_linearly_then_decays_to_the_floor():
    cfg = _train(schedule="cosine")
    assert learning_rate(0, 11_000, cfg) == pytest.approx(1e-6)
    assert learning_rate(500, 11_000, cfg) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert learning_rate(1000, 11_000, cfg) == pytest.approx(1e-3)
    assert learning_rate(6000, 11_000, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert learning_rate(11_000, 11_000, cfg) == pytest.approx(1e-4)


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    cfg = _train(schedule="wsd", decay_fraction=0.2)
    assert learning_rate(7999, 10_000, cfg) == pytest.approx(1e-3)
    assert learning_rate(9000, 10_000, cfg) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert learning_rate(10_000, 10_000, cfg) == pytest.approx(1e-4)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_lr_is_continuous_across_stage_boundaries(schedule):
    """LR is a function of tokens: at each stage switch it moves by no more than one step's worth."""
    plan = Curriculum(STAGES, default_grad_accum=1, dp_size=1)
    cfg = _train(schedule=schedule, warmup_tokens=2048)
    lrs = [learning_rate(plan.tokens_at(step), plan.total_tokens, cfg) for step in range(plan.total_steps)]
    steps = [abs(b - a) for a, b in zip(lrs, lrs[1:])]
    largest_inside_stage = max(steps)
    for stage in plan.stages[1:]:
        jump = abs(lrs[stage.first_step] - lrs[stage.first_step - 1])
        assert jump <= largest_inside_stage + 1e-15
        assert jump < 0.5 * cfg.lr      # no reset to warmup or to the peak
