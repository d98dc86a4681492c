"""Triton chunkwise mLSTM (kernels/mlstm/autograd.py) against the float64 recurrent reference.

Runs in the Triton CPU interpreter (TRITON_INTERPRET=1 from tests/conftest.py), in fp32: the
interpreter computes tl.dot on bf16 operands wrongly, and the kernels cast to fp32 before every
dot anyway. Tolerance: relative error (max abs error / max abs reference, per tensor) <= 1e-4
for fp32, 1e-2 for bf16. The kernels fill every output with NaN before writing, so an unwritten
element shows up as a non-finite value (assert_close checks finiteness first).
"""

import pytest
import torch

import kernels.mlstm.chunkwise_fw as chunkwise_fw
from kernels.mlstm.autograd import (
    ChunkSizeError,
    _check_chunking,
    _chunk_cumulative_log_forget,
    mlstm_chunkwise_triton,
)
from kernels.mlstm.chunkwise_fw import chunk_outputs_fw, chunk_states_fw
from kernels.mlstm.reference import mlstm_recurrent_reference
from tests.kernels.mlstm_cases import assert_close, case_id, make_inputs, outputs_and_grads

FP32_TOL = 1e-4
BF16_TOL = 1e-2

# (B, H, S, Dqk, Dv, chunk_size): Dqk != Dv, a non-power-of-two head dim, one and several chunks
CASES = [
    (1, 1, 16, 16, 16, 16),
    (2, 2, 48, 16, 32, 16),
    (1, 2, 64, 32, 16, 16),
    (2, 1, 32, 24, 24, 16),
    (1, 1, 64, 16, 16, 32),
    (1, 1, 32, 48, 16, 16),
    (1, 1, 128, 16, 16, 16),
]


def _ids(cases):
    return [case_id(*case[:5]) + f"-L{case[5]}" for case in cases]


def _reference(inputs, loss_on=("h", "C", "n")):
    return outputs_and_grads(mlstm_recurrent_reference, inputs, dtype=torch.float64, loss_on=loss_on)


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "initial_state"])
@pytest.mark.parametrize("B,H,S,Dqk,Dv,L", CASES, ids=_ids(CASES))
def test_outputs_state_and_gradients_match_float64_reference(B, H, S, Dqk, Dv, L, with_state):
    inputs = make_inputs(B, H, S, Dqk, Dv, with_state=with_state)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=L)
    assert got["h"].dtype == torch.float32 and got["C"].dtype == torch.float32
    assert_close(got, _reference(inputs), FP32_TOL)


@pytest.mark.parametrize("gates", ["wide", "extreme"])
def test_extreme_gates_stay_finite_and_match(gates):
    """i~ uniform in [-30, 30] and f~ near +-20 (full forget and no decay mixed)."""
    inputs = make_inputs(2, 2, 48, 16, 24, gates=gates, with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=16)
    assert_close(got, _reference(inputs), FP32_TOL)


def test_head_dims_tiled_with_masks(monkeypatch):
    """Several Dqk and Dv tiles, the last one partly masked (24 = 16 + 8, 40 = 16 + 16 + 8)."""
    monkeypatch.setattr(chunkwise_fw, "MAX_HEAD_TILE", 16)
    inputs = make_inputs(1, 2, 32, 24, 40, gates="wide", with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=16)
    assert_close(got, _reference(inputs), FP32_TOL)


def _rows_where_denominator_wins(inputs, chunk_size):
    """Fraction of rows where |n_t . q_t| beats exp(-m_t) in the normalizer max."""
    i = inputs["i"].contiguous()
    b = _chunk_cumulative_log_forget(inputs["f"], chunk_size)
    initial = (inputs["C0"], inputs["n0"], inputs["m0"])
    states = chunk_states_fw(inputs["k"], inputs["v"], i, b, initial, chunk_size)
    _, m_row, den = chunk_outputs_fw(inputs["q"], inputs["k"], inputs["v"], i, b, states, chunk_size, 1e-6)
    return (den.abs() > torch.exp(-m_row)).double().mean().item()


def test_gradient_through_normalizer_max_is_exact():
    """Both branches of max(|n.q|, exp(-m)) occur, and the gradient matches the reference on
    all rows: the path through |n.q| is kept (the public TFLA kernels drop it)."""
    inputs = make_inputs(2, 2, 48, 16, 32, with_state=True)
    inputs["q"] = inputs["q"] * 0.3
    share = _rows_where_denominator_wins(inputs, 16)
    assert 0.2 < share < 0.8, share
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=16)
    assert_close(got, _reference(inputs), FP32_TOL)


def test_gradients_from_h_alone():
    """Loss on h only: the final-state cotangents arrive as zeros or None."""
    inputs = make_inputs(1, 2, 32, 16, 16)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=16, loss_on=("h",))
    ref = _reference(inputs, loss_on=("h",))
    assert_close(got, ref, FP32_TOL)


def test_plain_call_returns_h_only():
    inputs = make_inputs(1, 1, 32, 16, 16)
    h = mlstm_chunkwise_triton(*(inputs[name] for name in "qkvif"), chunk_size=16)
    ref = mlstm_recurrent_reference(*(inputs[name].double() for name in "qkvif"))
    assert isinstance(h, torch.Tensor) and h.shape == ref.shape
    assert_close({"h": h}, {"h": ref}, FP32_TOL)


