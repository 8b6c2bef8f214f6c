"""DPC-KNN and nearest-anchor assignment of one large point set on canonical distances, screened (the `screened`
route of engine/clustering.py; docs/algorithm.md §11).

Every decision (k + 1 nearest, largest distance, nearest denser point of each peak, nearest anchor) is taken on
canonical float64 distances (engine/screening.py), computed only for the pairs a bfloat16 (or float32) screening
product cannot rule out under its proven bound. The answer is the plain algorithm's (`dpc.dpc_of_distances`, then
argmin) on the canonical distance matrix, for any screen: tests/test_clustering.py and tests/test_screening.py check
it against that matrix.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import scratch, screening, trace
from .dpc import density, neighbour_delta, stable_topk
from .screening import PointSet

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
    ps.sq64 = dots[:, 0].clone()  # the set's canonical squared norms, computed here with the first pairs
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


def _screened_knn(ps: PointSet, kk: int, tile: int):
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
        _add_candidates(rows, cols, vals, A, limit, ra, rb, CANDIDATES_PER_ROW, counts)
        owners.extend([t] * (len(counts) - len(owners)))
        top = torch.maximum(top, A.max())
        if len(vals) >= 2 * COMPACT_EVERY:  # drop what the current limits already exclude (bounded memory)
            rows, cols, vals = _compact(rows, cols, vals, limit)
    limit = _knn_limit(uppers, bound)
    # tiles that had more candidates than they kept (near-duplicate points: many near-ties) are taken again, whole,
    # under the final limits (only lower than the limits they were taken under): every entry under the final
    # limits is then listed, as in one pass with exact sizes, with no second pass over the other tiles
    overflowed = sorted({t for t, full in zip(owners, torch.stack(counts).tolist()) if full}) if counts else []
    if overflowed:
        trace.note(f"screened tiles-retaken {len(overflowed)}/{len(tiles)}")
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
    needed only when the densest point's score could tie with another, see `screened_centres`)."""
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

    Ranked by `dpc.denser` (rho descending, ties -> lower index), a peak's denser points are exactly the points ranked
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
    if redo:
        trace.note(f"screened peaks-widened {len(redo)}")
    for a in range(0, len(redo), PEAK_BLOCK):
        pos = redo[a:a + PEAK_BLOCK]
        p, vals, cols, valid, _ = screened(torch.tensor(pos, device=peaks.device), ends[pos[-1]], widen=True)
        out[pos] = deltas(p, vals, cols, valid)
    return out[torch.argsort(by_rank)]


def screened_centres(ps: PointSet, cluster_num: int, k: int, tile: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centres (by decreasing rho * delta) on canonical distances, screened: the same for any screen.

    Returns:
        (centres (cluster_num,), the exact k + 1 nearest lists (M, k + 1)): `nearest_listed_anchor` answers most
        points from the lists.
    """
    M = ps.x.shape[0]
    kk = min(k + 1, M)
    knn_d, knn_i, max_floor = _screened_knn(ps, kk, tile)
    rho = density(knn_d)
    delta, peak_mask = neighbour_delta(rho[None], knn_d[None], knn_i[None], max_floor.reshape(1))
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
    return stable_topk(scores, cluster_num), knn_i


def nearest_anchor_screened(pts: PointSet, anchors: PointSet, max_block_elements: int) -> torch.Tensor:
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


def nearest_listed_anchor(ps: PointSet, anchor_index: torch.Tensor, knn: torch.Tensor,
                          max_block_elements: int) -> torch.Tensor:
    """`nearest_anchor_screened` for anchors that are rows of `ps` (`anchor_index` ascending), answered from the
    points' exact k + 1 nearest lists `knn` (from `screened_centres`) where they hold an anchor: the lists are the
    smallest (distance, index) pairs, so their first anchor is the nearest one (ties -> lower index = first
    anchor). The other points are screened against every anchor (a quarter of them at 96 frames in one scene)."""
    M = ps.x.shape[0]
    position = torch.full((M,), -1, dtype=torch.long, device=anchor_index.device)
    position[anchor_index] = torch.arange(anchor_index.numel(), device=anchor_index.device)
    listed = position[knn]  # (M, k + 1): anchor positions, -1 for other points
    is_anchor = listed >= 0
    out = listed.gather(1, is_anchor.to(torch.uint8).argmax(dim=1, keepdim=True))[:, 0]
    rest = torch.nonzero(~is_anchor.any(dim=1)).flatten()
    trace.note(f"screened listed {M - rest.numel()}/{M}")
    if rest.numel():
        out[rest] = nearest_anchor_screened(ps.subset(rest), ps.subset(anchor_index), max_block_elements)
    return out


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

