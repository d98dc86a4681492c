"""The one-token step, looped over a sequence, equals the chunkwise and parallel forms; a
prompt processed chunkwise continues exactly token by token (generation)."""

import pytest
import torch

import kernels
from kernels.mlstm.chunkwise_torch import mlstm_chunkwise_torch
from kernels.mlstm.reference import mlstm_parallel_reference
from mlstm_cases import assert_close, case_id, make_inputs, outputs_and_grads


def step_loop(q, k, v, i, f, initial_state=None, return_final_state=False):
    """A whole sequence through kernels.mlstm_step, token by token."""
    state, outputs = initial_state, []
    for t in range(q.shape[2]):
        h, state = kernels.mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state)
        outputs.append(h)
    h = torch.stack(outputs, dim=2)
    return (h, state) if return_final_state else h


SHAPES = [(2, 3, 21, 16, 24), (1, 2, 9, 12, 20)]


@pytest.mark.parametrize("gates", ["moderate", "wide", "extreme"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(*s) for s in SHAPES])
def test_step_loop_equals_chunkwise_and_parallel(shape, with_state, gates):
    inputs = make_inputs(*shape, dtype=torch.float64, gates=gates, with_state=with_state)
    stepped = outputs_and_grads(step_loop, inputs)
    assert_close(stepped, outputs_and_grads(mlstm_parallel_reference, inputs), tol=1e-10)
    assert_close(stepped, outputs_and_grads(mlstm_chunkwise_torch, inputs, chunk_size=8), tol=1e-10)


def test_fp32_step_matches_float64_reference():
    inputs = make_inputs(2, 3, 21, 16, 24, dtype=torch.float32, gates="moderate", with_state=True)
    ref = outputs_and_grads(mlstm_parallel_reference, inputs, dtype=torch.float64)
    assert_close(outputs_and_grads(step_loop, inputs), ref, tol=1e-5)


def test_bf16_step_keeps_fp32_state():
    x = make_inputs(2, 2, 1, 8, 4, dtype=torch.bfloat16)
    h, (C, n, m) = kernels.mlstm_step(*(x[name][:, :, 0] for name in "qkvif"))
    assert h.dtype == torch.bfloat16 and h.shape == (2, 2, 4)
    assert C.dtype == n.dtype == m.dtype == torch.float32
    ref_h, (ref_C, _, _) = mlstm_parallel_reference(*(x[name].double() for name in "qkvif"), return_final_state=True)
    assert (h.double() - ref_h[:, :, 0]).abs().max() <= 1e-2 * ref_h.abs().max()
    assert (C.double() - ref_C).abs().max() <= 1e-5 * ref_C.abs().max()


def test_generation_continues_a_chunkwise_prompt():
    """Prompt through kernels.mlstm_chunkwise, then steps from its final state: the same h and
    final state as the whole sequence through the reference."""
    x = make_inputs(2, 2, 30, 8, 12, dtype=torch.float32, gates="moderate")
    prompt, rest = ({n: t[:, :, :22] for n, t in x.items()}, {n: t[:, :, 22:] for n, t in x.items()})
    h_prompt, state = kernels.mlstm_chunkwise(*(prompt[n] for n in "qkvif"), return_final_state=True, chunk_size=8)
    h_rest, final = step_loop(*(rest[n] for n in "qkvif"), initial_state=state, return_final_state=True)
    ref_h, ref_state = mlstm_parallel_reference(*(x[n].double() for n in "qkvif"), return_final_state=True)
    got = dict(h=torch.cat([h_prompt, h_rest], dim=2), C=final[0], n=final[1], m=final[2])
    assert_close(got, dict(h=ref_h, C=ref_state[0], n=ref_state[1], m=ref_state[2]), tol=1e-5)
