"""The clustering seam: DPC-KNN centres and nearest-centre assignment of point sets (docs/algorithm.md §5).

Tango clusters in two steps, the salient pick (§4.3) and the context merge (§4.4); both call `cluster`, and the
strategies that cluster (HoliTom, FastVID, FlashVID) call it or `assign_to_members`. The rules (density, the
denser order, delta, the tie-breaks, the first-minimum assignment) live in engine/dpc.py; a route changes only
how the distances are computed. `choose_route` is the one place that picks it (B sets of M points, block =
`max_block_elements`, tile = `dpc.tile_size(block)`):

    route     taken when                                       distances from
    small     M <= 25                                          `torch.cdist` pair by pair (no matrix product), a
                                                               few sets per call; anchor distances are columns
    batched   25 < M <= tile, B > 1 sets decided together      one batched `torch.cdist` (B M^2 <= block)
              (not per set), B M^2 <= block
    per-set   25 < M <= tile otherwise                         `cdist`'s operands, one product per set (the frames'
                                                               shared operands when the sets are their rows)
    screened  M > tile, a screen and values its bound covers   canonical float64 distances, screened (per set)
    tiled     M > tile otherwise                               float32 tiles, no M x M matrix (per set)

`plain_cluster` is the paper's algorithm on one whole `torch.cdist` matrix, the oracle every route is tested against
(tests/test_clustering.py: bit for bit on inputs whose distances every route computes exactly, with ties,
duplicates, huge and tiny scales and low-precision inputs). Each route owns its scratch names (engine/scratch.py).
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from . import trace
from .distances import FrameOperands, cdist, per_set_products
from .dpc import CDIST_DIRECT_MAX, dpc_of_distances, plain_dpc_of_distances, tile_size
from .dpc_screened import nearest_anchor_screened, nearest_listed_anchor, screened_centres, screened_points
from .dpc_tiled import tiled_centres
from .gather import rows_of

ANCHOR_ORDERS = ("density", "ascending")


class PointSets:
    """B sets of M points each: the points themselves (B, M, D), or the rows `members` (B, M) of B frames whose
    `FrameOperands` are shared (the single-frame path), gathered only when the chosen route needs the points."""

    def __init__(self, points: Optional[torch.Tensor] = None, *, frames: Optional[FrameOperands] = None,
                 members: Optional[torch.Tensor] = None) -> None:
        if (points is None) == (frames is None) or (frames is None) != (members is None):
            raise ValueError("PointSets: give points, or frames with members")
        self._points, self.frames, self.members = points, frames, members
        self.B, self.M = (points if points is not None else members).shape[:2]

    def points(self) -> torch.Tensor:
        """(B, M, D) float32 points (gathered from the frames on first use, into the scratch buffer "sets.points":
        dead once the next sets gather theirs)."""
        if self._points is None:
            self._points = rows_of(self.frames.x, self.members, "sets.points")
        return self._points.float()


def _note(name: str) -> None:
    trace.note("route " + name)


def _anchors(centres: torch.Tensor, anchor_order: str) -> torch.Tensor:
    return centres.sort(dim=-1).values if anchor_order == "ascending" else centres


def _nearest_by_cdist(points: torch.Tensor, anchors: torch.Tensor, max_block_elements: int) -> torch.Tensor:
    """argmin over `torch.cdist(points, anchors)` (first minimum), a block of rows at a time."""
    B, n, _ = points.shape
    rows = max(1, max_block_elements // max(1, B * anchors.shape[1]))
    if rows >= n:
        return cdist(points, anchors).argmin(dim=-1)
    return torch.cat([cdist(points[:, a:a + rows], anchors).argmin(dim=-1) for a in range(0, n, rows)], dim=1)


class _Small:
    """M <= 25: `torch.cdist` computes such sets pair by pair, so one call for many sets gives each set's own bits,
    and the distances to the anchors (members) are columns of the set's matrix."""

    name = "small"

    def __init__(self, sets: PointSets, max_block_elements: int) -> None:
        self.sets, self.step = sets, max(1, max_block_elements // max(1, sets.M * sets.M))

    def _matrices(self) -> Iterator[Tuple[slice, torch.Tensor]]:
        x = self.sets.points()
        for a in range(0, self.sets.B, self.step):
            part = slice(a, a + self.step)
            yield part, cdist(x[part], x[part])

    def cluster(self, cluster_num: int, k: int, anchor_order: Optional[str]):
        centres, assign = [], []
        for _, dist in self._matrices():
            c = dpc_of_distances(dist, cluster_num, k)
            centres.append(c)
            if anchor_order is not None:
                assign.append(_columns_argmin(dist, _anchors(c, anchor_order)))
        return torch.cat(centres), torch.cat(assign) if assign else None

    def assign(self, anchor_index: torch.Tensor) -> torch.Tensor:
        return torch.cat([_columns_argmin(dist, anchor_index[part]) for part, dist in self._matrices()])


def _columns_argmin(dist: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return torch.gather(dist, 2, anchors[:, None, :].expand(-1, dist.shape[1], -1)).argmin(dim=-1)


class _Batched:
    """B sets decided together (a segment's frames, as the reference does them): one batched `torch.cdist`."""

    name = "batched"

    def __init__(self, sets: PointSets, max_block_elements: int) -> None:
        self.sets, self.max_block_elements = sets, max_block_elements

    def cluster(self, cluster_num: int, k: int, anchor_order: Optional[str]):
        x = self.sets.points()
        centres = dpc_of_distances(cdist(x, x), cluster_num, k)
        if anchor_order is None:
            return centres, None
        return centres, self.assign(_anchors(centres, anchor_order))

    def assign(self, anchor_index: torch.Tensor) -> torch.Tensor:
        x = self.sets.points()
        return _nearest_by_cdist(x, rows_of(x, anchor_index), self.max_block_elements)


class _PerSet:
    """One matrix product per set from `cdist`'s operands: the bits of per-set `torch.cdist` calls. The operands are
    the frames' (built once for every set among their rows), else built here from the points. A block of sets
    gathers its operands in one call and takes one clamp and root (`distances.per_set_products`)."""

    name = "per-set"

    def __init__(self, sets: PointSets, max_block_elements: int) -> None:
        self.sets = sets
        self.ops = sets.frames if sets.frames is not None else FrameOperands(sets.points(), "sets")
        self.members = sets.members  # None: every row of the operands' frame b is set b, in order
        self.step = max(1, max_block_elements // max(1, sets.M * sets.M))

    def _operands(self, part: slice) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (n, M, D + 2) row and column operands of the sets `part` (views of the frames' own when every row
        is a member, else gathered into the scratch buffers "per-set.rows" / "per-set.cols")."""
        rows, cols = self.ops.operands()
        if self.members is None:
            return rows[part], cols[part]
        members = self.members[part]
        return rows_of(rows[part], members, "per-set.rows"), rows_of(cols[part], members, "per-set.cols")

    def _anchor_cols(self, part: slice, anchors: torch.Tensor) -> torch.Tensor:
        """(n, a, D + 2) column operands of each set's anchors (indices into the set)."""
        members = anchors if self.members is None else torch.gather(self.members[part], 1, anchors)
        return rows_of(self.ops.operands()[1][part], members, "per-set.anchor_cols")

    def cluster(self, cluster_num: int, k: int, anchor_order: Optional[str]):
        B = self.sets.B
        centres, assign = [], []
        for a in range(0, B, self.step):
            part = slice(a, min(a + self.step, B))
            rows, cols = self._operands(part)
            dist = per_set_products(rows, cols, "per-set.dist")
            c = dpc_of_distances(dist, cluster_num, k)
            centres.append(c)
            if anchor_order is not None:
                assign.append(self._assign(rows, part, _anchors(c, anchor_order)))
        return torch.cat(centres), torch.cat(assign) if assign else None

    def _assign(self, rows: torch.Tensor, part: slice, anchors: torch.Tensor) -> torch.Tensor:
        return per_set_products(rows, self._anchor_cols(part, anchors), "per-set.anchor_dist").argmin(dim=-1)

    def assign(self, anchor_index: torch.Tensor) -> torch.Tensor:
        out = []
        for a in range(0, self.sets.B, self.step):
            part = slice(a, min(a + self.step, self.sets.B))
            out.append(self._assign(self._operands(part)[0], part, anchor_index[part]))
        return torch.cat(out)


class _Large:
    """Sets larger than one tile, one at a time: `screened` when `dpc_screened.screened_points` accepts the set
    (a screen, a canonical kernel, values the bound covers), else `tiled`. A set is finished before the next one's
    screening copy reuses its scratch buffer."""

    name = "large"

    def __init__(self, sets: PointSets, max_block_elements: int, screen: str) -> None:
        self.sets, self.max_block_elements, self.screen = sets, max_block_elements, screen
        self.tile = tile_size(max_block_elements)

    def _point_sets(self):
        x = self.sets.points()
        for b in range(self.sets.B):
            ps = screened_points(x[b], self.screen, self.tile, "large.screen")
            _note("tiled" if ps is None else "screened")
            yield b, x[b], ps

    def cluster(self, cluster_num: int, k: int, anchor_order: Optional[str]):
        centres, assign = [], []
        for b, x, ps in self._point_sets():
            if ps is None:
                c = tiled_centres(x, cluster_num, k, self.tile, self.max_block_elements)
                a = None if anchor_order is None else _nearest_by_cdist(
                    x[None], x[_anchors(c, anchor_order)][None], self.max_block_elements)[0]
            else:
                c, knn = screened_centres(ps, cluster_num, k, self.tile)
                if anchor_order == "ascending":  # most points answered from their exact nearest lists
                    a = nearest_listed_anchor(ps, c.sort().values, knn, self.max_block_elements)
                elif anchor_order == "density":  # ties -> the first anchor in density order: screened
                    a = nearest_anchor_screened(ps, ps.subset(c), self.max_block_elements)
                else:
                    a = None
            centres.append(c)
            assign.append(a)
        return torch.stack(centres), None if anchor_order is None else torch.stack(assign)

    def assign(self, anchor_index: torch.Tensor) -> torch.Tensor:
        out = []
        for b, x, ps in self._point_sets():
            if ps is None:
                out.append(_nearest_by_cdist(x[None], x[anchor_index[b]][None], self.max_block_elements)[0])
            else:
                out.append(nearest_anchor_screened(ps, ps.subset(anchor_index[b]), self.max_block_elements))
        return torch.stack(out)


def route_name(B: int, M: int, per_item: bool, max_block_elements: int) -> str:
    """The route `choose_route` takes for B sets of M points: "small", "batched", "per-set" or "large" (screened or
    tiled). Every route but "batched" gives each set the bits it gets alone, so sets whose route is not "batched"
    can be clustered together with per_item=True (tango.py batches a video's segments so)."""
    if M <= CDIST_DIRECT_MAX:
        return "small"
    if M <= tile_size(max_block_elements) and M * M <= max_block_elements:
        if B > 1 and not per_item and B * M * M <= max_block_elements:
            return "batched"
        return "per-set"
    return "large"


_ROUTES = {"small": _Small, "batched": _Batched, "per-set": _PerSet}


def choose_route(sets: PointSets, per_item: bool, max_block_elements: int, screen: str):
    """The route for `sets` (the table in this module's docstring). `per_item`: the sets are decided one at a time
    (the reference's single-frame path), never as one batched product."""
    name = route_name(sets.B, sets.M, per_item, max_block_elements)
    if name == "large":  # screened or tiled, noted per set
        return _Large(sets, max_block_elements, screen)
    _note(name)
    return _ROUTES[name](sets, max_block_elements)


def cluster(sets: PointSets, cluster_num: int, k: int, anchor_order: Optional[str] = "ascending", *,
            per_item: bool = False, max_block_elements: int = 1 << 24, screen: str = "auto"
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """DPC-KNN centres of each set and every point's nearest centre.

    Args:
        sets: B sets of M points (float32 decisions; other float dtypes are widened).
        cluster_num: centres per set (<= M); k: neighbours of the density.
        anchor_order: the order of the anchors the assignment indexes: "ascending" (by point index), "density"
            (the centres' order), or None (centres only).
        per_item / max_block_elements / screen: as `choose_route`, `TangoConfig.max_block_elements` and
            `TangoConfig.distance_screen`.

    Returns:
        (centres (B, cluster_num) by decreasing rho * delta, ties -> lower index; assignment (B, M) into the
        anchors in `anchor_order`, ties -> the first anchor, or None).
    """
    if anchor_order is not None and anchor_order not in ANCHOR_ORDERS:
        raise ValueError(f"anchor_order={anchor_order!r}: allowed {ANCHOR_ORDERS} or None")
    return choose_route(sets, per_item, max_block_elements, screen).cluster(cluster_num, k, anchor_order)


def assign_to_members(sets: PointSets, anchor_index: torch.Tensor, *, per_item: bool = False,
                      max_block_elements: int = 1 << 24, screen: str = "auto") -> torch.Tensor:
    """Each point's nearest anchor (ties -> the first anchor) among the members `anchor_index` (B, a) of its own
    set, in the order given: (B, M)."""
    return choose_route(sets, per_item, max_block_elements, screen).assign(anchor_index)


def plain_cluster(points: torch.Tensor, cluster_num: int, k: int, anchor_order: str = "ascending",
                  dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """The paper's algorithm, as plainly as it can be written: one whole `torch.cdist` matrix per set in `dtype`,
    `dpc.plain_dpc_of_distances`, then argmin over the anchors' columns. The oracle of every route (tests)."""
    x = points.to(dtype)
    dist = torch.cdist(x, x)
    centres = plain_dpc_of_distances(dist, cluster_num, k)
    return centres, _columns_argmin(dist, _anchors(centres, anchor_order))
