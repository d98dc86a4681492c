"""State passing across segments is exact: summaries from the empty start combine
associatively into the true states (stabilizer included), and segmented evaluation equals the
unsegmented one in values, final state and gradients, also at extreme gates."""

import functools

import pytest
import torch

import kernels
from kernels.errors import KernelInputError
from kernels.mlstm.chunkwise_torch import mlstm_chunkwise_torch
from kernels.mlstm.reference import mlstm_parallel_reference
from kernels.mlstm.segments import (
    SegmentSummary,
    apply_summary,
    combine_summaries,
    mlstm_segmented,
    scan_summaries,
    segment_summary,
)
from mlstm_cases import assert_close, make_inputs, outputs_and_grads

NEG_INF = float("-inf")


def segmented(P, sequence_fn=mlstm_chunkwise_torch):
    return functools.partial(mlstm_segmented, num_segments=P, sequence_fn=sequence_fn)


def kv_if(x, start=0, stop=None):
    return tuple(x[name][:, :, start:stop] for name in "kvif")


def state_dict(state):
    return dict(C=state[0], n=state[1], m=state[2])


@pytest.mark.parametrize("gates", ["moderate", "extreme"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("P", [2, 4])
def test_segmented_equals_unsegmented_float64(P, with_state, gates):
    inputs = make_inputs(2, 3, 48, 8, 12, dtype=torch.float64, gates=gates, with_state=with_state)
    whole = outputs_and_grads(mlstm_chunkwise_torch, inputs, chunk_size=8)
    assert_close(outputs_and_grads(segmented(P), inputs, chunk_size=8), whole, tol=1e-10)


@pytest.mark.parametrize("P", [2, 4])
def test_segmented_fp32_matches_float64_reference(P):
    """Segments of 10 tokens with chunk 4: partial chunks inside every segment."""
    inputs = make_inputs(2, 3, 40, 16, 24, dtype=torch.float32, gates="moderate", with_state=True)
    ref = outputs_and_grads(mlstm_parallel_reference, inputs, dtype=torch.float64)
    assert_close(outputs_and_grads(segmented(P), inputs, chunk_size=4), ref, tol=1e-5)


def test_summary_is_the_state_from_the_empty_start():
    x = make_inputs(2, 2, 19, 6, 5, dtype=torch.float64, gates="wide")
    F, C, n, m = segment_summary(*kv_if(x))
    empty = (torch.zeros_like(C), torch.zeros_like(n), torch.full_like(m, NEG_INF))
    _, (ref_C, ref_n, ref_m) = mlstm_parallel_reference(*(x[k] for k in "qkvif"), initial_state=empty, return_final_state=True)
    assert_close(dict(C=C, n=n, m=m), dict(C=ref_C, n=ref_n, m=ref_m), tol=1e-12)
    torch.testing.assert_close(F, torch.nn.functional.logsigmoid(x["f"]).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gates", ["moderate", "extreme"])
def test_applying_a_summary_gives_the_exact_state_including_m(gates):
    x = make_inputs(2, 2, 23, 6, 5, dtype=torch.float64, gates=gates, with_state=True)
    start = (x["C0"], x["n0"], x["m0"])
    got = apply_summary(start, segment_summary(*kv_if(x)))
    _, ref = mlstm_parallel_reference(*(x[k] for k in "qkvif"), initial_state=start, return_final_state=True)
    assert_close(state_dict(got), state_dict(ref), tol=1e-12)


def _random_summary(x, start, stop):
    return segment_summary(*kv_if(x, start, stop))


def test_combine_is_associative_with_empty_segments():
    """((a b) c) == (a (b c)) in float64, also when a segment writes nothing (m = -inf)."""
    x = make_inputs(2, 3, 30, 4, 7, dtype=torch.float64, gates="extreme")
    a, b, c = (_random_summary(x, s, s + 10) for s in (0, 10, 20))
    empty = SegmentSummary(torch.zeros_like(a.F), torch.zeros_like(a.C), torch.zeros_like(a.n), torch.full_like(a.m, NEG_INF))
    for left, middle, right in ((a, b, c), (empty, b, c), (a, empty, c), (a, b, empty), (empty, empty, c)):
        one = combine_summaries(combine_summaries(left, middle), right)
        two = combine_summaries(left, combine_summaries(middle, right))
        for got, ref in zip(one, two):
            assert not torch.isnan(got).any()
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    whole = combine_summaries(combine_summaries(a, b), c)
    ref = _random_summary(x, 0, 30)
    assert_close(dict(zip("FCnm", whole)), dict(zip("FCnm", ref)), tol=1e-12)


def test_empty_segment_passes_state_and_gradients_unchanged():
    """A segment with i~ = -inf everywhere and log f = 0 (f~ = +inf) is the identity, and no NaN
    reaches the gradient of the state that passes through it."""
    x = make_inputs(1, 2, 8, 4, 3, dtype=torch.float64, gates="wide", with_state=True)
    C0, n0 = x["C0"].clone().requires_grad_(), x["n0"].clone().requires_grad_()
    k, v = x["k"], x["v"]
    i = torch.full_like(x["i"], NEG_INF)
    f = torch.full_like(x["f"], float("inf"))
    empty = segment_summary(k, v, i, f)
    assert torch.isneginf(empty.m).all() and not empty.C.any() and not empty.F.any()
    C, n, m = apply_summary((C0, n0, x["m0"]), empty)
    assert torch.equal(C, C0) and torch.equal(n, n0) and torch.equal(m, x["m0"])
    (C.sum() + n.sum()).backward()
    assert torch.equal(C0.grad, torch.ones_like(C0)) and torch.equal(n0.grad, torch.ones_like(n0))


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
def test_scan_gives_the_state_entering_each_segment(with_state):
    x = make_inputs(2, 2, 24, 6, 5, dtype=torch.float64, gates="wide", with_state=with_state)
    start = (x["C0"], x["n0"], x["m0"]) if with_state else None
    bounds = [0, 7, 12, 24]
    summaries = [_random_summary(x, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    entering = scan_summaries(summaries, start)
    stacked = scan_summaries(SegmentSummary(*(torch.stack(p) for p in zip(*summaries))), start)
    for p, lo in enumerate(bounds[:-1]):
        if lo == 0:
            ref = start or (torch.zeros_like(entering[0][0]), torch.zeros_like(entering[0][1]), torch.zeros_like(entering[0][2]))
        else:
            _, ref = mlstm_parallel_reference(*(x[k][:, :, :lo] for k in "qkvif"), initial_state=start, return_final_state=True)
        assert_close(state_dict(entering[p]), state_dict(ref), tol=1e-12)
        assert_close(state_dict([s[p] for s in stacked]), state_dict(ref), tol=1e-12)


def test_public_op_segments_match_unsegmented():
    x = make_inputs(1, 2, 64, 8, 8, dtype=torch.float32, gates="moderate", with_state=True)
    state = (x["C0"], x["n0"], x["m0"])
    args = [x[k] for k in "qkvif"]
    whole = kernels.mlstm_chunkwise(*args, initial_state=state, return_final_state=True, chunk_size=8, segments=1)
    split = kernels.mlstm_chunkwise(*args, initial_state=state, return_final_state=True, chunk_size=8, segments=4)
    assert_close(dict(h=split[0], C=split[1][0], n=split[1][1], m=split[1][2]),
                 dict(h=whole[0], C=whole[1][0], n=whole[1][1], m=whole[1][2]), tol=1e-5)


def test_segments_must_divide_the_sequence():
    x = make_inputs(1, 1, 10, 4, 4)
    with pytest.raises(KernelInputError, match=r"segments=3.*S=10"):
        kernels.mlstm_chunkwise(*(x[k] for k in "qkvif"), segments=3)
    with pytest.raises(KernelInputError, match="segments"):
        kernels.mlstm_chunkwise(*(x[k] for k in "qkvif"), segments=0)
