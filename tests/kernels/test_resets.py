"""State resets (packed documents, kernels/mlstm/resets.py) are exact: a packed row equals each
of its documents run alone from the fresh state, in values, final state and every gradient, on
every backend, with segments, at partial chunks, with resets inside a chunk, at a chunk edge,
several in one chunk, at position 0, and documents of length 1. Nothing crosses a reset: the
initial state and earlier documents get exactly zero gradient from later ones."""

import functools

import pytest
import torch

import kernels
from kernels.errors import KernelInputError
from kernels.mlstm.chunkwise_torch import mlstm_chunkwise_torch
from kernels.mlstm.reference import mlstm_parallel_reference, mlstm_recurrent_reference
from kernels.mlstm.segments import apply_summary, mlstm_segmented, segment_summary
from mlstm_cases import assert_close, documents_alone, make_inputs, outputs_and_grads, resets_from_lengths

# Two rows of 40 tokens. With chunk 8: row 0 has resets inside chunks (5, 13, 14 = a document of
# length 1, 19), at a chunk edge (24) and two in one chunk (13, 14); row 1 resets at 8 and 16
# (chunk edges) and has a last document of length 1.
LENGTHS = [[5, 8, 1, 5, 5, 16], [8, 8, 23, 1]]
S = 40


def _case(dtype, gates="moderate", with_state=True, reset_at_start=False):
    inputs = make_inputs(2, 3, S, 6, 5, dtype=dtype, gates=gates, with_state=with_state)
    return inputs, resets_from_lengths(LENGTHS, reset_at_start)


@pytest.mark.parametrize("gates", ["moderate", "extreme"])
@pytest.mark.parametrize("reset_at_start", [False, True], ids=["state-enters", "reset-at-0"])
def test_parallel_reference_equals_documents_alone_and_the_recurrence(gates, reset_at_start):
    inputs, resets = _case(torch.float64, gates, reset_at_start=reset_at_start)
    alone = outputs_and_grads(documents_alone(mlstm_recurrent_reference), inputs, resets=resets)
    assert_close(outputs_and_grads(mlstm_recurrent_reference, inputs, resets=resets), alone, tol=1e-12)
    assert_close(outputs_and_grads(mlstm_parallel_reference, inputs, resets=resets), alone, tol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 8, 16, 64])
@pytest.mark.parametrize("gates", ["moderate", "extreme"])
def test_torch_chunkwise_equals_documents_alone_float64(chunk_size, gates):
    inputs, resets = _case(torch.float64, gates)
    alone = outputs_and_grads(documents_alone(mlstm_parallel_reference), inputs, resets=resets)
    got = outputs_and_grads(mlstm_chunkwise_torch, inputs, resets=resets, chunk_size=chunk_size)
    assert_close(got, alone, tol=1e-10)


def test_torch_chunkwise_fp32_matches_float64():
    inputs, resets = _case(torch.float32, "wide")
    ref = outputs_and_grads(mlstm_parallel_reference, inputs, dtype=torch.float64, resets=resets)
    assert_close(outputs_and_grads(mlstm_chunkwise_torch, inputs, resets=resets, chunk_size=8), ref, tol=1e-5)


@pytest.mark.parametrize("P", [2, 4, 5])
def test_segments_with_resets_equal_documents_alone(P):
    """P=5 puts segment edges at 8, 16, 24, 32: resets exactly at a segment's first position."""
    inputs, resets = _case(torch.float64, "wide")
    alone = outputs_and_grads(documents_alone(mlstm_parallel_reference), inputs, resets=resets)
    segmented = functools.partial(mlstm_segmented, num_segments=P, sequence_fn=mlstm_chunkwise_torch)
    assert_close(outputs_and_grads(segmented, inputs, resets=resets, chunk_size=4), alone, tol=1e-10)


def test_summary_of_a_segment_with_resets_drops_what_entered():
    x, resets = _case(torch.float64, "wide")
    summary = segment_summary(*(x[name] for name in "kvif"), resets=resets)
    assert torch.isneginf(summary.F).all()                    # both rows hold a reset
    start = (x["C0"], x["n0"], x["m0"])
    C, n, m = apply_summary(start, summary)
    _, ref = mlstm_parallel_reference(*(x[name] for name in "qkvif"), initial_state=start,
                                      return_final_state=True, resets=resets)
    assert_close(dict(C=C, n=n, m=m), dict(C=ref[0], n=ref[1], m=ref[2]), tol=1e-12)
    no_reset = torch.zeros_like(resets)
    plain = segment_summary(*(x[name] for name in "kvif"))
    for got, want in zip(segment_summary(*(x[name] for name in "kvif"), resets=no_reset), plain):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _triton(*args, **kwargs):
    from kernels.mlstm.autograd import mlstm_chunkwise_triton   # Triton's CPU interpreter here

    return mlstm_chunkwise_triton(*args, **kwargs)


@pytest.mark.parametrize("fn, chunk_size", [(mlstm_chunkwise_torch, 8), (_triton, 16)], ids=["torch", "triton"])
def test_nothing_crosses_a_reset(fn, chunk_size):
    """The gradient of anything after a reset w.r.t. the initial state and earlier tokens is 0."""
    x, resets = _case(torch.float64, "wide")
    leaves = {name: x[name].clone().requires_grad_() for name in ("q", "k", "v", "i", "f", "C0", "n0")}
    h, (C, n, _) = fn(*(leaves[name] for name in "qkvif"), initial_state=(leaves["C0"], leaves["n0"], x["m0"]),
                      return_final_state=True, chunk_size=chunk_size, resets=resets)
    first_reset = 5                                            # row 0's second document
    (h[0, :, first_reset:].sum() + C[0].sum() + n[0].sum()).backward()
    for name in ("C0", "n0"):
        assert not leaves[name].grad[0].any(), name
    for name in "qkvif":
        assert not leaves[name].grad[0, :, :first_reset].any(), name
        assert leaves[name].grad[0, :, first_reset:].abs().sum() > 0, name


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_public_op_takes_resets_on_any_length(backend):
    inputs, resets = _case(torch.float32, "moderate")
    args = [inputs[name][:, :, :37] for name in "qkvif"]         # not a multiple of the chunk
    got = kernels.mlstm_chunkwise(*args, chunk_size=16, backend=backend, resets=resets[:, :37])
    ref = documents_alone(mlstm_parallel_reference)(*(a.double() for a in args), resets=resets[:, :37])
    assert_close(dict(h=got), dict(h=ref), tol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, S, dtype=torch.long), "dtype torch.bool"),
    (torch.zeros(2, 3, S, dtype=torch.bool), r"resets: expected shape \(B, S\) = \(2, 40\)"),
    (torch.zeros(2, S - 1, dtype=torch.bool), r"resets: expected shape \(B, S\)"),
    ([True] * S, "bool torch.Tensor"),
])
def test_bad_resets_are_one_clear_error(bad, message):
    inputs, _ = _case(torch.float32)
    with pytest.raises(KernelInputError, match=message):
        kernels.mlstm_chunkwise(*(inputs[name] for name in "qkvif"), resets=bad)
