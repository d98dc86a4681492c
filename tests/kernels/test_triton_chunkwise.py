"""Triton chunkwise mLSTM v2 (kernels/mlstm/autograd.py) against the float64 references.

Runs in the Triton CPU interpreter (TRITON_INTERPRET=1 from tests/conftest.py), in fp32 (exact
fp32 products): relative error (max abs error / max abs reference, per tensor) <= 1e-4. The
kernels fill every output with NaN before writing under the interpreter, so an unwritten element
shows up as a non-finite value (assert_close checks finiteness first). Cases cover one and
several sequence tiles per chunk (SEQ_TILE lowered to 16 on small inputs), partial last chunks,
the large chunks the rule picks (256, 1024) with small head dims, Dqk != Dv, non-power-of-two
head dims (masked head tiles), and extreme gates. The interpreter gets bf16 wrong (dot operands
multiplied as raw integers, truncating casts), so the bf16 test swaps in the GPU's arithmetic;
that bf16 really reaches the tensor cores is tests/kernels/test_gpu_compile.py.
"""

import numpy as np
import pytest
import torch

import kernels.mlstm.tiling as tiling
from kernels.mlstm.autograd import ChunkSizeError, _check_chunk_size, mlstm_chunkwise_triton
from kernels.mlstm.chunkwise_fw import chunk_outputs_fw, chunk_states_fw
from kernels.mlstm.gates import tile_log_forget
from kernels.mlstm.reference import mlstm_parallel_reference, mlstm_recurrent_reference
from mlstm_cases import (
    assert_close, case_id, documents_alone, make_inputs, outputs_and_grads, resets_from_lengths,
)

FP32_TOL = 1e-4
BF16_TOL = 1e-2

# (B, H, S, Dqk, Dv, chunk_size, sequence tile)
CASES = [
    (1, 1, 16, 16, 16, 16, 64),        # one tile, one chunk
    (2, 2, 48, 16, 32, 16, 64),        # Dqk != Dv, three chunks of one tile
    (1, 2, 64, 32, 16, 64, 16),        # four tiles per chunk
    (2, 1, 40, 24, 24, 32, 16),        # non-power-of-two head dim; S = 2.5 tiles: padded, partial chunk
    (1, 1, 100, 16, 24, 64, 16),       # two chunks, the second partial
]
# the chunks the rule picks for head dims 128 and 512, with small head dims, the last chunk partial
LARGE_CASES = [
    (1, 1, 600, 16, 16, 256, 64),
    (1, 1, 1000, 16, 16, 1024, 64),    # one partial chunk of 16 tiles
]


def _ids(cases):
    return [case_id(*case[:5]) + f"-L{case[5]}-T{case[6]}" for case in cases]


def _reference(inputs, loss_on=("h", "C", "n"), **kwargs):
    return outputs_and_grads(mlstm_parallel_reference, inputs, dtype=torch.float64, loss_on=loss_on, **kwargs)


@pytest.fixture
def seq_tile(monkeypatch):
    def set_tile(tile):
        monkeypatch.setattr(tiling, "SEQ_TILE", tile)
    return set_tile


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "initial_state"])
@pytest.mark.parametrize("B,H,S,Dqk,Dv,L,T", CASES, ids=_ids(CASES))
def test_outputs_state_and_gradients_match_float64_reference(B, H, S, Dqk, Dv, L, T, with_state, seq_tile):
    seq_tile(T)
    inputs = make_inputs(B, H, S, Dqk, Dv, with_state=with_state)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=L)
    assert got["h"].dtype == torch.float32 and got["C"].dtype == torch.float32
    assert_close(got, _reference(inputs), FP32_TOL)


@pytest.mark.parametrize("B,H,S,Dqk,Dv,L,T", LARGE_CASES, ids=_ids(LARGE_CASES))
def test_large_chunks_match_float64_reference(B, H, S, Dqk, Dv, L, T, seq_tile):
    seq_tile(T)
    inputs = make_inputs(B, H, S, Dqk, Dv, with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=L)
    assert_close(got, _reference(inputs), FP32_TOL)


@pytest.mark.parametrize("gates", ["wide", "extreme"])
@pytest.mark.parametrize("L,T", [(16, 16), (64, 16)], ids=["L16", "L64-T16"])
def test_extreme_gates_stay_finite_and_match(gates, L, T, seq_tile):
    """i~ uniform in [-30, 30] and f~ near +-20 (full forget and no decay mixed)."""
    seq_tile(T)
    inputs = make_inputs(2, 1, 80, 16, 24, gates=gates, with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=L)
    assert_close(got, _reference(inputs), FP32_TOL)


