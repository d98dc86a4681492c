"""Kernel-level context parallelism: CP = 2 and CP = 4 real gloo processes vs one process.

Every rank draws the same global inputs (same seed), runs the full sequence itself as the
single-rank result, then runs its contiguous slice through `mlstm_context_parallel` /
`exchange_conv_halo` and compares its slice of outputs and of every input gradient. The
losses use random weights, so every output position and direction matters.

Tolerances: fp32 relative 1e-5 (max abs error / max abs value per tensor); float64 against the
parallel-form reference 1e-10 (exact state passing leaves only rounding); bf16 inputs (fp32 state
and summaries inside) 1e-2.
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from spawn_ranks import run_ranks

B, H, DQK, DV, S, CHUNK = 2, 2, 8, 12, 96, 16
CONV_CHANNELS, CONV_KERNEL = 6, 4
FP32_RTOL, FP64_RTOL, BF16_RTOL = 1e-5, 1e-10, 1e-2


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _gate_inputs(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, DQK, generator=g, dtype=dtype)
    k = torch.randn(B, H, S, DQK, generator=g, dtype=dtype)
    v = torch.randn(B, H, S, DV, generator=g, dtype=dtype)
    i = 2.0 * torch.randn(B, H, S, generator=g, dtype=dtype)
    f = 2.5 + 2.0 * torch.randn(B, H, S, generator=g, dtype=dtype)   # some strongly forgetting steps
    weight = torch.randn(B, H, S, DV, generator=g, dtype=dtype)
    return (q, k, v, i, f), weight


def _flip_time(x):
    return torch.flip(x, [2])


def _packed_resets():
    """State resets (packed documents) inside a slice (5, 30, 70), exactly at slice edges (24 for
    CP = 4, 48 for both, also a chunk edge), three in one chunk (50, 51, 53), at position 0 and a
    last document of length 1 (95)."""
    resets = torch.zeros(B, S, dtype=torch.bool)
    resets[0, [5, 24, 48, 50, 51, 53, 70]] = True
    resets[1, [0, 30, 48, 95]] = True
    return resets


def _full_sequence(inputs, weight, reverse, backend, resets=None):
    """Single-rank result: outputs and input gradients of sum(h * weight) on the whole sequence."""
    from kernels import mlstm_chunkwise

    leaves = [x.clone().requires_grad_(True) for x in inputs]
    if reverse:
        flipped = None if resets is None else resets.flip(1)
        h = _flip_time(mlstm_chunkwise(*(_flip_time(x) for x in leaves), chunk_size=CHUNK, backend=backend,
                                       resets=flipped))
    else:
        h = mlstm_chunkwise(*leaves, chunk_size=CHUNK, backend=backend, resets=resets)
    (h * weight).sum().backward()
    return h.detach(), [x.grad for x in leaves]


def _context_parallel(inputs, weight, reverse, rank, cp_size, group, resets=None, backend="torch"):
    """This rank's slice through mlstm_context_parallel; outputs back in natural order."""
    from kernels.mlstm.context_parallel import mlstm_context_parallel

    L = S // cp_size
    leaves = [x[:, :, rank * L:(rank + 1) * L].clone().requires_grad_(True) for x in inputs]
    local_resets = None if resets is None else resets[:, rank * L:(rank + 1) * L]
    if reverse:
        flipped = None if local_resets is None else local_resets.flip(1)
        h = _flip_time(mlstm_context_parallel(*(_flip_time(x) for x in leaves), group, reverse=True,
                                              chunk_size=CHUNK, backend=backend, resets=flipped))
    else:
        h = mlstm_context_parallel(*leaves, group, chunk_size=CHUNK, backend=backend, resets=local_resets)
    (h * weight[:, :, rank * L:(rank + 1) * L]).sum().backward()
    return h.detach(), [x.grad for x in leaves]


def _compare_mlstm(rank, cp_size, group, dtype, reverse, reference_backend, resets=None, backend="torch"):
    inputs, weight = _gate_inputs(dtype, seed=11 + int(reverse))
    full_h, full_grads = _full_sequence(inputs, weight, reverse, reference_backend, resets)
    h, grads = _context_parallel(inputs, weight, reverse, rank, cp_size, group, resets, backend)
    L = S // cp_size
    local = slice(rank * L, (rank + 1) * L)
    errors = {"h": _relative(h, full_h[:, :, local])}
    for name, grad, full_grad in zip("qkvif", grads, full_grads):
        errors[f"d{name}"] = _relative(grad, full_grad[:, :, local])
    return errors


