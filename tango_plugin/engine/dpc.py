"""The paper's DPC-KNN and cluster merge, on a whole distance matrix (docs/algorithm.md §4.3, §4.4 and §5).

`plain_dpc_of_distances` is the algorithm as plainly as its rules read and, through `clustering.plain_cluster`,
the oracle every faster route is tested against (tests/test_clustering.py). `dpc_of_distances` is the same on the
routes' matrices with fewer passes (a two-stage selection of the nearest, a rank test for "denser"); the routes that
never build an M x M matrix (engine/dpc_tiled.py, engine/dpc_screened.py) reuse `density`, `denser` and
`neighbour_delta`, so the rules live here only.

Determinism: the reference breaks density ties with unseeded noise (``rho + rand * 1e-6``). Here a point j is
denser than i when rho_j > rho_i, or rho_j == rho_i and j < i: a strict total order, the same every run.
"""

from __future__ import annotations

import math

import torch

from . import scratch

# Side of the distance tiles: large enough for efficient matrix products, small enough that the
# upper-triangle saving matters from a few thousand points on.
TILE = 1024
# torch.cdist computes sets of at most this many points element by element (no matrix product): batched and
# per-item calls then give identical bits, so small sets are always batched.
CDIST_DIRECT_MAX = 25


def tile_size(max_block_elements: int) -> int:
    """Side of the distance tiles under a memory bound; sets larger than one tile never build an M x M matrix."""
    return max(32, min(TILE, math.isqrt(max_block_elements)))


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last dim, largest first; ties -> lower index first."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def denser(rho_j: torch.Tensor, idx_j: torch.Tensor, rho_i: torch.Tensor, idx_i: torch.Tensor) -> torch.Tensor:
    """Whether point j is denser than point i (broadcasting): rho_j > rho_i, ties -> the lower index."""
    return (rho_j > rho_i) | ((rho_j == rho_i) & (idx_j < idx_i))


def density(knn_dists: torch.Tensor) -> torch.Tensor:
    """rho = exp(-mean of the squared distances to the k nearest), from the k + 1 nearest distances ascending:
    the first (smallest) entry is taken to be the point itself, as in the reference."""
    return (-(knn_dists[..., 1:] ** 2).mean(dim=-1)).exp()