def test_large_chunk_keeps_fp32_precision_under_strong_forgetting():
    """log f ~ -2 per token over a chunk of 1024: a chunk-wide fp32 cumulative log forget reaches
    -2000 and loses ~1e-4 in every weight (the torch chunkwise backend at chunk 1024 misses 1e-4
    on the gate gradients); tile-local sums keep the kernels near fp32 rounding."""
    inputs = make_inputs(1, 1, 1024, 16, 16, with_state=True)
    inputs["f"] = torch.randn(1, 1, 1024) - 2.0
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=1024)
    assert_close(got, _reference(inputs), 3e-5)


def test_head_dims_tiled_with_masks(monkeypatch, seq_tile):
    """Several Dqk and Dv tiles, the last one partly masked (24 = 16 + 8, 40 = 16 + 16 + 8);
    dkv programs that own a Dv tile but no Dqk tile."""
    monkeypatch.setattr(tiling, "MAX_HEAD_TILE", 16)
    seq_tile(16)
    inputs = make_inputs(1, 1, 48, 24, 40, gates="wide", with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=32)
    assert_close(got, _reference(inputs), FP32_TOL)


def _rows_where_denominator_wins(inputs, chunk_size):
    """Fraction of rows where |n_t . q_t| beats exp(-m_t) in the normalizer max."""
    i = inputs["i"].contiguous()
    beta = tile_log_forget(inputs["f"], None, chunk_size)
    states, _ = chunk_states_fw(inputs["k"], inputs["v"], i, beta, None, inputs["C0"], inputs["n0"],
                                inputs["m0"], chunk_size, chunk_size)
    _, m_row, den = chunk_outputs_fw(inputs["q"], inputs["k"], inputs["v"], i, beta, None, states,
                                     chunk_size, chunk_size, 1e-6)
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


def test_gradients_from_h_alone(seq_tile):
    """Loss on h only: no gradient reaches the final state (the kernels skip it)."""
    seq_tile(16)
    inputs = make_inputs(1, 2, 64, 16, 16, with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=32, loss_on=("h",))
    assert_close(got, _reference(inputs, loss_on=("h",)), FP32_TOL)


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


