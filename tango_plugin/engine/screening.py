"""Exact distance decisions on large point sets, screened in bfloat16 (docs/algorithm.md §11).

The clustering of a large pool (more points than one distance tile) needs four kinds of decision: each point's
k + 1 nearest points (and their distances, for the density), the largest distance, each density peak's nearest
denser point, and each point's nearest anchor. Every one of them is decided on *canonical* distances:

    dot(i, j) = the float64 dot product of (float32) rows i and j as a batched matrix-vector product computes it
    c(i, j)   = (sq_i + sq_j) - 2 * dot(i, j), clamped at 0, with sq_i = dot(i, i);  d(i, j) = sqrt(c(i, j))

`dot` comes from `torch.bmm` in float64 with at least three rows per product and two products per call. That kernel
gives every entry the same bits whatever else is in the call (checked at first use, `canonical_kernel_ok`), so
a canonical distance is a function of the two points only: symmetric, exactly 0 for identical points, and the
same for any subset of pairs. Only a few pairs per point are computed this way.

Which pairs: a screening product in bfloat16 (or float32) gives every distance to within a proven bound
(`PointSet.row_bound`, proof in docs/algorithm.md §11.2); a pair is refined when its interval could change a
decision. Two screens therefore give the same bits by construction, and the tests check it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch

from . import scratch, threads

_WARNED: set = set()
U32 = 2.0 ** -24  # unit roundoff of float32
UNIT_ROUNDOFF = {torch.float32: U32, torch.bfloat16: 2.0 ** -8}
# Norms outside this range (or non-finite values) are not screened: the bound's absolute terms assume no
# overflow and no flushed subnormal products beyond the `ABS_FLOOR` allowance.
NORM_RANGE = (2.0 ** -40, 2.0 ** 40)
# rows x columns x dim of one gathered block of the canonical kernel
CANON_CHUNK_ELEMENTS = 1 << 20
# the kernel's shape rules (docs/algorithm.md §11.1): the columns of each product are padded to a multiple of
# COLUMN_GROUP and the feature dim with zeros to a multiple of DIM_GROUP (MKL's float64 row-vector x matrix product
# sums a column outside a full group of 4, or at some small dims a group of 8, in another order)
COLUMN_GROUP = 8
DIM_GROUP = 64


def _gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


# --------------------------------------------------------------------------------------------------------------
# the canonical kernel


def _bmm_dots(vectors: torch.Tensor, rows: torch.Tensor, matrix: torch.Tensor, cols: torch.Tensor,
              out: torch.Tensor) -> None:
    """out[r, q] = dot(vectors[rows[r]], matrix[cols[r, q]]) in float64: per chunk one batched product of row vectors
    (n, 1, D') with matrices (n, D', c'), the columns padded with zero vectors to c' (a multiple of COLUMN_GROUP,
    `out` has c' columns) and the dims with zeros to D' (a multiple of DIM_GROUP). Rows are gathered in float32
    and widened into small reused buffers; the padding is written once."""
    R, c = cols.shape
    D = vectors.shape[1]
    wide_cols, wide_dim = out.shape[1], -(-D // DIM_GROUP) * DIM_GROUP
    step = max(1, CANON_CHUNK_ELEMENTS // max(1, wide_cols * wide_dim))
    cap = min(R, step)
    gathered = scratch.take("canon.gathered", (cap * c, D), matrix.dtype, matrix.device)
    wide = scratch.take("canon.wide", (cap, wide_cols, wide_dim), torch.float64, matrix.device)
    vgathered = scratch.take("canon.vgathered", (cap, D), vectors.dtype, vectors.device)
    vwide = scratch.take("canon.vwide", (cap, 1, wide_dim), torch.float64, vectors.device)
    wide[:, c:] = 0  # exact zeros: padding columns give 0 and padding dims add 0
    wide[..., D:] = 0
    vwide[..., D:] = 0
    for a in range(0, R, step):
        n = min(step, R - a)
        A = torch.index_select(matrix, 0, cols[a:a + n].reshape(-1), out=gathered[:n * c])
        v = torch.index_select(vectors, 0, rows[a:a + n], out=vgathered[:n])
        wide[:n, :c, :D] = A.view(n, c, D)
        vwide[:n, :, :D] = v.view(n, 1, D)
        torch.bmm(vwide[:n], wide[:n].transpose(1, 2), out=out[a:a + n].view(n, 1, wide_cols))


def canonical_dots(vectors: torch.Tensor, rows: torch.Tensor, matrix: torch.Tensor,
                   cols: torch.Tensor) -> torch.Tensor:
    """(R, c) canonical float64 dot products of vectors[rows[r]] with matrix[cols[r, q]] (float32 inputs)."""
    R, c = cols.shape
    out = torch.empty(R, -(-c // COLUMN_GROUP) * COLUMN_GROUP, dtype=torch.float64, device=matrix.device)
    if R and c:
        _bmm_dots(vectors, rows, matrix, cols, out)
    return out[:, :c]


@functools.lru_cache(maxsize=None)
def canonical_kernel_ok(device_type: str, threads: int, dim: int) -> bool:
    """Start-up self-test: does the kernel give each entry the same bits in any call? (cached per device type,
    thread count and feature dim). Checks block widths, slot positions, batch sizes, the swapped roles and
    identical rows."""
    g = torch.Generator().manual_seed(0)
    D, M = dim, 97
    x = torch.randn(M, D, generator=g).to(device_type)
    x[7] = x[3]
    rows = torch.randint(0, M, (40,), generator=g).to(device_type)
    cols = torch.randint(0, M, (40, 5), generator=g).to(device_type)
    base = canonical_dots(x, rows, x, cols)
    swapped = canonical_dots(x, cols[:, 0], x, rows[:, None].expand(40, 3))
    if not torch.equal(swapped[:, 0], base[:, 0]) or not torch.equal(swapped[:, 2], base[:, 0]):
        return False
    for width, slot in ((3, 1), (4, 0), (7, 6), (8, 7), (9, 8), (16, 15), (33, 17), (33, 32)):
        other = torch.randint(0, M, (40, width), generator=g).to(device_type)
        other[:, slot] = cols[:, 1]
        if not torch.equal(canonical_dots(x, rows, x, other)[:, slot], base[:, 1]):
            return False
    for n in (1, 2, 3, 39):
        if not torch.equal(canonical_dots(x, rows[:n], x, cols[:n]), base[:n]):
            return False
    same = canonical_dots(x, torch.tensor([3, 7, 3], device=device_type), x,
                          torch.tensor([[3, 7], [7, 3], [7, 7]], device=device_type))
    return bool((same == same[0, 0]).all())


@functools.lru_cache(maxsize=None)
def bfloat16_screen_ok(device_type: str) -> bool:
    """Is a bfloat16 product fast here, and does it round once (float32 accumulation, one final rounding), as
    the bound assumes? Checked on products whose partial sums cancel, where repeated rounding would show."""
    if device_type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        fast = bool(probe()) if probe is not None else False
    if not fast:
        return False
    g = torch.Generator().manual_seed(1)
    D = 3584
    a = torch.randn(64, D, generator=g)
    a[:, : D // 2] *= 64  # large partial sums that cancel: a product that rounds partial sums exceeds the bound
    b = torch.cat([a[:32, : D // 2], -a[:32, : D // 2]], dim=1) + torch.randn(32, D, generator=g) / 8
    ab, bb = a.bfloat16(), b.bfloat16()
    got = (ab.to(device_type) @ bb.to(device_type).T).float().cpu().double()
    exact = ab.double() @ bb.double().T
    P = ab.double().abs() @ bb.double().abs().T
    ub = UNIT_ROUNDOFF[torch.bfloat16]
    allowed = ub / (1 - ub) * got.abs() + _gamma(D) * P * 1.01
    return bool(((got - exact).abs() <= allowed).all())


def screen_dtype(mode: str, device: torch.device, dim: int) -> Optional[torch.dtype]:
    """The screening dtype for `mode` ("auto", "bfloat16", "float32") on `device` for points of `dim` features,
    or None: no canonical kernel here (the float32 tile path decides, docs/algorithm.md §11.4)."""
    if mode == "off":
        return None
    if not canonical_kernel_ok(device.type, torch.get_num_threads(), dim):
        if (device.type, dim) not in _WARNED:
            _WARNED.add((device.type, dim))
            warnings.warn(f"tango_plugin: the canonical distance kernel failed its self-test on {device.type} at "
                          f"dim {dim}; point sets larger than one tile use float32 tiles (as distance_screen='off')",
                          stacklevel=2)
        return None
    if mode == "float32":
        return torch.float32
    if mode == "bfloat16" or bfloat16_screen_ok(device.type):
        return torch.bfloat16
    return torch.float32


# --------------------------------------------------------------------------------------------------------------
# the operands and the bound


class PointSet:
    """One large point set's shared operands: float32 rows, their screening copy, canonical squared norms and
    norm bounds (built once, used by the clustering, the peak pass and the assignment)."""

    def __init__(self, x: torch.Tensor, dtype: torch.dtype, sq64: Optional[torch.Tensor] = None,
                 screen: Optional[torch.Tensor] = None, scratch_name: Optional[str] = None) -> None:
        """`scratch_name`: the screening copy goes into that scratch buffer (the set must then be dead before the
        name is taken again), else into a fresh tensor."""
        self.x = x.float().contiguous()
        self.dtype = dtype
        M, self.D = self.x.shape
        # what the screen adds: float32 squared norms, within gamma_{D+4} of the exact ones (any summation order)
        n32 = torch.linalg.vector_norm(self.x, dim=1)
        self.sq = n32 * n32
        self.sq_err = _gamma(self.D + 4) * 1.01
        self.norm = n32 * (1 + self.sq_err)  # an upper bound of each norm
        # canonical (float64) squared norms dot(i, i): given, computed with the first pairs (`list_dots`), or
        # on demand (`ensure_sq64`)
        self.sq64 = sq64
        if screen is None and dtype != torch.float32 and scratch_name is not None:
            screen = scratch.take(scratch_name, self.x.shape, dtype, self.x.device).copy_(self.x)
        self.screen = screen if screen is not None else (self.x if dtype == torch.float32 else self.x.to(dtype))
        if dtype == torch.float32:
            self.resid = torch.zeros_like(self.norm)
        else:
            # norm of each row's rounding residual x_hat - x (exact in float32: Sterbenz), rounded up
            self.resid = torch.empty_like(self.norm)
            for a in range(0, M, 1024):  # in row blocks: no float32 copy of the whole set
                e = torch.sub(self.screen[a:a + 1024], self.x[a:a + 1024])
                self.resid[a:a + 1024] = torch.linalg.vector_norm(e, dim=1) * (1 + self.sq_err)
        self._beta_screen = 0.0 if dtype == torch.float32 else UNIT_ROUNDOFF[dtype] / (1 - UNIT_ROUNDOFF[dtype])
        # flushed subnormals (bfloat16 dot instructions flush them): each input component or product loses at
        # most 2**-126 times its partner, so a dot S loses at most 2**-126 (sqrt(D) (n_i + n_j) + D); the squared
        # distance q_i + q_j - 2 S twice that, 2**-125 (sqrt(D) (n_i + n_j) + D), which 2**-124 D (1 + n_i + n_j)
        # covers with a factor 2 to spare (sqrt(D) <= D). `_bound` multiplies this by (1 + n_i + n_j).
        self._abs = 2.0 ** -124 * self.D
        self._self_bound: Optional[torch.Tensor] = None

    def subset(self, idx: torch.Tensor) -> "PointSet":
        self.ensure_sq64()
        return PointSet(self.x[idx], self.dtype, self.sq64[idx], self.screen[idx])

    def ensure_sq64(self) -> torch.Tensor:
        if self.sq64 is None:
            M = self.x.shape[0]
            idx = torch.arange(M, device=self.x.device)
            self.sq64 = canonical_dots(self.x, idx, self.x, idx[:, None])[:, 0]
        return self.sq64


    def row_bound(self, other: Optional["PointSet"] = None) -> torch.Tensor:
        """Per row i, an upper bound of |screened - canonical| squared distance to any row j of `other` (default:
        this set), from the partners' largest norm, residual and squared norm (docs/algorithm.md §11.2):

            E = (n_i + r_i) r_j + r_i n_j + g32 (n_i + r_i)(n_j + r_j) + g64 n_i n_j + b |S|,  |S| <= S_max
            bound = (2 E (1 + u32) + (4 u32 + e_sq) (sq_i + sq_j) + 4 u32 S_max + flushed) * 1.001
        """
        if other is None and self._self_bound is not None:
            return self._self_bound  # used by the k-nearest pass, the peaks and the maximum
        bound = self._bound(self if other is None else other)
        if other is None:
            self._self_bound = bound
        return bound

    def _bound(self, other: "PointSet") -> torch.Tensor:
        n, r = self.norm, self.resid
        n_o, r_o, sq_o = other.norm.max(), other.resid.max(), other.sq.max()
        g32, g64 = _gamma(self.D), self.D * 2.0 ** -53 * 1.01
        wide = (n + r) * (n_o + r_o)
        s_max = wide * (1 + 2 * self._beta_screen + 2 * g32)
        E = (n + r) * r_o + r * n_o + g32 * wide + g64 * n * n_o + self._beta_screen * s_max
        Q = self.sq + sq_o
        flushed = self._abs * (1 + n + n_o)
        return (2 * E * (1 + U32) + (4 * U32 + self.sq_err) * Q + 4 * U32 * s_max + flushed) * 1.001

    def screenable(self) -> bool:
        """Finite values and norms in `NORM_RANGE` (or zero rows): what the bound covers."""
        n = self.norm
        lo, hi = NORM_RANGE
        return bool((torch.isfinite(self.sq) & (((n >= lo) & (n <= hi)) | (self.sq == 0))).all())


def approx_sq(rows: PointSet, ra, cols: PointSet, rb) -> torch.Tensor:
    """Screened squared distances (sq_i + sq_j) - 2 S for rows[ra] x cols[rb] (float32), in the scratch buffer
    "screen.block" (dead once the next block is taken)."""
    return screened_block(rows.screen[ra], rows.sq[ra], cols.screen[rb], cols.sq[rb])


def screened_block(r: torch.Tensor, r_sq: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """`approx_sq` of screening rows `r` (n, D) and `c` (m, D) with their float32 squared norms."""
    out = scratch.take("screen.product", (r.shape[0], c.shape[0]), r.dtype, r.device)
    with threads.wide(r.shape[0] * c.shape[0] * r.shape[1]):
        S = torch.mm(r, c.T, out=out)
    A = torch.add(r_sq[:, None], c_sq[None, :], out=scratch.take("screen.block", S.shape, torch.float32, r.device))
    return A.sub_(S, alpha=2)  # a bfloat16 S is widened on the fly (exact), no float32 copy


def list_dots(rows: PointSet, row_idx: torch.Tensor, cols: PointSet, col_idx: torch.Tensor,
              valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(R, c) canonical float64 dots of rows[row_idx[r]] with cols[col_idx[r, q]]; entries not `valid` (valid
    entries come first in each row) are 0 and not computed: rows are grouped by their number of valid entries."""
    R, c = col_idx.shape
    out = torch.zeros((R, c), dtype=torch.float64, device=rows.x.device)
    if R == 0 or c == 0:
        return out
    if valid is None:
        counts_host = [c] * R
        order = torch.arange(R, device=rows.x.device)
    else:
        counts = valid.sum(dim=1)
        order = torch.sort(counts, stable=True).indices
        counts_host = counts[order].tolist()  # one host read per call
    step = 256
    for a in range(0, R, step):
        sel = order[a:a + step]
        width = max(counts_host[a:a + step])
        if width == 0:
            continue
        c_idx = col_idx[sel, :width].clamp_min(0)  # padding entries (any index) are computed and dropped
        dots = canonical_dots(rows.x, row_idx[sel], cols.x, c_idx)
        if valid is not None:
            dots = dots.masked_fill_(~valid[sel, :width], 0)
        out[sel, :width] = dots
    return out


def combine(sq_rows: torch.Tensor, sq_cols: torch.Tensor, dots: torch.Tensor) -> torch.Tensor:
    """Canonical distances sqrt(max(0, (sq_i + sq_j) - 2 dot)) in float64."""
    return (sq_rows[:, None] + sq_cols).sub_(dots, alpha=2).clamp_min_(0).sqrt_()


def canonical_distances(rows: PointSet, row_idx: torch.Tensor, cols: PointSet, col_idx: torch.Tensor,
                        valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(R, c) canonical distances d(rows[row_idx[r]], cols[col_idx[r, q]]); entries not `valid` are +inf."""
    dots = list_dots(rows, row_idx, cols, col_idx, valid)
    d = combine(rows.ensure_sq64()[row_idx], cols.ensure_sq64()[col_idx.clamp_min(0)], dots)
    return d if valid is None else d.masked_fill_(~valid, float("inf"))


def sorted_by_distance(d: torch.Tensor, idx: torch.Tensor):
    """Sort each row by (distance, index): ties -> lower index first, whatever order the inputs are in."""
    by_index = torch.sort(idx, dim=1, stable=True).indices
    d, idx = d.gather(1, by_index), idx.gather(1, by_index)
    by_dist = torch.sort(d, dim=1, stable=True).indices
    return d.gather(1, by_dist), idx.gather(1, by_dist)


def margin(t: torch.Tensor) -> torch.Tensor:
    """An upper threshold raised to >= 0 and by a few float32 ulps: clamped squared distances just past it
    cannot share its square root (sqrt maps neighbouring float32 values to the same result)."""
    t = t.clamp_min(0)
    return t + t * (8 * U32) + 2.0 ** -140


def margin_down(t: torch.Tensor) -> torch.Tensor:
    """A lower threshold lowered by a few float32 ulps (see `margin`)."""
    return t - t.abs() * (8 * U32) - 2.0 ** -140


def min_candidates(A: torch.Tensor, bound: torch.Tensor, width: int, widen: bool = True):
    """Per row of screened squared distances A (r, n) (+inf = not eligible), every column whose canonical value
    could be the row's minimum: (values, columns, valid) of the `width` smallest, widened until complete (one host
    read per try). `widen=False`: one try, no host read; the list may be incomplete where the last entry is valid
    and `width < n` (the caller checks)."""
    n = A.shape[1]
    while True:
        width = min(width, n)
        vals, cols = torch.topk(A, width, dim=1, largest=False)
        tau = margin(vals[:, 0] + bound)
        valid = torch.isfinite(vals) & (vals - bound[:, None] <= tau[:, None])
        if not widen or width == n or not bool(valid[:, -1].any()):
            return vals, cols, valid
        width *= 4
