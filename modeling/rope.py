"""Rotary position embedding on interleaved channel pairs (2j, 2j+1), as in Prot-/DNA-xLSTM."""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """positions (...) -> angles (..., dim // 2) in fp32: pos * theta^(-2j/dim)."""
    j = torch.arange(dim // 2, device=positions.device, dtype=torch.float64)
    inv_freq = (theta ** (-2.0 * j / dim)).to(torch.float32)
    return positions.to(torch.float32).unsqueeze(-1) * inv_freq


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of the last dim of x by `angles` (broadcast to x[..., ::2]); keeps x's dtype."""
    cos = angles.cos().to(x.dtype)
    sin = angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2)