@pytest.fixture
def gpu_bf16_arithmetic(monkeypatch):
    """Two interpreter defects on bf16, replaced by what the GPU does: tl.dot multiplies bf16
    operands as their uint16 bit patterns (now: the exact product of the bf16 values,
    accumulated in fp32, as on the tensor cores), and fp32 -> bf16 casts truncate (now: round
    to nearest even, the GPU's conversion)."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original_dot, original_cast = builder.create_dot, builder.cast_impl

    def widen(handle):
        if handle.dtype.scalar.is_bf16():
            return (handle.data.astype(np.uint32) << 16).view(np.float32)
        return handle.data

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if not (a.dtype.scalar.is_bf16() or b.dtype.scalar.is_bf16()):
            return original_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        product = np.matmul(widen(a), widen(b), dtype=np.float32)
        return interpreter.TensorHandle(product + d.data, d.dtype.scalar)

    def cast_impl(self, src, dst_type):
        if not (src.dtype.scalar.is_fp32() and dst_type.scalar.is_bf16()):
            return original_cast(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return interpreter.TensorHandle(rounded, dst_type.scalar)

    monkeypatch.setattr(builder, "create_dot", create_dot)
    monkeypatch.setattr(builder, "cast_impl", cast_impl)


def test_bf16_inputs_match_at_bf16_tolerance(gpu_bf16_arithmetic, seq_tile):
    """bf16 q, k, v (fp32 gates, as models keep them): bf16 dot operands, fp32 states, outputs
    and gradients in bf16."""
    seq_tile(16)
    inputs = make_inputs(1, 2, 64, 16, 32, dtype=torch.bfloat16, with_state=True)
    inputs["i"], inputs["f"] = inputs["i"].float(), inputs["f"].float()
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=32)
    assert got["h"].dtype == torch.bfloat16 and got["dq"].dtype == torch.bfloat16
    assert got["C"].dtype == torch.float32 and got["di"].dtype == torch.float32
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


def test_any_length_gets_exact_padding_to_whole_tiles(seq_tile):
    """S = 37 is neither a multiple of the chunk nor of the tile."""
    seq_tile(16)
    inputs = make_inputs(1, 2, 37, 16, 16, gates="wide", with_state=True)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=32)
    assert got["h"].shape[2] == 37
    assert_close(got, _reference(inputs), FP32_TOL)


@pytest.mark.parametrize("chunk_size", [24, 0, True], ids=["L24", "L0", "bool"])
def test_bad_chunk_size_raises_one_clear_error(chunk_size):
    inputs = make_inputs(1, 1, 32, 16, 16)
    with pytest.raises(ChunkSizeError, match="chunk_size") as info:
        mlstm_chunkwise_triton(*(inputs[name] for name in "qkvif"), chunk_size=chunk_size)
    assert isinstance(info.value, ValueError) and info.value.user_facing is True


def test_gpu_needs_chunks_of_at_least_16():
    """tl.dot needs tiles of 16 on the GPU (the CPU interpreter accepts any size)."""
    _check_chunk_size(8, on_gpu=False)
    with pytest.raises(ChunkSizeError, match="at least 16"):
        _check_chunk_size(8, on_gpu=True)


def test_non_contiguous_inputs_give_the_same_result():
    """Models hand over q, k, v as (B, S, H, D).transpose(1, 2) views."""
    inputs = make_inputs(1, 2, 32, 16, 24)
    expected = mlstm_chunkwise_triton(*(inputs[name] for name in "qkvif"), chunk_size=16)
    views = {name: inputs[name].transpose(1, 2).contiguous().transpose(1, 2) for name in "qkvif"}
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


def test_output_buffers_are_nan_poisoned_under_the_interpreter():
    """What makes an unwritten element fail every comparison above."""
    assert tiling.POISON_BUFFERS
    assert torch.isnan(tiling.kernel_buffer((3,), torch.float32, "cpu")).all()


# ---------------------------------------------------------------------------- state resets
# Two rows of 80 tokens, chunk 32 in tiles of 16: row 0 resets inside a tile (5), inside a chunk
# at a tile edge (16), twice in one tile (21, 22: a document of length 1), at a chunk edge (32)
# and inside the partial last chunk (70); row 1 resets at tile and chunk edges and ends with a
# document of length 1. S = 80 is 2.5 chunks.
RESET_LENGTHS = [[5, 11, 5, 1, 10, 38, 10], [16, 48, 15, 1]]


@pytest.mark.parametrize("reset_at_start", [False, True], ids=["state-enters", "reset-at-0"])
@pytest.mark.parametrize("gates", ["moderate", "extreme"])
def test_resets_match_the_reference(gates, reset_at_start, seq_tile):
    seq_tile(16)
    inputs = make_inputs(2, 1, 80, 16, 24, gates=gates, with_state=True)
    resets = resets_from_lengths(RESET_LENGTHS, reset_at_start)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=32, resets=resets)
    assert_close(got, _reference(inputs, resets=resets), FP32_TOL)


def test_resets_equal_documents_run_alone_at_one_tile_per_chunk():
    inputs = make_inputs(2, 1, 80, 16, 16, gates="wide", with_state=True)
    resets = resets_from_lengths(RESET_LENGTHS)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=16, resets=resets)
    alone = outputs_and_grads(documents_alone(mlstm_parallel_reference), inputs, dtype=torch.float64,
                              resets=resets)
    assert_close(got, alone, FP32_TOL)


def test_forget_gradient_is_exactly_zero_at_resets(seq_tile):
    """A reset's own forget gate only decays the fresh (empty) state: dlog f is set to exactly 0
    there rather than left as the rounding residue of two cancelling sums (test_resets.py checks
    that nothing crosses a reset, on this backend too)."""
    seq_tile(16)
    inputs = make_inputs(2, 1, 80, 16, 16, gates="wide", with_state=True)
    resets = resets_from_lengths(RESET_LENGTHS)
    got = outputs_and_grads(mlstm_chunkwise_triton, inputs, chunk_size=32, resets=resets)
    at_reset = resets[:, None, :].expand_as(got["df"])
    assert not got["df"][at_reset].any()
    assert (got["df"][~at_reset] != 0).double().mean() > 0.9


@pytest.mark.parametrize("segments", [1, 2], ids=["whole", "two-segments"])
def test_resets_through_the_registry_and_segments(segments, seq_tile):
    """The public op with backend="triton": S = 76 pads to whole tiles; two segments of 38 put a
    reset (at 37) one position before a segment edge and state passing (segments.py) across it."""
    seq_tile(16)
    from kernels import mlstm_chunkwise

    inputs = make_inputs(1, 1, 76, 16, 16, gates="wide", with_state=True)
    resets = resets_from_lengths([[7, 30, 1, 38]])
    got = outputs_and_grads(mlstm_chunkwise, inputs, backend="triton", chunk_size=32, segments=segments,
                            resets=resets)
    assert_close(got, _reference(inputs, resets=resets), FP32_TOL)
