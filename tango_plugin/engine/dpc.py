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
from typing import Optional, Tuple

import torch

from . import scratch, screening, threads
from .screening import PointSet

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
    return _dpc_of_distances(_cdist(x, x), cluster_num, k)


def _dpc_of_distances(dist: torch.Tensor, cluster_num: int, k: int) -> torch.Tensor:
    """Centres from the whole (B, M, M) distance matrices (by decreasing rho * delta)."""
    B, M, _ = dist.shape
    knn_d, knn_i = torch.topk(dist, min(k + 1, M), dim=-1, largest=False)
    rho = _density(knn_d)
    max_dist = dist.flatten(1).max(dim=1).values
    delta, peaks = _neighbour_delta(rho, knn_d, knn_i, max_dist)
    # Peaks take the nearest denser point over their whole row. The matrix is already there, so every row is
    # scanned and the peaks' values picked with `where`: the same values as gathering the peak rows, without the
    # host sync of finding them (one per call; the single-frame path calls this once per frame).
    idx = torch.arange(M, device=dist.device)
    denser = _denser(rho[:, None, :], idx[None, None, :], rho[:, :, None], idx[None, :, None])  # (B, M, M)
    scanned = torch.where(denser, dist, max_dist[:, None, None]).min(dim=-1).values
    delta = torch.where(peaks, scanned, delta)
    return stable_topk(rho * delta, cluster_num)


def _augment(x: torch.Tensor, name: str):
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


def _distances(rows_aug: torch.Tensor, cols_aug: torch.Tensor) -> torch.Tensor:
    with threads.wide(rows_aug.numel() * cols_aug.shape[0]):
        return (rows_aug @ cols_aug.T).clamp_min_(0).sqrt_()


def _cdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`torch.cdist(x, y)`, on the caller's threads when the product is large (engine/threads.py)."""
    with threads.wide(x.numel() * y.shape[-2]):
        return torch.cdist(x, y)


