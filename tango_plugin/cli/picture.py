"""A picture of what was kept: one tile per frame, saliency in grey, kept tokens in green (PNG, no extra deps)."""

from __future__ import annotations

import struct
import zlib
from typing import Optional, Sequence

import torch


def _png(path: str, rgb: torch.Tensor) -> None:
    """Write an (H, W, 3) uint8 tensor as PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].contiguous().numpy().tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def kept_map_png(path: str, saliency: torch.Tensor, grid_hw: Sequence[int], kept_indices: torch.Tensor,
                 cell: int = 8, columns: Optional[int] = None) -> str:
    """Draw the kept tokens of a (T, L) video grid to `path` and return it.

    Args:
        saliency: (T, L) scores (shown as grey levels, normalised per frame).
        grid_hw: (H, W) with L == H * W.
        kept_indices: flat indices t * L + i that were kept (shown in green).
        cell: pixels per token.
        columns: frames per row of the sheet (default: about square).
    """
    T, L = saliency.shape
    H, W = grid_hw
    kept = torch.zeros(T * L, dtype=torch.bool)
    kept[kept_indices.cpu()] = True
    kept = kept.view(T, H, W)
    sal = saliency.detach().float().cpu()
    sal = (sal - sal.min(dim=1, keepdim=True).values) / (sal.max(dim=1, keepdim=True).values
                                                         - sal.min(dim=1, keepdim=True).values).clamp(min=1e-12)
    grey = (40 + 140 * sal.view(T, H, W)).to(torch.uint8)
    cols = columns or max(1, int(round(T ** 0.5)))
    rows = (T + cols - 1) // cols
    pad = 2
    sheet = torch.full((rows * (H * cell + pad) + pad, cols * (W * cell + pad) + pad, 3), 255, dtype=torch.uint8)
    for t in range(T):
        tile = grey[t][:, :, None].expand(H, W, 3).clone()
        tile[kept[t]] = torch.tensor([40, 200, 70], dtype=torch.uint8)
        tile = tile.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        y, x = pad + (t // cols) * (H * cell + pad), pad + (t % cols) * (W * cell + pad)
        sheet[y:y + H * cell, x:x + W * cell] = tile
    _png(path, sheet)
    return path
