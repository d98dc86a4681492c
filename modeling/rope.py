"""Rotary position embedding on interleaved channel pairs (2j, 2j+1), as in Prot-/DNA-xLSTM."""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """positions (...) -> angles (..., dim // 2): pos * theta^(-2j/dim), in float64 because fp32
    angles lose ~1e-4 rad at positions in the thousands (the tables are small)."""
    j = torch.arange(dim // 2, device=positions.device, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / dim)
    return positions.to(torch.float64).unsqueeze(-1) * inv_freq


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of the last dim of x by `angles` (broadcast to x[..., ::2]); keeps x's dtype."""
    cos = angles.cos().to(x.dtype)
    sin = angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2)
