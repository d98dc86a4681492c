"""mLSTM and sLSTM blocks: fp32 values and gradients against a float64 copy; float64 gradcheck."""
import copy

import pytest
import torch

from modeling.mlstm_block import MLSTMBlock
from modeling.slstm_block import SLSTMBlock
from tests.modeling.helpers import rel_err, tiny


def randomize_(module):
    # fresh random values everywhere (the zero gate weights of the init would hide bugs)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def grads(block, x, positions, dtype):
    block = copy.deepcopy(block).to(dtype)
    x = x.detach().to(dtype).requires_grad_(True)
    weight = torch.linspace(-1, 1, x.numel(), dtype=dtype).view_as(x)
    (block(x, positions) * weight).sum().backward()
    return block(x, positions).detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


@pytest.mark.parametrize("block_cls,fields", [
    (MLSTMBlock, dict(position_encoding="rope_head")),
    (MLSTMBlock, dict(position_encoding="rope_inner")),
    (SLSTMBlock, dict()),
])
def test_fp32_matches_float64(block_cls, fields):
    block = block_cls(tiny(**fields, kernel_backend="torch"))
    randomize_(block)
    x = torch.randn(2, 10, 16)
    pos = torch.arange(10).expand(2, 10)
    out32, gx32, gp32 = grads(block, x, pos, torch.float32)
    ref = copy.deepcopy(block)
    if block_cls is MLSTMBlock:                       # float64 parallel-form kernel
        ref.cfg = tiny(**fields, kernel_backend="reference")
    out64, gx64, gp64 = grads(ref, x, pos, torch.float64)
    assert rel_err(out32.double(), out64) <= 1e-5
    assert rel_err(gx32.double(), gx64) <= 1e-5
    for name in gp64:
        assert rel_err(gp32[name].double(), gp64[name]) <= 1e-5, name


@pytest.mark.parametrize("block_cls,fields", [
    (MLSTMBlock, dict()),
    (SLSTMBlock, dict()),
    # the official options: gates after RoPE, biases, offset norms, headwise sLSTM gates
    (MLSTMBlock, dict(position_encoding="rope_inner", gates_after_rope=True, mlstm_bias=True,
                      norm_weight_offset=True)),
    (SLSTMBlock, dict(slstm_gate_layout="headwise", norm_weight_offset=True)),
])
def test_block_gradcheck_float64(block_cls, fields):
    block = block_cls(tiny(d_model=8, num_heads=2, kernel_backend="reference", **fields)).double()
    randomize_(block)
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(5).expand(1, 5)
    assert torch.autograd.gradcheck(lambda t: block(t, pos), (x,), eps=1e-6, atol=1e-6)


def test_gate_inits_match_prot_xlstm():
    block = MLSTMBlock(tiny(num_heads=4, d_model=32))
    assert torch.equal(block.fgate.weight, torch.zeros_like(block.fgate.weight))
    assert torch.allclose(block.fgate.bias, torch.linspace(3, 6, 4))
    assert torch.equal(block.igate.weight, torch.zeros_like(block.igate.weight))
    assert torch.equal(block.skip, torch.ones_like(block.skip))
    assert block.proj_up.bias is None and block.proj_down.bias is None
