"""The paper's DPC-KNN and cluster merge, on a whole distance matrix (docs/algorithm.md §4.3, §4.4 and §5).

This is the plain algorithm and, through `clustering.plain_cluster`, the oracle every faster route is tested
against (tests/test_clustering.py). The routes that never build an M x M matrix (engine/dpc_tiled.py,
engine/dpc_screened.py) reuse `density`, `denser` and `neighbour_delta` so that the rules live here only.

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


def dpc_of_distances(dist: torch.Tensor, cluster_num: int, k: int) -> torch.Tensor:
    """Centres of B sets from their whole (B, M, M) distance matrices: by decreasing rho * delta (ties -> lower
    index), delta_i being the distance to the nearest denser point (the largest distance for the densest)."""
    B, M, _ = dist.shape
    rho = density(torch.topk(dist, min(k + 1, M), dim=-1, largest=False).values)
    idx = torch.arange(M, device=dist.device)
    is_denser = denser(rho[:, None, :], idx[None, None, :], rho[:, :, None], idx[None, :, None])  # [b, i, j]
    max_dist = dist.flatten(1).max(dim=1).values
    delta = torch.where(is_denser, dist, max_dist[:, None, None]).min(dim=-1).values
    return stable_topk(rho * delta, cluster_num)


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
    sums = torch.zeros(B * m, D, dtype=torch.float32, device=sources.device)
    sums.index_add_(0, flat, sources.reshape(B * P, D).float())
    counts = torch.zeros(B * m, 1, dtype=torch.float32, device=sources.device)
    counts.index_add_(0, flat, torch.ones(B * P, 1, dtype=torch.float32, device=sources.device))
    means = sums / counts.clamp(min=1)
    w = (1.0 / counts.clamp(min=1)).clamp(min=beta)
    merged = w * anchors.reshape(B * m, D).float() + (1 - w) * means
    return merged.reshape(B, m, D).to(anchors.dtype)