class FrameOperands:
    """`torch.cdist`'s matrix-product operands of every row of B frames, built once and shared by every distance
    matrix the single-frame path takes among those rows (docs/algorithm.md §4.5, "One set of operands per frame").

    `torch.cdist(x[i], x[j])` on more than 25 rows squares each row, appends `(|x|^2, 1)` and `(1, |x|^2)` and takes
    one batch-1 matrix product. A row's squared norm does not depend on the other rows, so the operands of any row
    subset are those rows of the whole frame's operands: gathered into fresh (aligned, contiguous) tensors, they give
    `cdist`'s product bit for bit, without squaring, concatenating and scaling the same rows once per call
    (`tests/test_engine.py` checks the bits against `torch.cdist`).
    """

    def __init__(self, x: torch.Tensor, name: str = "frames") -> None:
        """x: (B, n, D) float32 points (the rotated clustering features of B frames); `name`: of the scratch
        buffers holding the operands."""
        self.rows, self.cols = _augment(x, name)

    def set_rows(self, b: int, members: torch.Tensor) -> torch.Tensor:
        """The (1, M, D + 2) row operands of frame b's rows `members` (M,), in a scratch buffer (dead once the next
        set's are taken)."""
        rows = scratch.take("set.rows", (members.numel(), self.rows.shape[-1]), self.rows.dtype, self.rows.device)
        return torch.index_select(self.rows[b], 0, members, out=rows)[None]

    def set_operands(self, b: int, members: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (1, M, D + 2) row and column operands of frame b's rows `members` (M,), as `set_rows`."""
        cols = scratch.take("set.cols", (members.numel(), self.cols.shape[-1]), self.cols.dtype, self.cols.device)
        return self.set_rows(b, members), torch.index_select(self.cols[b], 0, members, out=cols)[None]


def _cdist_product(rows: torch.Tensor, cols: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`torch.cdist` from its operands (1, n, D + 2), (1, m, D + 2): the same batch-1 product, clamp and root (into
    `out` if given)."""
    with threads.wide(rows.numel() * cols.shape[-2]):
        return torch.matmul(rows, cols.mT, out=out).clamp_min_(0).sqrt_()


def cluster_frames(ops: FrameOperands, members: torch.Tensor, cluster_num: int, k: int,
                   ascending_anchors: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN centres and nearest-centre assignment of B point sets, as `dpc_knn(per_item=True)` followed by
    `nearest_anchor(per_item=True)` give them, from one set of operands per frame.

    The distance products are taken one set at a time (the bits of per-set `torch.cdist`); everything after them
    works row by row or set by set, so it runs once for the whole batch.

    Args:
        ops: the frames' operands; members: (B, M) rows of each frame forming its set (CDIST_DIRECT_MAX < M,
            M * M within one distance block: `cluster_frames_applies`), or None: every row (B == 1).
        ascending_anchors: assign to the centres sorted by index (else in density order).

    Returns:
        (centres (B, cluster_num) in density order, assignment (B, M) into the anchors as ordered).
    """
    whole = members is None  # the set is the operands' only frame, every row in order: no gather needed
    if whole:
        members = torch.arange(ops.rows.shape[1], device=ops.rows.device)[None]
    B, M = members.shape
    dist = scratch.take("frames.dist", (B, M, M), ops.rows.dtype, ops.rows.device)
    for b in range(B):
        rows, cols = (ops.rows, ops.cols) if whole else ops.set_operands(b, members[b])
        _cdist_product(rows, cols, out=dist[b:b + 1])
    centers = _dpc_of_distances(dist, cluster_num, k)
    anchors = centers.sort(dim=1).values if ascending_anchors else centers
    to_anchors = scratch.take("frames.anchor_dist", (B, M, cluster_num), ops.rows.dtype, ops.rows.device)
    for b in range(B):
        rows = ops.rows if whole else ops.set_rows(b, members[b])
        anchor_cols = torch.index_select(ops.cols[b], 0, members[b][anchors[b]])[None]
        _cdist_product(rows, anchor_cols, out=to_anchors[b:b + 1])
    return centers, to_anchors.argmin(dim=-1)


def cluster_small(x: torch.Tensor, cluster_num: int, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """`dpc_knn` then `nearest_anchor` (anchors in density order) for B sets of at most CDIST_DIRECT_MAX points, from
    one `torch.cdist`: on sets that small it computes every pair on its own (no matrix product), so the distances to
    the anchors are columns of the set's own distance matrix, bit for bit."""
    dist = _cdist(x, x)
    centers = _dpc_of_distances(dist, cluster_num, k)
    to_anchors = torch.gather(dist, 2, centers[:, None, :].expand(-1, x.shape[1], -1))
    return centers, to_anchors.argmin(dim=-1)


def cluster_frames_applies(M: int, max_block_elements: int) -> bool:
    """Whether `cluster_frames` gives what the per-set `torch.cdist` calls give for sets of M points: they use the
    matrix product (more than CDIST_DIRECT_MAX points) and fit one distance block (no tiles)."""
    return CDIST_DIRECT_MAX < M <= tile_size(max_block_elements) and M * M <= max_block_elements


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
    rows_aug, cols_aug = _augment(x, "tiles")
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


# Peaks screened at once against the denser points (`_screened_peak_deltas`): small blocks follow the ranks closely.
PEAK_BLOCK = 64
# Candidates per peak taken without a host read; a peak with more (near-ties) is screened again, widened.
PEAK_CANDIDATES = 32
# Columns per group of the screened k-nearest pass: each row keeps the k + 1 smallest group minima (upper bounds
# of its k + 1 nearest), a much cheaper reduction than a top-k over every entry.
GROUP = 8


def _tiles(M: int, tile: int):
    for a in range(0, M, tile):
        for b in range(a, M, tile):
            yield slice(a, min(a + tile, M)), slice(b, min(b + tile, M))


def _group_minima(A: torch.Tensor) -> torch.Tensor:
    """(r, n) -> (r, ceil(n / GROUP)) minima of consecutive column groups (a max-pool of -A: about twice as fast
    as an amin over groups of 8 innermost elements; exact either way)."""
    return torch.nn.functional.max_pool1d(A.neg()[None], GROUP, ceil_mode=True)[0].neg_()


def _keep_smallest(lists: torch.Tensor, rows, new: torch.Tensor, kk: int) -> None:
    lists[rows] = torch.topk(torch.cat([lists[rows], new], dim=1), kk, dim=1, largest=False).values


def _pair_lists(rows: torch.Tensor, cols: torch.Tensor, M: int, values: Optional[torch.Tensor] = None):
    """Flat (row, col) pairs -> (M, w) column lists padded with -1 (valid entries first, in pair order within a
    row), their valid mask, and `values` laid out the same way (+inf padding)."""
    order = torch.sort(rows, stable=True).indices
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=M)
    start = torch.cumsum(counts, 0) - counts
    width = max(1, int(counts.max())) if rows.numel() else 1
    pos = torch.arange(rows.numel(), device=rows.device) - start[rows]
    lists = torch.full((M, width), -1, dtype=torch.long, device=rows.device)
    lists[rows, pos] = cols
    laid = None
    if values is not None:
        laid = torch.full((M, width), float("inf"), dtype=values.dtype, device=values.device)
        laid[rows, pos] = values[order]
    return lists, lists >= 0, laid


def _pair_distances(ps: PointSet, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Canonical distances of flat pairs, each unordered pair computed once (the kernel is symmetric, checked at
    start-up). Every row's product also holds the row itself: its canonical squared norm dot(i, i), so that a
    point's distance to itself is exactly 0."""
    M = ps.x.shape[0]
    idx = torch.arange(M, device=rows.device)
    lo, hi = torch.minimum(rows, cols), torch.maximum(rows, cols)
    keys, inverse = torch.unique(torch.cat([lo * M + hi, idx * M + idx]), return_inverse=True)  # by lo, then hi
    inverse = inverse[:rows.numel()]
    ulo, uhi = keys // M, keys % M  # every (i, i) is there, first among row i's pairs
    lists, valid, _ = _pair_lists(ulo, uhi, M)
    dots = screening.list_dots(ps, idx, ps, lists, valid)
    ps.sq64 = dots[:, 0].clone()
    d = screening.combine(ps.sq64, ps.sq64[lists.clamp_min(0)], dots)
    return d[valid][inverse]  # row-major = (lo, hi) order = the order of `keys`


# Candidate entries kept per row of a tile without a host read (`torch.nonzero_static`); a tile with more is
# redone with exact-size reads (checked once, after the pass).
CANDIDATES_PER_ROW = 32
# Tiles between two compactions of the kept entries (one host read each): the padded lists of at most this many
# tiles are held at once.
COMPACT_EVERY = 16


def _compact(rows: list, cols: list, vals: list, limit: torch.Tensor):
    """The kept entries still under their row's limit, as one-element lists (limits only decrease)."""
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    keep = torch.nonzero(vals <= limit[rows]).flatten()
    return [rows[keep]], [cols[keep]], [vals[keep]]


def _tile_candidates(mask: torch.Tensor, A: torch.Tensor, cap: Optional[int], counts: list):
    """(rows, cols, values) of the True entries of `mask`: all of them (`cap` None, one host read), or the first
    `cap` without a host read (padding: value +inf; `counts` gets whether all `cap` slots were taken, for the
    overflow check)."""
    if cap is None:
        r, c = torch.nonzero(mask, as_tuple=True)
        return r, c, A[r, c]
    idx = torch.nonzero_static(mask, size=cap, fill_value=-1)
    counts.append(idx[-1, 0] >= 0)  # the last slot taken: there may have been more (redone if so)
    r, c = idx[:, 0], idx[:, 1]
    padding = r < 0
    r, c = r.clamp_min(0), c.clamp_min(0)
    return r, c, A[r, c].masked_fill_(padding, float("inf"))


def _add_candidates(rows: list, cols: list, vals: list, A: torch.Tensor, limit: torch.Tensor, ra: slice, rb: slice,
                    per_row: Optional[int], counts: list) -> None:
    """The entries of tile A (rows ra x columns rb of the upper triangle) under their row's limit, both ways round
    (an off-diagonal tile also lists each entry under its column's limit, as the pair (column, row)); at most
    `per_row` per row on average without a host read (`_tile_candidates`), or all of them (`per_row` None)."""
    na, nb = ra.stop - ra.start, rb.stop - rb.start
    r, c, v = _tile_candidates(A <= limit[ra, None], A, None if per_row is None else per_row * na, counts)
    rows.append(r + ra.start), cols.append(c + rb.start), vals.append(v)
    if rb.start != ra.start:
        r, c, v = _tile_candidates(A <= limit[None, rb], A, None if per_row is None else per_row * nb, counts)
        rows.append(c + rb.start), cols.append(r + ra.start), vals.append(v)


def _knn_limit(uppers: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Per row, the largest screened value a candidate for the k + 1 nearest can have: its interval must reach
    below the (k + 1)-th upper end."""
    return screening.margin(uppers[:, -1] + bound) + bound


def _screened_knn(ps: PointSet, kk: int, tile: int, exact_sizes: bool = False):
    """k + 1 nearest (canonical distances ascending, ties -> lower index) and a floor of the largest canonical
    distance, from one screening pass over the upper tiles (docs/algorithm.md §11.3).

    Each tile updates every row's k + 1 smallest group minima (so, `bound`-widened, an upper bound of its k + 1-th
    nearest canonical distance that only decreases) and keeps the entries under the current threshold; the
    entries still under the final threshold are the candidates, and only they are computed canonically.
    """
    M = ps.x.shape[0]
    dev = ps.x.device
    bound = ps.row_bound()
    bound_all = bound.max()
    uppers = torch.full((M, kk), float("inf"), device=dev)
    rows, cols, vals, counts, owners = [], [], [], [], []
    top = torch.tensor(float("-inf"), device=dev)
    tiles = list(_tiles(M, tile))
    for t, (ra, rb) in enumerate(tiles):
        na, nb = ra.stop - ra.start, rb.stop - rb.start
        A = screening.approx_sq(ps, ra, ps, rb)
        _keep_smallest(uppers, ra, _group_minima(A), kk)
        if rb.start != ra.start:  # column groups: minima over consecutive rows
            _keep_smallest(uppers, rb, _group_minima(A.T.contiguous()) if na % GROUP else
                           A.view(na // GROUP, GROUP, nb).amin(dim=1).T, kk)
        limit = _knn_limit(uppers, bound)  # this row's candidates so far: a <= limit
        _add_candidates(rows, cols, vals, A, limit, ra, rb, None if exact_sizes else CANDIDATES_PER_ROW, counts)
        owners.extend([t] * (len(counts) - len(owners)))
        top = torch.maximum(top, A.max())
        if len(vals) >= 2 * COMPACT_EVERY:  # drop what the current limits already exclude (bounded memory)
            rows, cols, vals = _compact(rows, cols, vals, limit)
    limit = _knn_limit(uppers, bound)
    # tiles that had more candidates than they kept (near-duplicate points: many near-ties) are taken again, whole,
    # under the final limits (only lower than the limits they were taken under): every entry under the final
    # limits is then listed, as in one pass with exact sizes, with no second pass over the other tiles
    overflowed = sorted({t for t, full in zip(owners, torch.stack(counts).tolist()) if full}) if counts else []
    for t in overflowed:
        ra, rb = tiles[t]
        _add_candidates(rows, cols, vals, screening.approx_sq(ps, ra, ps, rb), limit, ra, rb, None, [])
    rows, cols, _ = _compact(rows, cols, vals, limit)
    rows, cols = rows[0], cols[0]
    if overflowed:  # an overflowed tile's first entries are listed twice
        keys = torch.unique(rows * M + cols)
        rows, cols = keys // M, keys % M
    lists, _, d = _pair_lists(rows, cols, M, _pair_distances(ps, rows, cols))
    knn_d, knn_i = screening.sorted_by_distance(d, lists)
    # the largest canonical distance is at least this (the largest screened value minus the bound)
    max_floor = (top.double() - bound_all.double()).clamp_min(0).sqrt()
    return knn_d[:, :kk].contiguous(), knn_i[:, :kk].contiguous(), max_floor


def _exact_max(ps: PointSet, tile: int, max_floor: torch.Tensor) -> torch.Tensor:
    """The largest canonical distance: every entry whose interval reaches `max_floor` (a second screening pass;
    needed only when the densest point's score could tie with another, see `_dpc_screened`)."""
    M = ps.x.shape[0]
    bound_all = ps.row_bound().max()
    threshold = screening.margin_down(max_floor.float() ** 2 - bound_all)
    best = max_floor
    for ra, rb in _tiles(M, tile):
        A = screening.approx_sq(ps, ra, ps, rb)
        r, c = torch.nonzero(A >= threshold, as_tuple=True)
        for a in range(0, r.numel(), 1 << 16):
            rows, cols = r[a:a + (1 << 16)] + ra.start, c[a:a + (1 << 16), None] + rb.start
            d = screening.canonical_distances(ps, rows, ps, cols)
            best = torch.maximum(best, d.max())
    return best


def _screened_peak_deltas(ps: PointSet, rho: torch.Tensor, peaks: torch.Tensor,
                          max_dist: torch.Tensor) -> torch.Tensor:
    """Each peak's canonical distance to its nearest denser point (max_dist for the densest).

    Ranked by `_denser` (rho descending, ties -> lower index), a peak's denser points are exactly the points ranked
    before it. So the peaks, in rank order and a block at a time, are screened against a prefix of the ranked points
    only (peaks are dense: on real pools about a fifth of a whole row), then refined as `min_candidates` says, all
    in one canonical call. A peak whose PEAK_CANDIDATES-wide window is full (near-ties) is screened again with the
    window widened until complete.
    """
    M, P = ps.x.shape[0], peaks.numel()
    ranking = torch.sort(rho, descending=True, stable=True).indices  # position -> point, densest first
    rank = torch.empty_like(ranking)
    rank[ranking] = torch.arange(M, device=rank.device)
    peak_rank, by_rank = torch.sort(rank[peaks])
    peaks = peaks[by_rank]
    ranked_screen = torch.index_select(ps.screen, 0, ranking, out=scratch.take("peaks.screen", ps.screen.shape,
                                                                                ps.screen.dtype, ps.screen.device))
    ranked_sq = ps.sq[ranking]
    bound = ps.row_bound()
    ends = peak_rank.tolist()  # one host read: the prefix each peak needs

    def screened(pos, width: int, widen: bool):
        p, prank = peaks[pos], peak_rank[pos]
        width = max(width, min(M, PEAK_CANDIDATES))  # columns past a peak's rank are masked anyway
        A = screening.screened_block(ps.screen[p], ps.sq[p], ranked_screen[:width], ranked_sq[:width])
        A.masked_fill_(torch.arange(width, device=A.device)[None, :] >= prank[:, None], float("inf"))
        vals, cols, valid = screening.min_candidates(A, bound[p], PEAK_CANDIDATES, widen)
        full = valid[:, -1] & (cols.shape[1] < width)  # the window may have cut candidates off
        return p, vals, ranking[cols], valid, full

    def deltas(p, vals, cols, valid):
        d = screening.canonical_distances(ps, p, ps, cols, valid).min(dim=1).values
        return torch.where(torch.isfinite(vals[:, 0]), d, max_dist)

    parts = [screened(slice(a, a + PEAK_BLOCK), ends[min(a + PEAK_BLOCK, P) - 1], widen=False)
             for a in range(0, P, PEAK_BLOCK)]
    p, vals, cols, valid, full = (torch.cat(x) for x in zip(*parts))
    out = deltas(p, vals, cols, valid)
    redo = torch.nonzero(full).flatten().tolist()  # one host read
    for a in range(0, len(redo), PEAK_BLOCK):
        pos = redo[a:a + PEAK_BLOCK]
        p, vals, cols, valid, _ = screened(torch.tensor(pos, device=peaks.device), ends[pos[-1]], widen=True)
        out[pos] = deltas(p, vals, cols, valid)
    return out[torch.argsort(by_rank)]


def _dpc_screened(ps: PointSet, cluster_num: int, k: int, tile: int, max_block_elements: int) -> torch.Tensor:
    """`_dpc_tiled` on canonical distances, screened (docs/algorithm.md §11): the same centres for any screen."""
    M = ps.x.shape[0]
    kk = min(k + 1, M)
    knn_d, knn_i, max_floor = _screened_knn(ps, kk, tile)
    ps.knn = knn_i  # exact k + 1 nearest lists: `nearest_anchor` answers most points from them
    rho = _density(knn_d)
    delta, peak_mask = _neighbour_delta(rho[None], knn_d[None], knn_i[None], max_floor.reshape(1))
    delta = delta[0]
    peaks = torch.nonzero(peak_mask[0]).flatten()
    if peaks.numel():
        delta[peaks] = _screened_peak_deltas(ps, rho, peaks, max_floor)
    # The densest point's delta is the largest distance, which only ranks it: every other score is
    # rho_j * delta_j <= rho_max * max_dist. If it already ranks first with the floor of that distance, it
    # ranks first with the exact value too, and the centres are the same; else the exact value is computed.
    scores = rho * delta
    densest = torch.argmax(rho)  # the densest under `_denser`: argmax returns the first maximum
    others = scores.clone()
    others[densest] = float("-inf")
    if not bool(scores[densest] > others.max()):
        scores[densest] = rho[densest] * _exact_max(ps, tile, max_floor)
    return stable_topk(scores, cluster_num)


def _nearest_anchor_screened(pts: PointSet, anchors: PointSet, max_block_elements: int) -> torch.Tensor:
    """Nearest anchor on canonical distances (ties -> first anchor): rows with one candidate need no refinement."""
    n, m = pts.x.shape[0], anchors.x.shape[0]
    bound = pts.row_bound(anchors)
    out = torch.empty(n, dtype=torch.long, device=pts.x.device)
    step = max(1, max_block_elements // max(1, m))
    for a in range(0, n, step):
        rs = slice(a, min(a + step, n))
        A = screening.approx_sq(pts, rs, anchors, slice(None))
        vals, cols, valid = screening.min_candidates(A, bound[rs], 4)
        several = valid.sum(dim=1) > 1
        d = screening.canonical_distances(pts, torch.arange(rs.start, rs.stop, device=out.device), anchors, cols,
                                          valid & several[:, None])
        best = screening.sorted_by_distance(d, cols)[1][:, 0]
        out[rs] = torch.where(several, best, cols[:, 0])
    return out


def _nearest_listed_anchor(ps: PointSet, anchor_index: torch.Tensor, max_block_elements: int) -> torch.Tensor:
    """`_nearest_anchor_screened` for anchors that are rows of `ps` (`anchor_index` ascending), answered from the
    points' exact k + 1 nearest lists where they hold an anchor: the lists are the smallest (distance, index) pairs,
    so their first anchor is the nearest one (ties -> lower index = first anchor). The other points are screened
    against every anchor (a quarter of them at 96 frames in one scene)."""
    M = ps.x.shape[0]
    position = torch.full((M,), -1, dtype=torch.long, device=anchor_index.device)
    position[anchor_index] = torch.arange(anchor_index.numel(), device=anchor_index.device)
    listed = position[ps.knn]  # (M, k + 1): anchor positions, -1 for other points
    is_anchor = listed >= 0
    out = listed.gather(1, is_anchor.to(torch.uint8).argmax(dim=1, keepdim=True))[:, 0]
    rest = torch.nonzero(~is_anchor.any(dim=1)).flatten()
    if rest.numel():
        out[rest] = _nearest_anchor_screened(ps.subset(rest), ps.subset(anchor_index), max_block_elements)
    return out


def tile_size(max_block_elements: int) -> int:
    """Side of the distance tiles under a memory bound; sets larger than one tile are tiled (and screened)."""
    return max(32, min(TILE, math.isqrt(max_block_elements)))


def screened_points(x: torch.Tensor, screen: str, tile: int, scratch_name: Optional[str] = None
                    ) -> Optional[PointSet]:
    """The shared operands of a point set (M, D) that takes the screened path, or None (small set, screen
    "off", no canonical kernel on this device, or values the bound does not cover). `scratch_name`: as in
    `PointSet`."""
    if x.shape[0] <= tile:
        return None
    dtype = screening.screen_dtype(screen, x.device, x.shape[1])
    if dtype is None:
        return None
    ps = PointSet(x.detach(), dtype, scratch_name=scratch_name)
    return ps if ps.screenable() else None


def dpc_knn(x: torch.Tensor, cluster_num: int, k: int, max_block_elements: int = 1 << 24,
            per_item: bool = False, screen: str = "auto", points: Optional[PointSet] = None) -> torch.Tensor:
    """Cluster centres by density peaks with a k-NN density.

    Args:
        x: (B, M, D) float32 points (B independent sets).
        cluster_num: centres to return per set (<= M).
        k: neighbours of the density estimate.
        max_block_elements: largest distance block materialised at once.
        per_item: compute each set's distances on its own (2-D products) rather than as one batched product.
            Both give the same centres up to last-bit rounding; per-item is what the reference does for
            single frames (and is faster on CPU for large sets), batched what it does for a segment's frames.
        screen: sets larger than one tile decide on canonical distances screened in "bfloat16" or "float32"
            ("auto": bfloat16 where it is fast and rounds as the bound assumes); "off": float32 tiles
            (docs/algorithm.md §11).
        points: the set's operands, already built by `screened_points` (shared with `nearest_anchor`).

    Returns:
        (B, cluster_num) indices into M, by decreasing rho * delta (ties -> lower index).
    """
    B, M, _ = x.shape
    x = x.float()
    tile = tile_size(max_block_elements)
    if M <= tile and (M * M if per_item else B * M * M) <= max_block_elements:
        if per_item and B > 1 and M > CDIST_DIRECT_MAX:
            return torch.cat([_dpc_full(x[b:b + 1], cluster_num, k) for b in range(B)])
        return _dpc_full(x, cluster_num, k)
    out = []
    for b in range(B):
        ps = points if points is not None and B == 1 else screened_points(x[b], screen, tile)
        if ps is None:
            out.append(_dpc_tiled(x[b], cluster_num, k, tile, max_block_elements))
        else:
            out.append(_dpc_screened(ps, cluster_num, k, tile, max_block_elements))
    return torch.stack(out)


def nearest_anchor(points: torch.Tensor, anchors: torch.Tensor, max_block_elements: int = 1 << 24,
                   per_item: bool = False, screen: str = "auto", point_set: Optional[PointSet] = None,
                   anchor_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of the nearest anchor (Euclidean; ties -> first anchor) for each point: (B, n, D), (B, m, D) -> (B, n).

    `per_item` and `screen` as in `dpc_knn`: more points than one tile take canonical distances. `point_set` with
    `anchor_index` (B == 1): the anchors are those rows of the points' shared operands.
    """
    B, n, _ = points.shape
    m = anchors.shape[1]
    tile = tile_size(max_block_elements)
    if B == 1 and n > tile:
        ps = point_set if point_set is not None else screened_points(points[0], screen, tile)
        if ps is not None:
            if anchor_index is not None and ps.knn is not None:
                return _nearest_listed_anchor(ps, anchor_index[0], max_block_elements)[None]
            anc = ps.subset(anchor_index[0]) if anchor_index is not None else PointSet(anchors[0].detach(), ps.dtype)
            if anc.screenable():
                return _nearest_anchor_screened(ps, anc, max_block_elements)[None]
    if per_item and B > 1 and max(n, m) > CDIST_DIRECT_MAX:
        return torch.cat([nearest_anchor(points[b:b + 1], anchors[b:b + 1], max_block_elements) for b in range(B)])
    rows = max(1, max_block_elements // max(1, B * m))
    points, anchors = points.float(), anchors.float()
    if rows >= n:
        return _cdist(points, anchors).argmin(dim=-1)
    return torch.cat([_cdist(points[:, a:a + rows], anchors).argmin(dim=-1) for a in range(0, n, rows)], dim=1)


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