def test_chunk_by_chunk_state_passing_equals_one_call():
    """Three calls of one chunk each, passing the final state on, give the single call's h and
    final state (to fp32 rounding)."""
    inputs = make_inputs(2, 1, 48, 16, 24)
    q, k, v, i, f = (inputs[name] for name in "qkvif")
    h_full, (C_full, n_full, m_full) = mlstm_chunkwise_triton(q, k, v, i, f, return_final_state=True,
                                                              chunk_size=16)
    state, pieces = None, []
    for start in range(0, 48, 16):
        part = slice(start, start + 16)
        h, state = mlstm_chunkwise_triton(q[:, :, part], k[:, :, part], v[:, :, part], i[:, :, part],
                                          f[:, :, part], initial_state=state, return_final_state=True,
                                          chunk_size=16)
        pieces.append(h)
    got = dict(h=torch.cat(pieces, dim=2), C=state[0], n=state[1], m=state[2])
    assert_close(got, dict(h=h_full, C=C_full, n=n_full, m=m_full), 1e-5)


def test_bf16_inputs_match_at_bf16_tolerance():
    inputs = make_inputs(1, 2, 32, 16, 32, dtype=torch.bfloat16, with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=16)
    assert got["h"].dtype == torch.bfloat16 and got["dq"].dtype == torch.bfloat16
    assert got["C"].dtype == torch.float32
    assert_close(got, _reference(inputs), BF16_TOL)


def test_initial_m_gets_no_gradient_and_final_m_is_not_differentiable():
    inputs = make_inputs(1, 1, 16, 16, 16, with_state=True)
    m0 = inputs["m0"].clone().requires_grad_()
    q, k, v, i, f = (inputs[name].clone().requires_grad_() for name in "qkvif")
    h, (C, n, m) = mlstm_chunkwise_triton(q, k, v, i, f, initial_state=(inputs["C0"], inputs["n0"], m0),
                                          return_final_state=True, chunk_size=16)
    assert not m.requires_grad
    h.sum().backward()
    assert m0.grad is None
    assert torch.isfinite(q.grad).all() and q.grad.abs().max() > 0


@pytest.mark.parametrize("S,chunk_size", [(40, 16), (32, 24), (32, 0)], ids=["S40-L16", "L24", "L0"])
def test_bad_chunking_raises_one_clear_error(S, chunk_size):
    inputs = make_inputs(1, 1, S, 16, 16)
    with pytest.raises(ChunkSizeError, match="chunk_size") as info:
        mlstm_chunkwise_triton(*(inputs[name] for name in "qkvif"), chunk_size=chunk_size)
    assert isinstance(info.value, ValueError) and info.value.user_facing is True


def test_gpu_needs_chunks_of_at_least_16():
    """tl.dot needs tiles of 16 on the GPU (the CPU interpreter accepts any size)."""
    _check_chunking(64, 8, on_gpu=False)
    with pytest.raises(ChunkSizeError, match="at least 16"):
        _check_chunking(64, 8, on_gpu=True)


def test_non_contiguous_inputs_give_the_same_result():
    """Models hand over q, k, v as (B, S, H, D).transpose(1, 2) views."""
    inputs = make_inputs(1, 2, 32, 16, 24)
    expected = mlstm_chunkwise_triton(*(inputs[name] for name in "qkvif"), chunk_size=16)
    views = {name: inputs[name].transpose(1, 2).contiguous().transpose(1, 2) for name in "qkv"}
    views.update({name: inputs[name].transpose(1, 2).contiguous().transpose(1, 2) for name in "if"})
    assert not views["q"].is_contiguous() and not views["i"].is_contiguous()
    got = mlstm_chunkwise_triton(*(views[name] for name in "qkvif"), chunk_size=16)
    assert torch.equal(got, expected)


def test_torch_compile_does_not_trace_into_the_kernel():
    inputs = make_inputs(1, 1, 32, 16, 16)
    compiled = torch.compile(lambda *args: 2.0 * mlstm_chunkwise_triton(*args, chunk_size=16), backend="eager")
    got = compiled(*(inputs[name] for name in "qkvif"))
    expected = 2.0 * mlstm_chunkwise_triton(*(inputs[name] for name in "qkvif"), chunk_size=16)
    assert torch.equal(got, expected)


def test_registered_as_triton_backend():
    from kernels import mlstm_chunkwise

    inputs = make_inputs(1, 2, 32, 16, 16, with_state=True)
    got = outputs_and_grads(lambda *a, **kw: mlstm_chunkwise(*a, backend="triton", segments=1, **kw),
                            inputs, chunk_size=16)
    assert_close(got, _reference(inputs), FP32_TOL)


# Compiles every kernel for an H100 (sm_90) down to a cubin with Triton's bundled ptxas. The
# interpreter accepts programs a GPU compile rejects (tl.dot shapes, loop-carried types), so this
# catches GPU-only breakage without a GPU. Runs in a child process: under TRITON_INTERPRET=1 the
# kernels are interpreter objects and cannot be compiled.
_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.mlstm.chunkwise_bw as bw
import kernels.mlstm.chunkwise_fw as fw

constexprs = dict(L=64, BK=64, BV=64, PRECISION="tf32")
for fn in (fw._chunk_states_kernel, fw._chunk_outputs_kernel, bw._chunk_state_grads_kernel,
           bw._chunk_dqk_kernel, bw._chunk_dv_kernel):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            bf16 = ("q_ptr", "k_ptr", "v_ptr", "h_ptr", "dh_ptr")
            signature[name] = "*bf16" if name in bf16 else "*fp32"
        else:
            signature[name] = "fp32" if name in ("scale", "eps") else "i32"
    compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
    assert compiled.asm.get("cubin"), fn.__name__
    print(fn.__name__, "shared", compiled.metadata.shared)
"""


@pytest.mark.timeout(300)
def test_kernels_compile_for_hopper_gpu():
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=root,
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("shared") == 5, result.stdout