def _depthwise_causal_conv(x_with_halo, conv_weight):
    """(B, halo + L, C) -> (B, L, C): the depthwise causal conv of the modeling layer."""
    y = F.conv1d(x_with_halo.transpose(1, 2), conv_weight, groups=x_with_halo.shape[-1])
    return y.transpose(1, 2)


def _compare_conv_halo(rank, cp_size, group, reverse):
    """Conv over [halo, local slice] vs the conv over the zero-padded full sequence."""
    from kernels.mlstm.context_parallel import exchange_conv_halo

    halo_len = CONV_KERNEL - 1
    g = torch.Generator().manual_seed(23)
    x = torch.randn(B, S, CONV_CHANNELS, generator=g)
    conv_weight = torch.randn(CONV_CHANNELS, 1, CONV_KERNEL, generator=g)
    out_weight = torch.randn(B, S, CONV_CHANNELS, generator=g)
    flip = (lambda t: torch.flip(t, [1])) if reverse else (lambda t: t)

    full_x = x.clone().requires_grad_(True)
    padded = F.pad(flip(full_x), (0, 0, halo_len, 0))
    full_y = flip(_depthwise_causal_conv(padded, conv_weight))
    (full_y * out_weight).sum().backward()

    L = S // cp_size
    local = slice(rank * L, (rank + 1) * L)
    x_local = x[:, local].clone().requires_grad_(True)
    halo = exchange_conv_halo(flip(x_local), halo_len, group, reverse=reverse)
    y = flip(_depthwise_causal_conv(torch.cat([halo, flip(x_local)], dim=1), conv_weight))
    (y * out_weight[:, local]).sum().backward()

    neighbour_is_missing = rank == (cp_size - 1 if reverse else 0)
    expected_halo = torch.zeros(B, halo_len, CONV_CHANNELS) if neighbour_is_missing else (
        flip(x[:, (rank + 1) * L:(rank + 1) * L + halo_len]) if reverse else x[:, rank * L - halo_len:rank * L])
    return {
        "halo_exact": torch.equal(halo.detach(), expected_halo),
        "y": _relative(y.detach(), full_y.detach()[:, local]),
        "dx": _relative(x_local.grad, full_x.grad[:, local]),
    }


def _count_collectives(rank, cp_size, group, global_len):
    """Collective calls and bytes received in one forward + backward of one mLSTM layer."""
    from kernels.mlstm.context_parallel import mlstm_context_parallel

    counts = {"all_gather": 0, "all_gather_bytes": 0, "reduce_scatter": 0, "reduce_scatter_bytes": 0}
    originals = {}

    def counting(name, fn):
        def wrapper(output, tensor, *args, **kwargs):
            counts[name] += 1
            counts[f"{name}_bytes"] += output.numel() * output.element_size() if name == "all_gather" \
                else tensor.numel() * tensor.element_size()
            return fn(output, tensor, *args, **kwargs)
        return wrapper

    import kernels.mlstm.context_parallel as cp_module
    originals["ag"] = cp_module._all_gather
    originals["rs"] = cp_module._reduce_scatter
    cp_module._all_gather = counting("all_gather", originals["ag"])
    cp_module._reduce_scatter = counting("reduce_scatter", originals["rs"])
    try:
        g = torch.Generator().manual_seed(5)
        L = global_len // cp_size
        q, k = (torch.randn(B, H, L, DQK, generator=g, requires_grad=True) for _ in range(2))
        v = torch.randn(B, H, L, DV, generator=g, requires_grad=True)
        i, f = (torch.randn(B, H, L, generator=g, requires_grad=True) for _ in range(2))
        mlstm_context_parallel(q, k, v, i, f, group, chunk_size=CHUNK, backend="torch").sum().backward()
    finally:
        cp_module._all_gather = originals["ag"]
        cp_module._reduce_scatter = originals["rs"]
    return counts


def _unequal_lengths_error(rank, group):
    from kernels import KernelInputError
    from kernels.mlstm.context_parallel import mlstm_context_parallel

    L = 24 if rank == 0 else 16
    q, k = torch.randn(B, H, L, DQK), torch.randn(B, H, L, DQK)
    try:
        mlstm_context_parallel(q, k, torch.randn(B, H, L, DV), torch.randn(B, H, L), torch.randn(B, H, L),
                               group, chunk_size=CHUNK, backend="torch")
    except KernelInputError as exc:
        return str(exc)
    return None


