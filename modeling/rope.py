"""Rotary position embedding on interleaved channel pairs (2j, 2j+1), as in Prot-/DNA-xLSTM.

Positions are clamped at `max_position_id` before they reach a block, so where that bound is
small (proteins: 2047) cos and sin come from one table of max_position_id + 1 rows per (dim,
theta, device, dtype), computed once in float64 and cast. Every block and both of q and k look
rows up in it instead of recomputing float64 angles and their cos/sin per block (B x S x dim/2
float64 values each time). Large bounds (DNA: 2^20 positions) compute cos/sin per call, once
for q and k together."""
from __future__ import annotations

import torch

_TABLES: dict = {}
MAX_TABLE_ENTRIES = 1 << 22      # rows x dim/2; larger tables would cost more memory than they save


def rope_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """positions (...) -> angles (..., dim // 2): pos * theta^(-2j/dim), in float64 because fp32
    angles lose ~1e-4 rad at positions in the thousands (the tables are small)."""
    j = torch.arange(dim // 2, device=positions.device, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / dim)
    return positions.to(torch.float64).unsqueeze(-1) * inv_freq


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, max_position: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (..., dim // 2) in `dtype` of the angles at `positions` (0..max_position),
    either way the float64 cos/sin cast to `dtype`."""
    if (max_position + 1) * (dim // 2) > MAX_TABLE_ENTRIES:
        angles = rope_angles(positions.clamp(0, max_position), dim, theta)
        return angles.cos().to(dtype), angles.sin().to(dtype)
    key = (dim, float(theta), max_position, str(positions.device), dtype)
    table = _TABLES.get(key)
    if table is None:
        angles = rope_angles(torch.arange(max_position + 1, device=positions.device), dim, theta)
        table = _TABLES[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
    index = positions.clamp(0, max_position)
    return table[0][index], table[1][index]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of the last dim of x by the angles whose cos and sin are given (broadcast to
    x[..., ::2], in x's dtype); keeps x's dtype."""
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2)
