"""CI gate on the tensor-core work of the Triton mLSTM kernels (bench/kernel_work.py), beside the
compile gate of test_gpu_compile.py: at the chunk `auto` picks for head dims 512 and 256, the MMA
FLOPs the kernels execute (every tl.dot under the interpreter, 2 M N K) per token and head of a
forward + backward stay within 1.15x of the chunkwise minimum (each intra-chunk product once per
chunk), and equal the structural model the `auto` table was derived with."""

import os
import sys

import pytest

import kernels
from kernels.mlstm import tiling

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
import kernel_work  # noqa: E402

MAX_OVER_MINIMUM = 1.15


@pytest.mark.timeout(240)
@pytest.mark.parametrize("head_dim", [512, 256])
def test_executed_mma_flops_stay_within_1_15x_of_the_chunkwise_minimum_at_the_auto_chunk(head_dim):
    L = kernels.choose_chunk_size(head_dim, head_dim, 1 << 20)
    work = kernel_work.project_work(L, head_dim, head_dim, L, dtype="float32", multiply=False)
    minimum = kernel_work.chunkwise_minimum(head_dim, head_dim, L)
    assert work.flops == kernel_work.project_flops_model(head_dim, head_dim, L)
    assert work.flops <= MAX_OVER_MINIMUM * minimum, (head_dim, L, work.flops / minimum)
    Lc = L / 2 + tiling.seq_tile(L) / 2
    assert work.flops - minimum == 2 * Lc * head_dim          # only dH V^T is formed twice (in dq and in dk)
    for phase in (work.forward, work.backward):
        assert all(name.startswith("_") and name.endswith("_kernel") for name in phase)


def test_counts_follow_the_recomputation_when_a_program_owns_part_of_the_head_dim(monkeypatch):
    """Head tiles of 16 at head dim 32: every score product formed twice; the count sees it, with
    the products' true values (multiply=True) and the same count as without them."""
    monkeypatch.setattr(tiling, "MAX_HEAD_TILE", 16)
    monkeypatch.setattr(tiling, "SEQ_TILE", 16)
    counted = kernel_work.project_work(64, 32, 32, 32, dtype="float32")
    skipped = kernel_work.project_work(64, 32, 32, 32, dtype="float32", multiply=False)
    model = kernel_work.project_flops_model(32, 32, 32)
    Lc = 32 / 2 + 16 / 2
    assert model == 12 * 32 * 32 + 2 * Lc * (32 * (2 + 2 + 2) + 32 * (2 + 2 + 2))
    assert counted.flops == skipped.flops == model
    assert counted.backward["_chunk_dkv_kernel"][1] > 0 and counted.forward["_chunk_states_kernel"][0] > 0


def test_minimum_and_roofline_by_hand():
    # head dim 512, chunk 1024, tile 64: 12 * 512^2 + 2 * 544 * 7 * 512
    assert kernel_work.chunkwise_minimum(512, 512, 1024) == 12 * 512 * 512 + 2 * 544 * 7 * 512
    assert kernel_work.roofline_ns(989e3, 0) == pytest.approx(1e-9 * 1e9)
    assert kernel_work.roofline_ns(0, 3.35e3) == pytest.approx(1.0)


def test_tfla_columns_read_not_installed_without_it():
    row = dict(head_dim=64, chunk="64", flops=1e6, minimum=1e6, flops_over_minimum=1.0, bytes=2048, bound_ns=1.0)
    table = kernel_work.format_table([row], with_tfla=False)
    assert "not installed" in table and "| 64 | 64 | 1.00 |" in table
