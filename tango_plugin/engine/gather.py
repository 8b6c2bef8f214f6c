"""Row gathers of the engine, into scratch buffers where the rows are decision data (docs/algorithm.md §12)."""

from __future__ import annotations

from typing import Optional

import torch

from . import scratch, threads


def rows_of(x: torch.Tensor, idx: torch.Tensor, name: Optional[str] = None) -> torch.Tensor:
    """x[b, idx[b]] for (B, n, D) x and (B, k) idx -> (B, k, D); a row copy (index_select: about twice as fast as
    advanced indexing on large row sets, the same values), in the scratch buffer `name` as `gathered` says."""
    B, n, D = x.shape
    flat = (idx + torch.arange(B, device=idx.device)[:, None] * n).flatten()
    return gathered(x.reshape(B * n, D), flat, name).view(B, idx.shape[1], D)


def gathered(flat: torch.Tensor, idx: torch.Tensor, name: Optional[str] = None) -> torch.Tensor:
    """flat[idx] (rows of a 2-D tensor): in the scratch buffer `name` (a view), or a fresh tensor when no name is
    given or autograd records the gather (the feature path of a training forward)."""
    if name is None or (flat.requires_grad and torch.is_grad_enabled()):
        return torch.index_select(flat, 0, idx)
    out = scratch.take(name, (idx.numel(), flat.shape[1]), flat.dtype, flat.device)
    with threads.wide(out.numel(), threads.WIDE_MIN_ELEMENTS):
        return torch.index_select(flat.detach(), 0, idx, out=out)
