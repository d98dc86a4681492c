"""The segment summary's state sum C = sum_s w_s k_s v_s^T, n = sum_s w_s k_s: exact values and
gradients (float64 gradcheck, also across several S blocks), bf16 inputs give fp32 state, and
autograd keeps only the inputs and the fp32 weights (no fp32 copies of k and v)."""
import torch

import kernels.mlstm.weighted_state as ws


def _inputs(dtype, S=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 3, S, 4, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(2, 3, S, 5, generator=g, dtype=torch.float64).to(dtype)
    w = torch.rand(2, 3, S, generator=g, dtype=torch.float64)
    w[0, 0, 3] = 0.0                                     # a source that does not reach the end
    return k, v, w


def test_gradcheck_float64_across_blocks(monkeypatch):
    monkeypatch.setattr(ws, "S_BLOCK", 5)                 # 13 positions: blocks of 5, 5, 3
    k, v, w = (x.requires_grad_() for x in _inputs(torch.float64))
    assert torch.autograd.gradcheck(lambda k, v, w: ws.weighted_state_sum(k, v, w, 0.5), (k, v, w))
    C, n = ws.weighted_state_sum(k, v, w, 0.5)
    ref_kw = 0.5 * k * w[..., None]
    torch.testing.assert_close(C, ref_kw.transpose(-1, -2) @ v, rtol=1e-12, atol=0)
    torch.testing.assert_close(n, ref_kw.sum(-2), rtol=1e-12, atol=0)


def test_bf16_inputs_give_an_fp32_state_and_keep_no_fp32_copies():
    k, v, w = _inputs(torch.bfloat16, S=64)
    k.requires_grad_(), v.requires_grad_()
    w = w.float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        C, n = ws.weighted_state_sum(k, v, w, 0.5)
    assert C.dtype == n.dtype == torch.float32
    kept = {(t.data_ptr(), t.dtype) for t in saved}
    assert kept == {(k.data_ptr(), torch.bfloat16), (v.data_ptr(), torch.bfloat16), (w.data_ptr(), torch.float32)}
    ref = (0.5 * k.double() * w.double()[..., None]).transpose(-1, -2) @ v.double()
    assert ((C.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6
    (C.sum() + n.sum()).backward()
    assert k.grad.dtype == torch.bfloat16 and torch.isfinite(w.grad).all()
