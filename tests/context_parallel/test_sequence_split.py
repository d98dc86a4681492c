"""In-process checks of the CP helpers the trainer uses: slicing, bad lengths, loss scale."""

import pytest
import torch

from pretrain.parallel import (
    ParallelConfigError,
    deepspeed_gradient_divisor,
    deepspeed_loss_scale,
    initialize_parallel,
    split_sequence_for_cp,
)


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_slices_are_contiguous_and_in_rank_order(cp_size):
    input_ids = torch.randint(0, 100, (3, 32))
    slices = [split_sequence_for_cp(input_ids, rank, cp_size) for rank in range(cp_size)]
    assert all(s.shape == (3, 32 // cp_size) for s in slices)
    assert torch.equal(torch.cat(slices, dim=1), input_ids)


def test_split_along_another_dim():
    x = torch.randn(2, 4, 12, 3)
    assert torch.equal(split_sequence_for_cp(x, 2, 3, dim=2), x[:, :, 8:12])


def test_length_not_divisible_by_cp_is_one_clear_error():
    with pytest.raises(ParallelConfigError, match=r"sequence length 30 is not divisible by parallel.context_parallel_size=4"):
        split_sequence_for_cp(torch.zeros(2, 30, dtype=torch.long), 0, 4)
    assert ParallelConfigError.user_facing is True


def test_rank_outside_the_group_is_rejected():
    with pytest.raises(ParallelConfigError, match=r"rank 2 is not in \[0, 2\)"):
        split_sequence_for_cp(torch.zeros(2, 8), 2, 2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_context_parallel_size_must_be_a_positive_int(bad):
    with pytest.raises(ParallelConfigError, match="parallel.context_parallel_size must be a positive integer"):
        initialize_parallel(bad)


def test_loss_scale_is_gradient_divisor_over_global_tokens():
    assert deepspeed_loss_scale(global_token_count=400, gradient_divisor=2) == pytest.approx(2 / 400)
    with pytest.raises(ParallelConfigError, match="no loss tokens"):
        deepspeed_loss_scale(0, 2)


@pytest.mark.parametrize("zero, divisor", [
    ({}, 2), ({"stage": 1}, 2), ({"stage": 2}, 2), ({"stage": 3}, 8),
    ({"stage": 3, "reduce_scatter": True}, 8), ({"stage": 3, "contiguous_gradients": False, "reduce_scatter": False}, 8),
])
def test_gradient_divisor_follows_deepspeed_zero_stage(zero, divisor):
    assert deepspeed_gradient_divisor({"zero_optimization": zero}, dp_size=2, cp_size=4) == divisor
    assert deepspeed_gradient_divisor({"zero_optimization": zero}, dp_size=2, cp_size=1) == 2


def test_zero3_without_reduce_scatter_is_refused_under_cp():
    with pytest.raises(ParallelConfigError, match="reduce_scatter=false"):
        deepspeed_gradient_divisor({"zero_optimization": {"stage": 3, "reduce_scatter": False}}, 2, 2)
