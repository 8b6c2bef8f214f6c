"""Float32 Euclidean distances with the bits of `torch.cdist` (docs/algorithm.md §4.5 and §12).

`torch.cdist` on more than 25 points squares each row, appends ``(|x|^2, 1)`` / ``(1, |x|^2)`` and takes one matrix
product. A row's squared norm does not depend on the other rows, so the operands of any subset of rows are those
rows of the whole set's operands: built once (`cdist_operands`, `FrameOperands`) and gathered, they give `cdist`'s
product bit for bit (tests/test_clustering.py checks the bits), without squaring the same rows once per call.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import scratch, threads


def cdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`torch.cdist(x, y)`, on the caller's threads when the product is large (engine/threads.py)."""
    with threads.wide(x.numel() * y.shape[-2]):
        return torch.cdist(x, y)


def cdist_operands(x: torch.Tensor, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Operands whose product is the squared distance, exactly as `torch.cdist` builds them (bit-equal rows:
    ``cat([-2 x, |x|^2, 1])`` and ``cat([x, 1, |x|^2])``), written into the scratch buffers `name`.*."""
    *lead, D = x.shape
    rows = scratch.take(name + ".rows", (*lead, D + 2), x.dtype, x.device)
    cols = scratch.take(name + ".cols", (*lead, D + 2), x.dtype, x.device)
    squares = torch.pow(x, 2, out=scratch.take(name + ".squares", x.shape, x.dtype, x.device))
    torch.sum(squares, dim=-1, keepdim=True, out=rows[..., D:D + 1])
    torch.mul(x, -2, out=rows[..., :D])
    rows[..., D + 1] = 1
    cols[..., :D] = x
    cols[..., D] = 1
    cols[..., D + 1:] = rows[..., D:D + 1]
    return rows, cols


def per_set_products(rows: torch.Tensor, cols: torch.Tensor, name: str) -> torch.Tensor:
    """Distances of B sets from their operands, (B, n, D + 2) x (B, m, D + 2) -> (B, n, m) in the scratch buffer
    `name`: one product per set (the bits of per-set `torch.cdist` calls: a batched product's may differ), then one
    clamp and root for all of them (element-wise, so the same bits)."""
    B, n, _ = rows.shape
    out = scratch.take(name, (B, n, cols.shape[1]), rows.dtype, rows.device)
    with threads.wide(rows[:1].numel() * cols.shape[1]):
        for b in range(B):
            torch.matmul(rows[b:b + 1], cols[b:b + 1].mT, out=out[b:b + 1])
    return out.clamp_min_(0).sqrt_()


class FrameOperands:
    """`torch.cdist`'s operands of every row of B frames, built on first use and shared by every distance matrix
    taken among those rows (the single-frame path: docs/algorithm.md §4.5, "One set of operands per frame")."""

    def __init__(self, x: torch.Tensor, name: str = "frames") -> None:
        """x: (B, n, D) float32 points; `name`: of the scratch buffers holding the operands."""
        self.x, self.name = x, name
        self._rows: Optional[torch.Tensor] = None
        self._cols: Optional[torch.Tensor] = None

    def operands(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._rows is None:
            self._rows, self._cols = cdist_operands(self.x, self.name)
        return self._rows, self._cols
