"""C = sum_s w_s k_s v_s^T and n = sum_s w_s k_s (a segment summary's state) without keeping
fp32 copies of k and v for the backward.

Written plainly in torch (`k.float() * w` then a matmul) autograd saves the fp32 copy of k, of v
and of the weighted k: at the 102M model and 2^17 tokens about 3 GiB per layer, more than the
kernels' own buffers. Here only the inputs (already saved by the kernel that follows) and the
fp32 weights (B, H, S) are kept; the fp32 work happens block by block along S in forward and
again in backward, so the transient memory is one block.
"""

import torch

S_BLOCK = 8192


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _WeightedStateSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, weights, scale):
        dtype = _compute_dtype(k)
        B, H, S, Dqk = k.shape
        C = k.new_zeros((B, H, Dqk, v.shape[-1]), dtype=dtype)
        n = k.new_zeros((B, H, Dqk), dtype=dtype)
        for lo in range(0, S, S_BLOCK):
            kw = k[:, :, lo:lo + S_BLOCK].to(dtype) * (scale * weights[:, :, lo:lo + S_BLOCK, None])
            C += kw.transpose(-1, -2) @ v[:, :, lo:lo + S_BLOCK].to(dtype)
            n += kw.sum(dim=-2)
        ctx.save_for_backward(k, v, weights)
        ctx.scale = scale
        return C, n

    @staticmethod
    def backward(ctx, dC, dn):
        k, v, weights = ctx.saved_tensors
        scale = ctx.scale
        dtype = _compute_dtype(k)
        B, H, S, Dqk = k.shape
        dC = torch.zeros(B, H, Dqk, v.shape[-1], dtype=dtype, device=k.device) if dC is None else dC.to(dtype)
        dn = torch.zeros(B, H, Dqk, dtype=dtype, device=k.device) if dn is None else dn.to(dtype)
        dk, dv, dw = torch.empty_like(k), torch.empty_like(v), torch.empty_like(weights)
        for lo in range(0, S, S_BLOCK):
            block = slice(lo, lo + S_BLOCK)
            k_s = k[:, :, block].to(dtype) * scale                     # (B, H, L, Dqk)
            v_s = v[:, :, block].to(dtype)
            w = weights[:, :, block, None]
            g = v_s @ dC.transpose(-1, -2) + dn[:, :, None, :]         # dC v_s + dn, per source
            dk[:, :, block] = (w * g * scale).to(dk.dtype)
            dv[:, :, block] = (w * (k_s @ dC)).to(dv.dtype)
            dw[:, :, block] = (k_s * g).sum(dim=-1).to(dw.dtype)
        return dk, dv, dw, None


def weighted_state_sum(k, v, weights, scale: float):
    """(C (B, H, Dqk, Dv), n (B, H, Dqk)) in fp32 (float64 stays) of sources k (B, H, S, Dqk)
    scaled by `scale`, v (B, H, S, Dv) and weights (B, H, S) in the compute dtype;
    differentiable in all three."""
    return _WeightedStateSum.apply(k, v, weights.to(_compute_dtype(k)), scale)
