"""Tiles and launch settings of the Triton chunkwise mLSTM kernels, chosen per shape in one place.

Two levels of tiling (TFLA, Beck et al. 2025): a chunk of L positions (states are stored only at
chunk boundaries) is cut into sequence tiles of T = min(SEQ_TILE, L) positions, and the
intra-chunk part runs tile by tile like flash attention. Head dimensions are cut into tiles of
at most the kernel's head tile; dims that are not powers of two are covered by masked tiles.

`KERNEL_SETTINGS` holds per kernel the head tiles and num_warps / num_stages for the GPU, chosen
with bench/gpu_compile.py (no register spills, shared memory within the limit at the shipped
protein shapes); smaller head dims get tiles no larger than the dim. The kernels that form a
score tile (outputs: Q K^T; dq: dH V^T; dkv: V dH^T, K Q^T) own the whole head dim up to 512 in
one program, so each intra-chunk product is done once per chunk (bench/kernel_work.py counts
them); on sm_80 (mma.sync needs more registers for the same accumulator) that spills, so there
`SM80_SETTINGS` caps them at 256 (the product formed twice at head dim 512).
"""

import os
from typing import NamedTuple

import torch
import triton

# Sequence tile; tests lower it (and MAX_HEAD_TILE) to run several tiles per chunk on small inputs.
SEQ_TILE = 64
MAX_HEAD_TILE = 512
MIN_DOT_TILE = 16              # tl.dot needs every dimension >= 16 on the GPU


class KernelSettings(NamedTuple):
    """Head tiles over Dqk (BK) and Dv (BV), the GPU launch settings of one kernel, and (dkv only)
    the head tile BR its score products are reduced over."""

    BK: int
    BV: int
    num_warps: int
    num_stages: int
    BR: int = 0


KERNEL_SETTINGS = {
    "states": KernelSettings(BK=64, BV=64, num_warps=8, num_stages=2),
    "outputs": KernelSettings(BK=32, BV=512, num_warps=8, num_stages=2),
    "dq": KernelSettings(BK=512, BV=32, num_warps=8, num_stages=2),
    "state_grads": KernelSettings(BK=64, BV=64, num_warps=8, num_stages=2),
    "dkv": KernelSettings(BK=512, BV=512, num_warps=8, num_stages=2, BR=32),
}
SM80_SETTINGS = dict(KERNEL_SETTINGS, **{
    "outputs": KernelSettings(BK=32, BV=256, num_warps=8, num_stages=2),
    "dq": KernelSettings(BK=256, BV=32, num_warps=8, num_stages=2),
    "dkv": KernelSettings(BK=256, BV=256, num_warps=8, num_stages=2, BR=32),
})
# Kernels that split their Dqk tile in two halves (dq: q . dq, dkv: k . dk beside half the tile).
HALVED_DQK_TILE = ("dq", "dkv")
# The compute capability whose settings a launch on a non-CUDA device gets (the CPU interpreter;
# meta tensors, with which bench/gpu_compile.py captures launches for each arch it compiles).
DEFAULT_CAPABILITY = 90


def head_tile(dim: int, largest: int) -> int:
    """A power of two >= 16 covering `dim`, at most `largest` (and at most MAX_HEAD_TILE)."""
    return max(MIN_DOT_TILE, min(largest, MAX_HEAD_TILE, triton.next_power_of_2(dim)))


def device_capability(device) -> int:
    """10 * major + minor of a CUDA device; DEFAULT_CAPABILITY for any other device."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_CAPABILITY
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def kernel_settings(kernel: str, Dqk: int, Dv: int, capability: int = None) -> KernelSettings:
    """Settings of `kernel` for head dims (Dqk, Dv) on a GPU of compute `capability` (default
    DEFAULT_CAPABILITY): the table's tiles shrunk to the dims."""
    capability = DEFAULT_CAPABILITY if capability is None else capability
    base = (KERNEL_SETTINGS if capability >= 90 else SM80_SETTINGS)[kernel]
    settings = base._replace(BK=head_tile(Dqk, base.BK), BV=head_tile(Dv, base.BV), BR=head_tile(min(Dqk, Dv), base.BR))
    if kernel in HALVED_DQK_TILE:            # two halves of at least MIN_DOT_TILE (tests: smaller on the CPU)
        settings = settings._replace(BK=max(settings.BK, min(2 * MIN_DOT_TILE, MAX_HEAD_TILE)))
    return settings


def seq_tile(chunk_size: int) -> int:
    return min(SEQ_TILE, chunk_size)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (the tests compare at 1e-4); bf16 / fp16 operands go to
    the tensor cores as they are, so the setting does not apply to them."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


# Under the interpreter (the CPU tests) output buffers start as NaN, so an element a kernel fails
# to write cannot pass a test; on a GPU that fill is one more full write of every buffer.
POISON_BUFFERS = os.environ.get("TRITON_INTERPRET") == "1"


def kernel_buffer(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An output buffer every element of which the kernel writes (NaN-filled under the tests)."""
    if POISON_BUFFERS and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def placeholder(device) -> torch.Tensor:
    """What a kernel gets for a tensor argument it does not read (its constexpr flag is off), so
    that no real tensor is handed to it for nothing."""
    return torch.empty(1, dtype=torch.int32, device=device)
