"""Spatio-temporal RoPE on token features: the clustering space of Tango (SPEC.md section 3).

Each channel block (time, height, width) is rotated "rotate-half" style by the token's frame time in seconds,
its row and its column. Rotation preserves norms, so distances between rotated unit vectors are cosine
distances biased by the relative offsets (dt, dh, dw): the locality prior. The angle tables are built per
frame, row and column and broadcast, instead of per token as in the reference; every element is computed with
the same fp32 operations, so the result is bit-identical and needs no (T * L, D) cos/sin buffers.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def strope_sections(dim: int) -> Tuple[int, int, int]:
    """(d_t, d_h, d_w) for a feature size: d_h = d_w = 2 * floor(dim / 6), d_t = dim - 2 * d_h.

    Reproduces the reference's fixed [1196, 1194, 1194] at dim 3584 and generalises it to any even dim >= 6.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 6 or dim % 2:
        raise ValueError(f"feature dim D={dim!r} cannot be split into ST-RoPE sections; need an even D >= 6")
    d_s = 2 * (dim // 6)
    return dim - 2 * d_s, d_s, d_s


def _inv_freq(size: int, base: float, device) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, size, 2, dtype=torch.float, device=device) / size))


def _rotate_(x: torch.Tensor, angles: torch.Tensor) -> None:
    """Rotate-half RoPE of `x` (..., d) in place; `angles` (..., d/2) broadcasts against x's leading dims."""
    half = x.shape[-1] // 2
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    x.copy_((x * cos) + (rotated * sin))


def apply_strope_(
    x: torch.Tensor,
    grid_hw: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    base_time: float = 10000.0,
    base_space: float = 1000.0,
    frames_per_chunk: int = 16,
) -> torch.Tensor:
    """Rotate `x` (T, L, D) float32 in place by (time, row, column) and return it.

    Args:
        x: (T, L, D) float32 features (Tango passes the L2-normalised copy).
        grid_hw: (H, W), L == H * W, raster order.
        timestamps: (T,) frame times in seconds; None -> 0..T-1.
        frames_per_chunk: frames rotated at once (bounds the temporaries).
    """
    T, L, D = x.shape
    H, W = grid_hw
    d_t, d_h, d_w = strope_sections(D)
    device = x.device
    inv_t, inv_h, inv_w = _inv_freq(d_t, base_time, device), _inv_freq(d_h, base_space, device), _inv_freq(
        d_w, base_space, device)
    if timestamps is None:
        t_pos = torch.arange(T, device=device).type_as(inv_t)
    else:
        t_pos = torch.as_tensor(timestamps).to(device).type_as(inv_t)
    ang_t = torch.outer(t_pos, inv_t)  # (T, d_t/2)
    ang_h = torch.outer(torch.arange(H, device=device).type_as(inv_h), inv_h)  # (H, d_h/2)
    ang_w = torch.outer(torch.arange(W, device=device).type_as(inv_w), inv_w)  # (W, d_w/2)
    grid = x.view(T, H, W, D)
    for start in range(0, T, frames_per_chunk):
        chunk = grid[start:start + frames_per_chunk]
        _rotate_(chunk[..., :d_t], ang_t[start:start + frames_per_chunk, None, None, :])
        _rotate_(chunk[..., d_t:d_t + d_h], ang_h[None, :, None, :])
        _rotate_(chunk[..., d_t + d_h:], ang_w[None, None, :, :])
    return x
