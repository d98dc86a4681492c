"""Small building blocks shared by the mLSTM and sLSTM blocks: norms, headwise linear, causal conv."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def small_init_(weight: torch.Tensor, dim: int) -> None:
    """Prot-xLSTM small_init: N(0, sqrt(2 / (5 d)))."""
    nn.init.normal_(weight, mean=0.0, std=math.sqrt(2.0 / (5.0 * dim)))


def wang_init_(weight: torch.Tensor, dim: int, num_blocks: int) -> None:
    """Prot-xLSTM wang_init on down-projections: N(0, 2 / (L sqrt(d)))."""
    nn.init.normal_(weight, mean=0.0, std=2.0 / (num_blocks * math.sqrt(dim)))


class LayerNorm(nn.Module):
    """Layer norm with a weight and no bias. With `weight_offset` the parameter is the offset
    from 1 (effective weight 1 + w, initialised 0), the official xLSTM parameterisation, so an
    official checkpoint's norm weights load as stored. The key is `weight` either way, as for
    `nn.LayerNorm(bias=False)`."""

    def __init__(self, dim: int, eps: float = 1e-5, weight_offset: bool = False):
        super().__init__()
        self.dim, self.eps, self.weight_offset = dim, eps, weight_offset
        self.weight = nn.Parameter(torch.zeros(dim) if weight_offset else torch.ones(dim))

    def effective_weight(self) -> torch.Tensor:
        return 1.0 + self.weight if self.weight_offset else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), weight=self.effective_weight(), eps=self.eps)


class MultiHeadLayerNorm(LayerNorm):
    """Layer norm per head over its channels (a group norm), weight only; x (..., H, Dh)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5, weight_offset: bool = False):
        super().__init__(num_heads * head_dim, eps, weight_offset)
        self.num_heads, self.head_dim = num_heads, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, (self.head_dim,), eps=self.eps)
        return y.flatten(-2) * self.effective_weight()


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map (blocks of `block_size` channels), optional bias: the q/k/v
    projection and the official sLSTM gates. Weight (blocks, out, in), the official
    `LinearHeadwiseExpand` layout."""

    def __init__(self, dim: int, block_size: int, bias: bool = False):
        super().__init__()
        self.num_blocks, self.block_size = dim // block_size, block_size
        self.weight = nn.Parameter(torch.empty(self.num_blocks, block_size, block_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.unflatten(-1, (self.num_blocks, self.block_size))
        y = torch.einsum("...hi,hoi->...ho", xb, self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias


class CausalDepthwiseConv(nn.Module):
    """Depthwise causal conv over time with bias; x (B, S, C) and the K-1 inputs before it."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=True)

    def forward(self, x: torch.Tensor, halo: torch.Tensor | None = None) -> torch.Tensor:
        """halo (B, K-1, C): the inputs preceding x (zeros = start of the sequence)."""
        if halo is None:
            halo = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
        padded = torch.cat([halo, x], dim=1).transpose(1, 2)
        return self.conv(padded).transpose(1, 2)

    def step(self, x_t: torch.Tensor, buffer: torch.Tensor):
        """x_t (B, C), buffer (B, K-1, C) of previous inputs -> (y_t (B, C), new buffer)."""
        window = torch.cat([buffer, x_t.unsqueeze(1)], dim=1)          # (B, K, C)
        y = (window * self.conv.weight[:, 0].t().unsqueeze(0)).sum(1) + self.conv.bias
        return y, window[:, 1:]
