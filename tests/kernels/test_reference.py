"""The two float64 references agree with each other and with DESIGN.md section 3 written out."""

import math

import pytest
import torch
import torch.nn.functional as F

from kernels.mlstm.reference import mlstm_parallel_reference, mlstm_recurrent_reference
from mlstm_cases import assert_close, case_id, make_inputs, outputs_and_grads

SHAPES = [(2, 3, 40, 16, 24), (1, 2, 17, 8, 8), (1, 1, 1, 4, 6)]


@pytest.mark.parametrize("gates", ["moderate", "wide", "extreme"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(*s) for s in SHAPES])
def test_recurrent_matches_parallel(shape, with_state, gates):
    inputs = make_inputs(*shape, dtype=torch.float64, gates=gates, with_state=with_state)
    recurrent = outputs_and_grads(mlstm_recurrent_reference, inputs)
    parallel = outputs_and_grads(mlstm_parallel_reference, inputs)
    assert_close(parallel, recurrent, tol=1e-10)


def test_one_token_is_the_design_update_written_out():
    """C, n, m and h of one step from a given state, spelled out independently."""
    B, H, Dqk, Dv = 2, 2, 5, 3
    x = make_inputs(B, H, 1, Dqk, Dv, dtype=torch.float64, gates="wide", with_state=True)
    q, k, v, i, f = (x[name][:, :, 0] for name in "qkvif")
    C0, n0, m0 = x["C0"], x["n0"], x["m0"]
    log_f = F.logsigmoid(f)
    m = torch.maximum(log_f + m0, i)
    k_scaled = k / math.sqrt(Dqk)
    C = torch.exp(log_f + m0 - m)[..., None, None] * C0 + torch.exp(i - m)[..., None, None] * torch.einsum("bhd,bhe->bhde", k_scaled, v)
    n = torch.exp(log_f + m0 - m)[..., None] * n0 + torch.exp(i - m)[..., None] * k_scaled
    h = torch.einsum("bhd,bhde->bhe", q, C) / (torch.maximum((q * n).sum(-1).abs(), torch.exp(-m)) + 1e-6)[..., None]
    for fn in (mlstm_recurrent_reference, mlstm_parallel_reference):
        got_h, (got_C, got_n, got_m) = fn(*(x[name] for name in "qkvif"), initial_state=(C0, n0, m0), return_final_state=True)
        torch.testing.assert_close(got_h[:, :, 0], h, rtol=1e-12, atol=0)
        torch.testing.assert_close(got_C, C, rtol=1e-12, atol=0)
        torch.testing.assert_close(got_n, n, rtol=1e-12, atol=0)
        torch.testing.assert_close(got_m, m, rtol=1e-12, atol=0)


def test_no_initial_state_means_zero_state_with_m_zero():
    x = make_inputs(2, 2, 9, 4, 6, dtype=torch.float64, gates="wide")
    zeros = (torch.zeros(2, 2, 4, 6, dtype=torch.float64), torch.zeros(2, 2, 4, dtype=torch.float64),
             torch.zeros(2, 2, dtype=torch.float64))
    for fn in (mlstm_recurrent_reference, mlstm_parallel_reference):
        fresh = fn(*(x[name] for name in "qkvif"), return_final_state=True)
        explicit = fn(*(x[name] for name in "qkvif"), initial_state=zeros, return_final_state=True)
        torch.testing.assert_close(fresh, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("fn", [mlstm_parallel_reference, mlstm_recurrent_reference], ids=["parallel", "recurrent"])
def test_detached_stabilizer_gives_the_true_gradient(fn):
    """gradcheck differentiates numerically, so it sees how m moves with every input; the
    analytic gradient treats m as a constant. They agree (eps = 0, where h does not depend on m
    at all: h = N / max(|D|, 1) with the unstabilised N, D), so detaching m is exact."""
    x = make_inputs(1, 2, 6, 3, 2, dtype=torch.float64, gates="moderate", with_state=True)
    m0 = x["m0"]

    def h_of(q, k, v, i, f, C0, n0):
        return fn(q, k, v, i, f, initial_state=(C0, n0, m0), eps=0.0, detach_stabilizer=True)

    leaves = [x[name].clone().requires_grad_() for name in ("q", "k", "v", "i", "f", "C0", "n0")]
    assert torch.autograd.gradcheck(h_of, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_stabilizer_gradient_is_only_the_eps_term():
    """With eps = 0 the kept and the detached m give identical gradients; with eps = 1e-6 they
    differ only at the size of eps (moderate gates), which is why detaching is safe. (The loss
    is on h: the final state is stored stabilised, (C, n) relative to its own m, so its
    gradient is defined for the detached convention that every kernel shares.)"""
    x = make_inputs(2, 2, 12, 4, 5, dtype=torch.float64, gates="moderate", with_state=True)
    for eps, tol in ((0.0, 1e-12), (1e-6, 1e-5)):
        detached = outputs_and_grads(mlstm_parallel_reference, x, loss_on=("h",), eps=eps, detach_stabilizer=True)
        kept = outputs_and_grads(mlstm_parallel_reference, x, loss_on=("h",), eps=eps, detach_stabilizer=False)
        assert_close(detached, kept, tol=tol, names=["h", "dq", "dk", "dv", "di", "df", "dC0", "dn0"])
