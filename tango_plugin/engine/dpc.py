"""DPC-KNN clustering, nearest-anchor assignment and cluster merging (docs/algorithm.md §4.3, §4.4 and §5).

Memory is bounded: beyond one tile (`TILE` points, or `max_block_elements`) no M x M matrix is built.
Distances are computed one tile at a time, and the result is the same as with the full matrix:

* the density rho needs each point's k + 1 nearest distances: running lists (M x (k + 1)) updated per tile;
* delta_i (distance to the nearest denser point): if one of i's k + 1 nearest points is denser, the first such
  is the nearest denser point overall (every point closer to i is in the list), so only "local peaks" (no
  denser point among their neighbours, typically a few percent) need a second, tiled pass over all points;
* the densest point gets the largest distance of the whole matrix, tracked per tile.

Determinism: the reference breaks density ties with unseeded noise (``rho + rand * 1e-6``). Here a point j is
denser than i when rho_j > rho_i, or rho_j == rho_i and j < i: a strict total order, the same every run.
"""

from __future__ import annotations

import math

import torch

# Side of the distance tiles: large enough for efficient matrix products, small enough that the
# upper-triangle saving matters from a few thousand points on.
TILE = 1024
# torch.cdist computes sets of at most this many points element by element (no matrix product): batched and
# per-item calls then give identical bits, so small sets are always batched.
CDIST_DIRECT_MAX = 25


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last dim, largest first; ties -> lower index first."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def _denser(rho_j: torch.Tensor, idx_j: torch.Tensor, rho_i: torch.Tensor, idx_i: torch.Tensor) -> torch.Tensor:
    return (rho_j > rho_i) | ((rho_j == rho_i) & (idx_j < idx_i))


def _density(knn_dists: torch.Tensor) -> torch.Tensor:
    # the first (smallest) entry is taken to be the point itself, as in the reference
    return (-(knn_dists[..., 1:] ** 2).mean(dim=-1)).exp()


def _neighbour_delta(rho: torch.Tensor, knn_d: torch.Tensor, knn_i: torch.Tensor, max_dist: torch.Tensor):
    """delta from each point's k+1 nearest (ascending) lists, and the "peaks" whose lists hold no denser point.

    If a denser point is in i's list, the first one is i's nearest denser point overall (every point closer to i
    is in the list). Peaks get `max_dist` here; the caller scans their whole rows (a few percent of the points).

    Args:
        rho: (B, M); knn_d / knn_i: (B, M, kk) distances and indices; max_dist: (B,).
    """
    B, M, kk = knn_i.shape
    idx = torch.arange(M, device=rho.device)
    rho_nb = torch.gather(rho, 1, knn_i.reshape(B, M * kk)).view(B, M, kk)
    denser_nb = _denser(rho_nb, knn_i, rho[..., None], idx[None, :, None])
    has_nb = denser_nb.any(dim=-1)
    first = denser_nb.to(torch.uint8).argmax(dim=-1, keepdim=True)
    delta = torch.where(has_nb, knn_d.gather(-1, first).squeeze(-1), max_dist[:, None])
    return delta, ~has_nb


def _dpc_full(x: torch.Tensor, cluster_num: int, k: int) -> torch.Tensor:
    B, M, _ = x.shape
    dist = torch.cdist(x, x)
    knn_d, knn_i = torch.topk(dist, min(k + 1, M), dim=-1, largest=False)
    rho = _density(knn_d)
    max_dist = dist.flatten(1).max(dim=1).values
    delta, peaks = _neighbour_delta(rho, knn_d, knn_i, max_dist)
    # Peaks take the nearest denser point over their whole row. The matrix is already there, so every row is
    # scanned and the peaks' values picked with `where`: the same values as gathering the peak rows, without the
    # host sync of finding them (one per call; the single-frame path calls this once per frame).
    idx = torch.arange(M, device=x.device)
    denser = _denser(rho[:, None, :], idx[None, None, :], rho[:, :, None], idx[None, :, None])  # (B, M, M)
    scanned = torch.where(denser, dist, max_dist[:, None, None]).min(dim=-1).values
    delta = torch.where(peaks, scanned, delta)
    return stable_topk(rho * delta, cluster_num)


def _augment(x: torch.Tensor):
    """Operands whose product is the squared distance, exactly as `torch.cdist` builds them (bit-equal rows)."""
    sq = x.pow(2).sum(dim=-1, keepdim=True)
    one = torch.ones_like(sq)
    return torch.cat([x.mul(-2), sq, one], dim=-1), torch.cat([x, one, sq], dim=-1)


def _distances(rows_aug: torch.Tensor, cols_aug: torch.Tensor) -> torch.Tensor:
    return (rows_aug @ cols_aug.T).clamp_min_(0).sqrt_()


def _merge_nearest(best_d, best_i, rows: slice, vals, inds, kk: int) -> None:
    d = torch.cat([best_d[rows], vals], dim=1)
    i = torch.cat([best_i[rows], inds], dim=1)
    d, pos = torch.topk(d, kk, dim=1, largest=False)
    best_d[rows], best_i[rows] = d, i.gather(1, pos)


