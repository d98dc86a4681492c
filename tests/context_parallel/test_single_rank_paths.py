"""Without a CP group the context-parallel entry points fall back to the single-rank ops."""

import pytest
import torch

from kernels import KernelInputError, mlstm_chunkwise
from kernels.mlstm.context_parallel import exchange_conv_halo, mlstm_context_parallel


def test_no_group_is_plain_chunkwise():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 40, 8, generator=g), torch.randn(2, 2, 40, 8, generator=g)
    v = torch.randn(2, 2, 40, 4, generator=g)
    i, f = torch.randn(2, 2, 40, generator=g), 3 + torch.randn(2, 2, 40, generator=g)
    expected = mlstm_chunkwise(q, k, v, i, f, chunk_size=16, backend="torch")
    actual = mlstm_context_parallel(q, k, v, i, f, None, chunk_size=16, backend="torch")
    assert torch.equal(actual, expected)


def test_no_group_halo_is_zeros_of_the_right_shape():
    x = torch.randn(3, 10, 5)
    halo = exchange_conv_halo(x, 3, None)
    assert halo.shape == (3, 3, 5) and halo.dtype == x.dtype and not halo.any()


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_halo_length_is_rejected(bad):
    with pytest.raises(KernelInputError, match="halo_len"):
        exchange_conv_halo(torch.randn(1, 4, 2), bad, None)


def test_bad_input_shape_is_rejected():
    with pytest.raises(KernelInputError, match=r"\(B, S_local, C\)"):
        exchange_conv_halo(torch.randn(4, 2), 3, None)