def kernel_checks(rank, world_size):
    """Every kernel-level comparison for one rank of a CP = world_size group."""
    group = dist.new_group(list(range(world_size)))
    results = {}
    for reverse in (False, True):
        direction = "reverse" if reverse else "forward"
        results[f"fp32-{direction}"] = _compare_mlstm(rank, world_size, group, torch.float32, reverse, "torch")
        results[f"fp64-{direction}"] = _compare_mlstm(rank, world_size, group, torch.float64, reverse, "reference")
        results[f"bf16-{direction}"] = _compare_mlstm(rank, world_size, group, torch.bfloat16, reverse, "torch")
        results[f"halo-{direction}"] = _compare_conv_halo(rank, world_size, group, reverse)
        resets = _packed_resets()
        results[f"packed-fp32-{direction}"] = _compare_mlstm(rank, world_size, group, torch.float32, reverse,
                                                             "torch", resets)
        results[f"packed-fp64-{direction}"] = _compare_mlstm(rank, world_size, group, torch.float64, reverse,
                                                             "reference", resets)
        results[f"packed-triton-{direction}"] = _compare_mlstm(rank, world_size, group, torch.float32, reverse,
                                                               "torch", resets, backend="triton")
    results["comm-S"] = _count_collectives(rank, world_size, group, S)
    results["comm-4S"] = _count_collectives(rank, world_size, group, 4 * S)
    results["unequal-lengths"] = _unequal_lengths_error(rank, group)
    return results


@pytest.fixture(scope="module", params=[2, 4], ids=["cp2", "cp4"])
def per_rank(request):
    return request.param, run_ranks(kernel_checks, request.param)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_cp_fp32_matches_single_rank(per_rank, direction):
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        for name, error in result[f"fp32-{direction}"].items():
            assert error <= FP32_RTOL, f"CP={cp_size} rank {rank} {direction} {name}: relative error {error:.2e}"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_cp_float64_matches_parallel_reference(per_rank, direction):
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        for name, error in result[f"fp64-{direction}"].items():
            assert error <= FP64_RTOL, f"CP={cp_size} rank {rank} {direction} {name}: relative error {error:.2e}"


@pytest.mark.parametrize("precision, tolerance", [("fp32", FP32_RTOL), ("fp64", FP64_RTOL), ("triton", FP32_RTOL)])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_cp_with_state_resets_matches_single_rank(per_rank, direction, precision, tolerance):
    """Packed documents: resets inside a slice, at slice edges, several in one chunk (fp64 against
    the parallel reference, which equals every document run alone: tests/kernels/test_resets.py;
    "triton": each rank's slice on the Triton kernels, fp32 under the interpreter)."""
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        for name, error in result[f"packed-{precision}-{direction}"].items():
            assert error <= tolerance, f"CP={cp_size} rank {rank} {direction} {name}: relative error {error:.2e}"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_cp_bf16_matches_single_rank(per_rank, direction):
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        for name, error in result[f"bf16-{direction}"].items():
            assert error <= BF16_RTOL, f"CP={cp_size} rank {rank} {direction} {name}: relative error {error:.2e}"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_conv_halo_values_and_gradients_match_full_conv(per_rank, direction):
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        checks = result[f"halo-{direction}"]
        assert checks["halo_exact"], f"CP={cp_size} rank {rank} {direction}: wrong halo values"
        assert checks["y"] <= FP32_RTOL, f"CP={cp_size} rank {rank} {direction} conv output: {checks['y']:.2e}"
        assert checks["dx"] <= FP32_RTOL, f"CP={cp_size} rank {rank} {direction} conv input grad: {checks['dx']:.2e}"


def test_one_all_gather_forward_one_backward_independent_of_length(per_rank):
    from kernels.mlstm.context_parallel import cp_summary_bytes

    cp_size, results = per_rank
    expected_bytes = cp_summary_bytes(B, H, DQK, DV, cp_size)
    for result in results:
        short, long = result["comm-S"], result["comm-4S"]
        assert short["all_gather"] == 1 and short["reduce_scatter"] == 1
        assert short == long                           # same calls and bytes at 4x the length
        assert short["all_gather_bytes"] == expected_bytes == short["reduce_scatter_bytes"]


def test_unequal_local_lengths_raise_on_every_rank(per_rank):
    cp_size, results = per_rank
    lengths = str([24] + [16] * (cp_size - 1))
    for result in results:
        assert result["unequal-lengths"] is not None and lengths in result["unequal-lengths"]