def _dpc_tiled(x: torch.Tensor, cluster_num: int, k: int, tile: int, max_block_elements: int) -> torch.Tensor:
    """One point set (M, D) in tiles of `tile` x `tile` distances: same centres as `_dpc_full`.

    Distances are symmetric, so only tiles on and above the diagonal are computed (half the matrix products);
    each tile updates the running k+1 nearest lists of its rows and of its columns. A transposed tile can differ
    from the row-wise value in the last bit (`cdist` is not bit-symmetric), far below the reference's own 1e-6
    tie-break noise.
    """
    M = x.shape[0]
    kk = min(k + 1, M)
    rows_aug, cols_aug = _augment(x)
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
    rho = _density(best_d)
    idx = torch.arange(M, device=x.device)
    delta, peak_mask = _neighbour_delta(rho[None], best_d[None], best_i[None], max_dist.reshape(1))
    delta = delta[0]
    peaks = torch.nonzero(peak_mask[0]).flatten()
    peak_rows = max(1, min(tile, max_block_elements // M))
    for a in range(0, peaks.numel(), peak_rows):
        p = peaks[a:a + peak_rows]
        block = _distances(rows_aug[p], cols_aug)
        block = torch.where(_denser(rho[None, :], idx[None, :], rho[p][:, None], p[:, None]), block, max_dist)
        delta[p] = block.min(dim=-1).values
        del block
    return stable_topk(rho * delta, cluster_num)


def dpc_knn(x: torch.Tensor, cluster_num: int, k: int, max_block_elements: int = 1 << 24,
            per_item: bool = False) -> torch.Tensor:
    """Cluster centres by density peaks with a k-NN density.

    Args:
        x: (B, M, D) float32 points (B independent sets).
        cluster_num: centres to return per set (<= M).
        k: neighbours of the density estimate.
        max_block_elements: largest distance block materialised at once.
        per_item: compute each set's distances on its own (2-D products) rather than as one batched product.
            Both give the same centres up to last-bit rounding; per-item is what the reference does for
            single frames (and is faster on CPU for large sets), batched what it does for a segment's frames.

    Returns:
        (B, cluster_num) indices into M, by decreasing rho * delta (ties -> lower index).
    """
    B, M, _ = x.shape
    x = x.float()
    tile = max(32, min(TILE, math.isqrt(max_block_elements)))
    if M <= tile and B * M * M <= max_block_elements:
        if per_item and B > 1 and M > CDIST_DIRECT_MAX:
            return torch.cat([_dpc_full(x[b:b + 1], cluster_num, k) for b in range(B)])
        return _dpc_full(x, cluster_num, k)
    return torch.stack([_dpc_tiled(x[b], cluster_num, k, tile, max_block_elements) for b in range(B)])


def nearest_anchor(points: torch.Tensor, anchors: torch.Tensor, max_block_elements: int = 1 << 24,
                   per_item: bool = False) -> torch.Tensor:
    """Index of the nearest anchor (Euclidean; ties -> first anchor) for each point: (B, n, D), (B, m, D) -> (B, n).

    `per_item` as in `dpc_knn`.
    """
    B, n, _ = points.shape
    m = anchors.shape[1]
    if per_item and B > 1 and max(n, m) > CDIST_DIRECT_MAX:
        return torch.cat([nearest_anchor(points[b:b + 1], anchors[b:b + 1], max_block_elements) for b in range(B)])
    rows = max(1, max_block_elements // max(1, B * m))
    points, anchors = points.float(), anchors.float()
    if rows >= n:
        return torch.cdist(points, anchors).argmin(dim=-1)
    return torch.cat([torch.cdist(points[:, a:a + rows], anchors).argmin(dim=-1) for a in range(0, n, rows)], dim=1)


def merge_clusters(sources: torch.Tensor, assign: torch.Tensor, anchors: torch.Tensor, beta: float) -> torch.Tensor:
    """Pull each anchor towards the mean of the sources assigned to it.

    new_anchor = w * anchor + (1 - w) * mean(assigned), w = max(1 / n, beta): a singleton stays unchanged.
    Sums and counts are in float32 (the reference accumulates in the feature dtype); the result has the
    anchors' dtype.

    Args:
        sources: (B, P, D) raw features of the pool (anchors included).
        assign: (B, P) anchor index of each source.
        anchors: (B, m, D) raw features of the anchors.
    """
    B, P, D = sources.shape
    m = anchors.shape[1]
    flat = (assign + torch.arange(B, device=assign.device)[:, None] * m).flatten()
    sums = torch.zeros(B * m, D, dtype=torch.float32, device=sources.device)
    sums.index_add_(0, flat, sources.reshape(B * P, D).float())
    counts = torch.zeros(B * m, 1, dtype=torch.float32, device=sources.device)
    counts.index_add_(0, flat, torch.ones(B * P, 1, dtype=torch.float32, device=sources.device))
    means = sums / counts.clamp(min=1)
    w = (1.0 / counts.clamp(min=1)).clamp(min=beta)
    merged = w * anchors.reshape(B * m, D).float() + (1 - w) * means
    return merged.reshape(B, m, D).to(anchors.dtype)
