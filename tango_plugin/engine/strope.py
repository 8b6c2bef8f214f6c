"""Spatio-temporal RoPE on token features: the clustering space of Tango (docs/algorithm.md §3).

Each channel block (time, height, width) is rotated "rotate-half" style by the token's frame time in seconds,
its row and its column. Rotation preserves norms, so distances between rotated unit vectors are cosine
distances biased by the relative offsets (dt, dh, dw): the locality prior. The angle tables are built per
frame, row and column and broadcast, instead of per token as in the reference; every element is computed with
the same fp32 operations, so the result is bit-identical and needs no (T * L, D) cos/sin buffers.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import scratch


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


def _broadcast(a: Tuple[int, ...], b: Tuple[int, ...]) -> Tuple[int, ...]:
    """The broadcast shape of two shapes (`torch.broadcast_shapes` imports torch._refs, and with it sympy: about
    0.35 s on the first call of a process)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise RuntimeError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


def _rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate-half RoPE of `x` (..., d) in place by angles given as their `cos` and `sin` (..., d/2), which
    broadcast against x's leading dims.

    Per half: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, the same IEEE operations as the reference's
    ``x * cos + rotate_half(x) * sin`` (so bit-equal) with fewer full-size temporaries.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    shape = _broadcast(x1.shape, sin.shape)  # the products' temporaries live in scratch buffers
    x1_sin = torch.mul(x1, sin, out=scratch.take("rope.x1_sin", shape, x.dtype, x.device))
    x2_sin = torch.mul(x2, sin, out=scratch.take("rope.x2_sin", shape, x.dtype, x.device))
    x1.mul_(cos).sub_(x2_sin)
    x2.mul_(cos).add_(x1_sin)


class RopeTables:
    """The cos and sin of one video's angles, per frame (time section) and per cell (row and column sections),
    taken once per video: every token's angles are its frame's and its cell's rows of these tables, so each step
    that rotates tokens (`rotate_`) gathers rows instead of taking cos and sin of new angle tables. cos and sin act
    element by element, so the gathered rows have the bits of tables taken for those tokens alone."""

    def __init__(self, dim: int, t_pos: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 base_time: float = 10000.0, base_space: float = 1000.0) -> None:
        """t_pos: (T,) frame times; rows / cols: (L,) each cell's row and column."""
        self.sections = strope_sections(dim)
        d_t, d_h, d_w = self.sections
        device = t_pos.device
        inv_t = _inv_freq(d_t, base_time, device)
        inv_h, inv_w = _inv_freq(d_h, base_space, device), _inv_freq(d_w, base_space, device)
        angles = (torch.outer(t_pos.type_as(inv_t), inv_t), torch.outer(rows.to(device).type_as(inv_h), inv_h),
                  torch.outer(cols.to(device).type_as(inv_w), inv_w))
        self.time, self.row, self.col = ((a.cos(), a.sin()) for a in angles)

    def rotate_(self, x: torch.Tensor, frames: torch.Tensor, cells: "torch.Tensor | None" = None) -> torch.Tensor:
        """Rotate `x` (G, f, c, D) float32 in place: G groups of f frames (`frames` (G, f), indices into t_pos)
        with c tokens each (`cells` (G, c), indices into rows / cols, e.g. a video's segments, each with its
        cells; None: every cell in order, the tables as they are)."""
        d_t, d_h, _ = self.sections
        t_cos, t_sin = (table[frames][:, :, None] for table in self.time)
        if cells is None:
            h_cos, h_sin, w_cos, w_sin = (table[None, None] for table in self.row + self.col)
        else:
            h_cos, h_sin, w_cos, w_sin = (torch.index_select(table, 0, cells.flatten()).view(len(cells), 1, -1,
                                                                                              table.shape[1])
                                          for table in self.row + self.col)
        _rotate_(x[..., :d_t], t_cos, t_sin)
        _rotate_(x[..., d_t:d_t + d_h], h_cos, h_sin)
        _rotate_(x[..., d_t + d_h:], w_cos, w_sin)
        return x


def frame_times(num_frames: int, timestamps: Optional[torch.Tensor]) -> torch.Tensor:
    """Frame positions on the time axis: the timestamps (seconds) or 0..T-1, in float32 like the reference."""
    if timestamps is None:
        return torch.arange(num_frames).float()
    return torch.as_tensor(timestamps).float()


def apply_strope_(
    x: torch.Tensor,
    grid_hw: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    base_time: float = 10000.0,
    base_space: float = 1000.0,
    frames_per_chunk: int = 16,
) -> torch.Tensor:
    """Rotate a whole video `x` (T, L, D) float32 in place by (time, row, column) and return it.

    Args:
        x: (T, L, D) float32 features (Tango passes the L2-normalised copy).
        grid_hw: (H, W), L == H * W, raster order.
        timestamps: (T,) frame times in seconds; None -> 0..T-1.
        frames_per_chunk: frames rotated at once (bounds the temporaries).
    """
    T, L, _ = x.shape
    H, W = grid_hw
    cells = torch.arange(L, device=x.device)
    tables = RopeTables(x.shape[-1], frame_times(T, timestamps).to(x.device), cells // W, cells % W, base_time,
                        base_space)
    frames = torch.arange(T, device=x.device)
    for start in range(0, T, frames_per_chunk):
        tables.rotate_(x[start:start + frames_per_chunk][None], frames[start:start + frames_per_chunk][None])
    return x