def denser_rank(rho: torch.Tensor) -> torch.Tensor:
    """Each point's position in the `denser` order along the last dim (0 = densest): j is denser than i exactly
    when rank_j < rank_i, since a stable descending sort puts higher rho first and equal rho in index order. (For
    densities that are not NaN; DPC's densities are exp of finite or infinite values, never NaN for finite
    distances.)"""
    order = torch.sort(rho, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(rho.shape[-1], device=rho.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


# Columns per group in `smallest_sorted`'s first stage (fastest of 4..16 on rows of 184 and 368).
SELECT_GROUP = 4


def smallest_sorted(x: torch.Tensor, kk: int) -> torch.Tensor:
    """The kk smallest values of each row of `x` (last dim), ascending: ``torch.topk(x, kk, largest=False).values``
    with fewer elements through `topk`, whose cost grows with the row length (a row of 368 distances: 1.3 us).

    The row's first g * q columns (g = SELECT_GROUP) form q groups of g, group j holding columns j, j + q, ...;
    the kk groups with the smallest minima, plus the columns left over, hold the kk smallest values of the row
    with their multiplicities: a value outside them is at least the kk-th smallest group minimum, and those kk
    minima are kk values of the candidates no larger than it. So `topk` over q minima and then over
    kk * g + (n - g * q) candidates gives the same values (rows without NaN).
    """
    n = x.shape[-1]
    q = n // SELECT_GROUP
    if q <= kk or kk * SELECT_GROUP >= n // 2:
        return torch.topk(x, kk, dim=-1, largest=False).values
    groups = x[..., :q * SELECT_GROUP].unflatten(-1, (SELECT_GROUP, q))  # [..., t, j]: column t * q + j
    minima = torch.amin(groups, dim=-2, out=scratch.take("select.minima", groups.shape[:-2] + (q,), x.dtype,
                                                          x.device))
    picked = torch.topk(minima, kk, dim=-1, largest=False, sorted=False).indices
    candidates = torch.gather(groups, -1, picked[..., None, :].expand(groups.shape[:-1] + (kk,))).flatten(-2)
    if n > q * SELECT_GROUP:
        candidates = torch.cat([candidates, x[..., q * SELECT_GROUP:]], dim=-1)
    return torch.topk(candidates, kk, dim=-1, largest=False).values


def plain_dpc_of_distances(dist: torch.Tensor, cluster_num: int, k: int) -> torch.Tensor:
    """The paper's DPC-KNN on whole (B, M, M) distance matrices, written as plainly as the rules read: the oracle
    (`clustering.plain_cluster`) that `dpc_of_distances` and every route are tested against."""
    B, M, _ = dist.shape
    rho = density(torch.topk(dist, min(k + 1, M), dim=-1, largest=False).values)
    idx = torch.arange(M, device=dist.device)
    is_denser = denser(rho[:, None, :], idx[None, None, :], rho[:, :, None], idx[None, :, None])  # [b, i, j]
    max_dist = dist.flatten(1).max(dim=1).values
    delta = torch.where(is_denser, dist, max_dist[:, None, None]).min(dim=-1).values
    return stable_topk(rho * delta, cluster_num)


def dpc_of_distances(dist: torch.Tensor, cluster_num: int, k: int) -> torch.Tensor:
    """Centres of B sets from their whole (B, M, M) distance matrices: by decreasing rho * delta (ties -> lower
    index), delta_i being the distance to the nearest denser point (the largest distance for the densest).

    The denser test is one comparison of ranks (`denser_rank`), and `amin` / `amax` take no indices: the values of
    the plain formulation (`denser` on every pair, `min` / `max`) with fewer passes over the matrix.
    """
    B, M, _ = dist.shape
    rho = density(smallest_sorted(dist, min(k + 1, M)))
    rank = denser_rank(rho)
    # [b, i, j]: j denser than i; the mask and the masked matrix in scratch buffers (fresh ones would be faulted in)
    is_denser = torch.lt(rank[:, None, :], rank[:, :, None],
                         out=scratch.take("dpc.denser", dist.shape, torch.bool, dist.device))
    max_dist = dist.flatten(1).amax(dim=1)
    masked = torch.where(is_denser, dist, max_dist[:, None, None],
                         out=scratch.take("dpc.masked", dist.shape, dist.dtype, dist.device))
    return stable_topk(rho * masked.amin(dim=-1), cluster_num)


def neighbour_delta(rho: torch.Tensor, knn_d: torch.Tensor, knn_i: torch.Tensor, max_dist: torch.Tensor):
    """delta from each point's k + 1 nearest lists (ascending), and the "peaks" whose lists hold no denser point.

    If a denser point is in i's list, the first one is i's nearest denser point overall (every point closer to i
    is in the list): the value `dpc_of_distances` takes from the whole row. Peaks get `max_dist` here; the caller
    scans their rows (a few percent of the points).

    Args:
        rho: (B, M); knn_d / knn_i: (B, M, kk) distances and indices; max_dist: (B,).
    """
    B, M, kk = knn_i.shape
    idx = torch.arange(M, device=rho.device)
    rho_nb = torch.gather(rho, 1, knn_i.reshape(B, M * kk)).view(B, M, kk)
    denser_nb = denser(rho_nb, knn_i, rho[..., None], idx[None, :, None])
    has_nb = denser_nb.any(dim=-1)
    first = denser_nb.to(torch.uint8).argmax(dim=-1, keepdim=True)
    delta = torch.where(has_nb, knn_d.gather(-1, first).squeeze(-1), max_dist[:, None])
    return delta, ~has_nb


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
    recorded = torch.is_grad_enabled() and (sources.requires_grad or anchors.requires_grad)
    if recorded:
        sums = torch.zeros(B * m, D, dtype=torch.float32, device=sources.device)
    else:  # a scratch buffer (a fresh one would be faulted in on the CPU), updated in place below
        sums = scratch.take("merge.sums", (B * m, D), torch.float32, sources.device).zero_()
    sums.index_add_(0, flat, scratch.float32_copy(sources.reshape(B * P, D), "merge.sources"))
    # counts are small integers, exact in float32 whichever way they are summed
    counts = torch.bincount(flat, minlength=B * m).to(torch.float32)[:, None].clamp_(min=1)
    w = (1.0 / counts).clamp_(min=beta)
    own = anchors.reshape(B * m, D).float()
    if recorded:
        merged = w * own + (1 - w) * (sums / counts)
    else:  # the same operations, the mean's two written over `sums`; `merged` is fresh (it is returned)
        merged = (w * own).add_(sums.div_(counts).mul_(1 - w))
    return merged.reshape(B, m, D).to(anchors.dtype)
