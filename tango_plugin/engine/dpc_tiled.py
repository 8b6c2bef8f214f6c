"""DPC-KNN of one large point set in float32 distance tiles: no M x M matrix (docs/algorithm.md §5).

The `tiled` route of engine/clustering.py, for sets larger than one tile when the screened route cannot run
(`distance_screen="off"`, no canonical kernel, values the screening bound does not cover). Same centres as
`dpc.dpc_of_distances` on the whole matrix:

* the density needs each point's k + 1 nearest distances: running lists (M x (k + 1)) updated per tile;
* delta: `dpc.neighbour_delta` answers every point whose list holds a denser point; only the "peaks" (typically a
  few percent) take a second, tiled pass over all points;
* the densest point gets the largest distance of the whole matrix, tracked per tile.
"""

from __future__ import annotations

import torch

from . import threads
from .distances import cdist_operands
from .dpc import denser, density, neighbour_delta, stable_topk


def _distances(rows_aug: torch.Tensor, cols_aug: torch.Tensor) -> torch.Tensor:
    with threads.wide(rows_aug.numel() * cols_aug.shape[0]):
        return (rows_aug @ cols_aug.T).clamp_min_(0).sqrt_()


def _merge_nearest(best_d, best_i, rows: slice, vals, inds, kk: int) -> None:
    d = torch.cat([best_d[rows], vals], dim=1)
    i = torch.cat([best_i[rows], inds], dim=1)
    d, pos = torch.topk(d, kk, dim=1, largest=False)
    best_d[rows], best_i[rows] = d, i.gather(1, pos)


def tiled_centres(x: torch.Tensor, cluster_num: int, k: int, tile: int, max_block_elements: int) -> torch.Tensor:
    """Centres of one point set (M, D) from `tile` x `tile` distance blocks.

    Distances are symmetric, so only tiles on and above the diagonal are computed (half the matrix products);
    each tile updates the running k+1 nearest lists of its rows and of its columns. A transposed tile can differ
    from the row-wise value in the last bit (`cdist` is not bit-symmetric), far below the reference's own 1e-6
    tie-break noise.
    """
    M = x.shape[0]
    kk = min(k + 1, M)
    rows_aug, cols_aug = cdist_operands(x, "tiles")
    best_d = torch.full((M, kk), float("inf"), dtype=x.dtype, device=x.device)
    best_i = torch.full((M, kk), -1, dtype=torch.long, device=x.device)
    max_dist = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    for a in range(0, M, tile):
        ra = slice(a, min(a + tile, M))
        for b in range(a, M, tile):
            rb = slice(b, min(b + tile, M))
            block = _distances(rows_aug[ra], cols_aug[rb])
            max_dist = torch.maximum(max_dist, block.max())
            vals, inds = torch.topk(block, min(kk, block.shape[1]), dim=1, largest=False)
            _merge_nearest(best_d, best_i, ra, vals, inds + b, kk)
            if b != a:
                vals, inds = torch.topk(block, min(kk, block.shape[0]), dim=0, largest=False)
                _merge_nearest(best_d, best_i, rb, vals.T, inds.T + a, kk)
            del block
    rho = density(best_d)
    idx = torch.arange(M, device=x.device)
    delta, peak_mask = neighbour_delta(rho[None], best_d[None], best_i[None], max_dist.reshape(1))
    delta = delta[0]
    peaks = torch.nonzero(peak_mask[0]).flatten()
    peak_rows = max(1, min(tile, max_block_elements // M))
    for a in range(0, peaks.numel(), peak_rows):
        p = peaks[a:a + peak_rows]
        block = _distances(rows_aug[p], cols_aug)
        block = torch.where(denser(rho[None, :], idx[None, :], rho[p][:, None], p[:, None]), block, max_dist)
        delta[p] = block.min(dim=-1).values
        del block
    return stable_topk(rho * delta, cluster_num)
