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


def operand_product(rows: torch.Tensor, cols: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Distances from operands: (..., n, D + 2) x (..., m, D + 2) -> (..., n, m), the product, clamp and root of
    `torch.cdist` (into `out` if given). Batch-1 3-D operands give the bits of a per-set `torch.cdist`."""
    with threads.wide(rows.numel() * cols.shape[-2]):
        return torch.matmul(rows, cols.mT, out=out).clamp_min_(0).sqrt_()


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

    def set_rows(self, b: int, members: torch.Tensor) -> torch.Tensor:
        """The (1, M, D + 2) row operands of frame b's rows `members` (M,), in a scratch buffer (dead once the next
        set's are taken)."""
        rows = self.operands()[0]
        out = scratch.take("set.rows", (members.numel(), rows.shape[-1]), rows.dtype, rows.device)
        return torch.index_select(rows[b], 0, members, out=out)[None]

    def set_cols(self, b: int, members: torch.Tensor, name: str = "set.cols") -> torch.Tensor:
        """The (1, M, D + 2) column operands of frame b's rows `members`, in the scratch buffer `name`."""
        cols = self.operands()[1]
        out = scratch.take(name, (members.numel(), cols.shape[-1]), cols.dtype, cols.device)
        return torch.index_select(cols[b], 0, members, out=out)[None]
