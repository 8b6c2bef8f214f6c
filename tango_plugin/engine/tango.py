"""Tango token selection and merging on one video's tokens (docs/algorithm.md §1.4 and §2-§4).

Flow: zero the sink scores -> segment the frames -> rotate an L2-normalised copy with ST-RoPE (clustering
space) -> per segment: static/dynamic split, diversity-driven salient pick per frame, context merging over the
segment -> kept flat indices sorted ascending with their (merged) features.

Everything that the reference does one frame at a time is batched here: all single-frame segments form one
batch, and the per-frame salient picks of a segment are one batched DPC-KNN.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..config import TangoConfig
from . import scratch, threads, trace
from .budgets import adjusted_ratio, frame_budgets, segment_budgets
from .clustering import PointSets, cluster, route_name
from .distances import FrameOperands
from .dpc import merge_clusters, stable_topk
from .gather import gathered, rows_of
from .segmentation import consecutive_similarity, fastvid_segments, holitom_segments
from .strope import RopeTables, frame_times, strope_sections
from .types import PrunePlan, VisualTokens

__all__ = ["tango_prune", "masked_saliency", "stable_topk", "frame_budgets", "segment_budgets", "adjusted_ratio"]


def masked_saliency(saliency: torch.Tensor, sink_positions: Sequence[int]) -> torch.Tensor:
    """A copy of (T, L) saliency with the attention-sink columns set to 0 (they stay eligible, lowest score).

    Detached: scores only make decisions (docs/training.md, "Gradients").
    """
    scores = saliency.detach().clone()
    if len(sink_positions):
        scores[:, list(sink_positions)] = 0
    return scores


# Frames of the single-frame path processed together: about this many bytes of float32 distance operands. Below
# glibc's largest mmap threshold (32 MiB), so freed temporaries are reused instead of mapped and faulted in again.
FRAME_CHUNK_BYTES = 12 << 20


class _Kept:
    """Kept (flat index, feature) pieces, concatenated and sorted at the end."""

    def __init__(self) -> None:
        self.indices: List[torch.Tensor] = []
        self.features: List[torch.Tensor] = []

    def add(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        self.indices.append(indices.reshape(-1))
        self.features.append(features.reshape(indices.numel(), -1))

    def plan(self, dim: int, dtype: torch.dtype, device) -> PrunePlan:
        if not self.indices:
            return PrunePlan(torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dim, dtype=dtype,
                                                                                           device=device))
        idx = torch.cat(self.indices)
        feats = torch.cat(self.features)
        order = torch.sort(idx, stable=True).indices
        return PrunePlan(kept_indices=idx[order], features=feats[order])


class _Deferred:
    """Device-side checks of the assumption the sync-free path makes (no repeated salient pick in a row), read
    once at the end of the call instead of once per segment (docs/algorithm.md, "Host syncs")."""

    def __init__(self) -> None:
        self.flags: List[torch.Tensor] = []

    def repeats(self, picks: torch.Tensor) -> None:
        if picks.shape[-1] > 1:
            ordered = picks.sort(dim=-1).values
            self.flags.append((ordered[..., 1:] == ordered[..., :-1]).any())

    def failed(self) -> bool:
        return bool(torch.stack(self.flags).any()) if self.flags else False


def _free_positions(free: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending positions of the `count` True entries of each row of `free` (B, n), when every row has exactly
    `count`: what ``torch.nonzero(free)[:, 1].reshape(B, count)`` gives, without reading the mask on the host."""
    return torch.sort((~free).to(torch.uint8), dim=1, stable=True).indices[:, :count]


def _compact_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`rows_of(x, idx)` flattened to (B * k, D), written over x's own leading rows (x contiguous; its rows are dead
    afterwards): a few frames at a time through a small buffer, so no second copy of a large pool is made.
    Safe because the rows written, up to (b + g) * k, end before the first row not yet read, (b + g) * n."""
    B, n, D = x.shape
    k = idx.shape[1]
    flat = x.view(B * n, D)
    g = max(1, FRAME_CHUNK_BYTES // max(1, k * D * x.element_size()))
    for b in range(0, B, g):
        part = rows_of(x[b:b + g], idx[b:b + g], "compact")
        flat[b * k:b * k + part.shape[0] * k] = part.view(-1, D)
    return flat[:B * k]


def _select_salient(roped: torch.Tensor, scores: torch.Tensor, k_s: int, cfg: TangoConfig,
                    per_item: bool = False, frames: "FrameOperands | None" = None) -> torch.Tensor:
    """Diversity-driven salient pick per row: (B, n, D), (B, n) -> local indices (B, k_s).

    Take the top int(alpha * k_s) candidates by score, cluster them into k_s groups (DPC-KNN in ST-RoPE space,
    nearest centre in density order), and keep the best-scored member of each group (an empty group keeps its
    centre). `frames` (single-frame path): the frames' shared distance operands.
    """
    n = scores.shape[1]
    m = min(int(cfg.alpha * k_s), n)
    target = min(k_s, m)
    cand = stable_topk(scores, m)  # (B, m), best first
    if m <= target or m <= 1:
        return cand
    cand_scores = torch.gather(scores, 1, cand)
    sets = PointSets(frames=frames if frames is not None else FrameOperands(roped, "segment"), members=cand)
    centers, assign = cluster(sets, target, cfg.num_neighbors, "density", per_item=per_item,
                              max_block_elements=cfg.max_block_elements, screen=cfg.distance_screen)
    member = assign[..., None] == torch.arange(target, device=assign.device)  # (B, m, target)
    lowest = torch.finfo(cand_scores.dtype).min if cand_scores.is_floating_point() else -(2 ** 62)
    best = cand_scores[..., None].masked_fill(~member, lowest).argmax(dim=1)  # first best in candidate order
    rel = torch.where(member.any(dim=1), best, centers)
    return torch.gather(cand, 1, rel)


def _merge_context(feats: torch.Tensor, sets: PointSets, num_anchors: int, cfg: TangoConfig,
                   per_item: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick `num_anchors` anchors per pool by DPC-KNN and merge the whole pool into them.

    Args:
        feats: (B, P, D) raw features of each pool; sets: the pools' clustering points (B sets of P).

    Returns:
        (anchor local indices (B, A), merged anchor features (B, A, D)). With `reference_merge_order` the merged
        features are laid out as the reference writes them (see `TangoConfig.reference_merge_order`).
    """
    centers, assign = cluster(sets, num_anchors, cfg.num_neighbors, "ascending", per_item=per_item,
                              max_block_elements=cfg.max_block_elements, screen=cfg.distance_screen)
    return _merged(feats, centers, centers.sort(dim=1).values, assign, cfg)


def _merged(feats: torch.Tensor, centers: torch.Tensor, ascending: torch.Tensor, assign: torch.Tensor,
            cfg: TangoConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge each pool into its anchors (`centers` in density order, `ascending` sorted; `assign` into the sorted
    anchors): what `_merge_context` returns."""
    merged = merge_clusters(feats, assign, rows_of(feats, ascending), cfg.beta)
    if cfg.reference_merge_order:
        # the reference writes merged values (ascending anchor order) to the anchors in density order
        return centers, merged
    return ascending, merged


def _compress_frames(feats: torch.Tensor, roped: torch.Tensor, scores: torch.Tensor, ratio: float,
                     cfg: TangoConfig, deferred: "_Deferred | None" = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The single-frame path (docs/algorithm.md §4.5) for B frames of the same size at once.

    Args:
        feats / roped: (B, L', D); scores: (B, L').
        deferred: None reads the pool sizes on the host; else they are taken to be L' - picks (no repeated pick,
            checked on the device into `deferred`).

    Returns:
        (local indices (B, K), features (B, K, D)); K is the same for every frame.
    """
    B, n, D = feats.shape
    k_s, k_c = frame_budgets(n, ratio, cfg.context_ratio)
    picked_idx, picked_feats = [], []
    free = torch.ones(B, n, dtype=torch.bool, device=feats.device)
    ops = FrameOperands(roped)  # every distance of the path is among one frame's rows (built on first use)
    if k_s > 0:
        sal = _select_salient(roped, scores, k_s, cfg, per_item=True, frames=ops)  # the reference: one frame at a time
        picked_idx.append(sal)
        picked_feats.append(rows_of(feats, sal))
        free.scatter_(1, sal, False)
    if k_c > 0 and deferred is not None:
        if picked_idx:
            deferred.repeats(picked_idx[0])
        pool_size = n - (picked_idx[0].shape[1] if picked_idx else 0)
        idx, merged = _context_of_pools(feats, roped, free, pool_size, k_c, cfg, known_size=True, ops=ops)
        picked_idx.append(idx)
        picked_feats.append(merged)
    elif k_c > 0:
        pool_sizes = free.sum(dim=1)
        if bool((pool_sizes == pool_sizes[0]).all()):
            idx, merged = _context_of_pools(feats, roped, free, int(pool_sizes[0]), k_c, cfg, ops=ops)
            picked_idx.append(idx)
            picked_feats.append(merged)
        else:  # duplicate salient picks (degenerate ties) leave pools of different sizes: one frame at a time
            rows = [_context_of_pools(feats[b:b + 1], roped[b:b + 1], free[b:b + 1], int(pool_sizes[b]), k_c, cfg)
                    for b in range(B)]
            width = max(r[0].shape[1] for r in rows)
            if any(r[0].shape[1] != width for r in rows):
                return _ragged_frames(feats, picked_idx, picked_feats, rows)
            picked_idx.append(torch.cat([r[0] for r in rows]))
            picked_feats.append(torch.cat([r[1] for r in rows]))
    if not picked_idx:
        return torch.empty(B, 0, dtype=torch.long, device=feats.device), feats[:, :0]
    return torch.cat(picked_idx, dim=1), torch.cat(picked_feats, dim=1)


def _ragged_frames(feats, picked_idx, picked_feats, rows):
    """Frames whose kept counts differ (only in degenerate ties): return them as lists."""
    idx = [torch.cat([p[b] for p in picked_idx] + [rows[b][0][0]]) for b in range(feats.shape[0])]
    out = [torch.cat([p[b] for p in picked_feats] + [rows[b][1][0]]) for b in range(feats.shape[0])]
    return idx, out


def _context_of_pools(feats, roped, free, pool_size: int, k_c: int, cfg: TangoConfig, known_size: bool = False,
                      ops: "FrameOperands | None" = None):
    """Context tokens of B pools of equal size: keep all if they fit the budget, else cluster and merge.
    `ops`: the frames' shared distance operands (each pool is clustered on its own, as `per_item`)."""
    B, _, D = feats.shape
    if known_size:
        pool = _free_positions(free, pool_size)
    else:
        pool = torch.nonzero(free)[:, 1].reshape(B, pool_size)  # ascending local indices
    n_ctx = min(k_c, pool_size)
    if pool_size == 0:
        return pool, feats[:, :0]
    if pool_size <= n_ctx:
        return pool, rows_of(feats, pool)
    sets = PointSets(frames=ops if ops is not None else FrameOperands(roped, "frames.one"), members=pool)
    local, merged = _merge_context(rows_of(feats, pool, "pool.feats"), sets, n_ctx, cfg, per_item=True)
    return torch.gather(pool, 1, local), merged


class _Video:
    """One video's inputs plus the lazily built clustering space (normalised + ST-RoPE rotated copies).

    Only the tokens a step clusters are rotated: all tokens of single-frame segments, the first frame's static
    tokens and every frame's dynamic tokens of longer segments. Rotation is per token, so this gives the same
    values as rotating the whole video first (the reference) at a fraction of the work and memory.
    """

    def __init__(self, tokens: VisualTokens, cfg: TangoConfig) -> None:
        self.feats = tokens.features
        # decisions (similarity, clustering, assignment) read a detached view, so that under autograd only the
        # feature path (row gathers, temporal means, cluster merges) is recorded (docs/training.md, "Gradients")
        self.signal = tokens.features.detach().contiguous()  # rows are gathered from its flat view
        T, L, _ = self.feats.shape
        self.scores = masked_saliency(tokens.saliency, tokens.sink_positions)
        self.t_pos = frame_times(T, tokens.timestamps).to(self.feats.device)
        cells = torch.arange(L, device=self.feats.device)
        self.rows, self.cols = cells // tokens.grid_hw[1], cells % tokens.grid_hw[1]
        self.cfg = cfg
        self._rope: "RopeTables | None" = None  # built on first use

    def cells_of(self, start: int, n: int, cells: torch.Tensor) -> torch.Tensor:
        """(n, cells, D) features of frames start.. start + n - 1 (whole rows of the flat video)."""
        T, L, D = self.feats.shape
        rows = ((torch.arange(start, start + n, device=cells.device) * L)[:, None] + cells).flatten()
        # the buffer of `roped`: the static cells' features are consumed before the segment's rotated ones
        return gathered(self.feats.reshape(T * L, D), rows, "roped").view(n, -1, D)

    def roped(self, frames) -> torch.Tensor:
        """(n, L, D) float32 clustering features of whole frames `frames` (a slice or an index tensor) in the scratch
        buffer "roped" (a view: dead once the name is taken again): `roped_groups` of one-frame groups, except that a
        run of float32 frames is normalised straight from the video into the buffer (no gather)."""
        x = self.signal
        frame_ids = torch.arange(x.shape[0], device=x.device)[frames] if isinstance(frames, slice) else frames
        if not (isinstance(frames, slice) and x.dtype == torch.float32):
            return self.roped_groups(frame_ids[:, None], None)
        out = scratch.take("roped", x[frames].shape, torch.float32, x.device)
        return self._normalised_rotated(x[frames], out, frame_ids[:, None], None)

    def rope_tables(self) -> RopeTables:
        if self._rope is None:
            self._rope = RopeTables(self.signal.shape[-1], self.t_pos, self.rows, self.cols, self.cfg.base_time,
                                    self.cfg.base_space)
        return self._rope

    def roped_groups(self, frames: torch.Tensor, cells: "torch.Tensor | None", name: str = "roped") -> torch.Tensor:
        """(G * f, c, D) float32 clustering features of G segments at once, in the scratch buffer `name`: frames
        (G, f) of each segment, each with its own cells (G, c), or every cell (None).

        The rows are gathered as whole rows of the flattened video (a strided gather along the token axis is
        several times slower), then normalised and rotated in place: the operations of
        ``rope(F.normalize(x.float()))``, so the same bits.
        """
        x = self.signal
        T, L, D = x.shape
        G, f = frames.shape
        c = L if cells is None else cells.shape[1]
        out = scratch.take(name, (G * f, c, D), torch.float32, x.device)
        raw = out if x.dtype == torch.float32 else scratch.take(name + ".raw", out.shape, x.dtype, x.device)
        if cells is None:  # whole frames
            torch.index_select(x.view(T, L * D), 0, frames.flatten(), out=raw.view(G * f, L * D))
        else:
            torch.index_select(x.view(T * L, D), 0, (frames[:, :, None] * L + cells[:, None, :]).flatten(),
                               out=raw.view(-1, D))
        src = out.copy_(raw) if raw is not out else out
        return self._normalised_rotated(src, out, frames, cells)

    def _normalised_rotated(self, src: torch.Tensor, out: torch.Tensor, frames: torch.Tensor,
                            cells: "torch.Tensor | None") -> torch.Tensor:
        """`src` L2-normalised into `out` (F.normalize's norm, clamp and division) and rotated there in place."""
        G, f = frames.shape
        with threads.wide(out.numel(), threads.WIDE_MIN_ELEMENTS):
            torch.div(src, src.norm(2, -1, keepdim=True).clamp_min_(1e-12), out=out)
            self.rope_tables().rotate_(out.view(G, f, *out.shape[1:]), frames, cells)
        return out


def _token_similarity(feats: torch.Tensor, frames_per_chunk: int = 4) -> torch.Tensor:
    """(T-1, L) cosine similarity of each token with itself in the next frame, a few frames at a time (the
    normalised chunk and its products stay in scratch buffers small enough for the CPU's last-level cache)."""
    T, L, D = feats.shape
    out = torch.empty(max(T - 1, 0), L, dtype=torch.float32, device=feats.device)
    n = min(T, frames_per_chunk + 1)
    normed_buf = scratch.take("similarity.normed", (n, L, D), torch.float32, feats.device)
    products = scratch.take("similarity.products", (max(n - 1, 0), L, D), torch.float32, feats.device)
    for a in range(0, T - 1, frames_per_chunk):
        chunk = feats[a:a + frames_per_chunk + 1]
        c = chunk.shape[0]
        # chunk.float() widened into the buffer (no fresh tensor per chunk), normalised there in place
        src = chunk if chunk.dtype == torch.float32 else normed_buf[:c].copy_(chunk)
        normed = F.normalize(src, p=2, dim=-1, out=normed_buf[:c])
        # what consecutive_similarity computes, into the buffers
        torch.sum(torch.mul(normed[:-1], normed[1:], out=products[:c - 1]), dim=-1, out=out[a:a + c - 1])
    return out


# Segments of the same shape processed together: about this many bytes of rotated float32 features at once.
SEGMENT_CHUNK_BYTES = 24 << 20


def _segment_groups(multi: List[Tuple[int, int]], counts: List[int], L: int, D: int) -> List[List[int]]:
    """Positions in `multi` of the segments to process together: same frame count and static count (so the same
    shapes and budgets), a few at a time (SEGMENT_CHUNK_BYTES of rotated features)."""
    by_shape = {}
    for i, ((_, n), count) in enumerate(zip(multi, counts)):
        by_shape.setdefault((n, count), []).append(i)
    groups = []
    for (n, _), members in by_shape.items():
        per_chunk = max(1, SEGMENT_CHUNK_BYTES // max(1, n * L * D * 4))
        groups += [members[a:a + per_chunk] for a in range(0, len(members), per_chunk)]
    return groups


def _segments(kept: _Kept, video: _Video, starts: List[int], n: int, static: torch.Tensor, num_static: int,
              deferred: "_Deferred | None") -> None:
    """G segments of n > 1 frames with the same static count, at once (docs/algorithm.md §4.1-§4.4).

    Every step works per frame, per set or per segment (the single-frame path of the static pseudo-frames, the
    salient sets, the pools: each set's route gives it the bits it gets alone, `clustering.route_name`), so one
    batched call per step gives each segment the plan it gets alone, with one set of kernels for all G. Two things
    stay per segment: the temporal means (a reduction whose split could depend on the batch) and the salient pick
    when its route is "batched" (the reference's one product per segment).

    Args:
        starts: the G segments' first frames; static: (G, L) their static masks; num_static: their common count.
        deferred: as in `_compress_frames`; None (the per-segment path, G == 1): the pool's size is read on the
            host, so a repeated salient pick (a pool one larger) is handled exactly.
    """
    cfg = video.cfg
    feats = video.feats
    _, L, D = feats.shape
    dev = feats.device
    G = len(starts)
    frames = torch.tensor(starts, device=dev)[:, None] + torch.arange(n, device=dev)  # (G, n)
    flat = frames[:, :, None] * L + torch.arange(L, device=dev)  # (G, n, L) flat token indices
    ratio = adjusted_ratio(cfg.retention_ratio, n, L, num_static)
    scores = video.scores[frames]  # (G, n, L)
    # static cells first, then dynamic ones, each ascending: what nonzero(static) and nonzero(~static) give
    cells_in_order = torch.sort((~static).to(torch.uint8), dim=1, stable=True).indices  # (G, L)

    if num_static:
        _static_pseudo_frames(kept, video, starts, frames, flat, scores, cells_in_order[:, :num_static], ratio,
                              deferred)
    n_dyn = L - num_static
    if n_dyn == 0:
        return
    if num_static:
        cells = cells_in_order[:, num_static:]
        d_flat = torch.gather(flat, 2, cells[:, None, :].expand(G, n, n_dyn)).view(G * n, n_dyn)
        d_scores = torch.gather(scores, 2, cells[:, None, :].expand(G, n, n_dyn)).view(G * n, n_dyn)
    else:  # every cell is dynamic, in order
        cells, d_flat, d_scores = None, flat.view(G * n, L), scores.view(G * n, L)
    d_roped = video.roped_groups(frames, cells)  # (G * n, n_dyn, D)
    flat_feats = feats.reshape(-1, D)
    k_s, k_c = segment_budgets(n_dyn, ratio, cfg.context_ratio)
    free = torch.ones(G * n, n_dyn, dtype=torch.bool, device=dev)
    picks = 0
    if k_s > 0:
        local = _select_salient_of_segments(d_roped, d_scores, min(k_s, n_dyn), cfg, G)  # (G * n, k_s)
        sal = torch.gather(d_flat, 1, local)
        kept.add(sal, torch.index_select(flat_feats, 0, sal.flatten()))
        free.scatter_(1, local, False)
        picks = local.shape[1]
        if deferred is not None:
            deferred.repeats(local)
    if k_c > 0:
        _segment_context(kept, video, d_flat, d_roped, free, n_dyn - picks, k_c * n, G, deferred)


def _static_pseudo_frames(kept: _Kept, video: _Video, starts: List[int], frames: torch.Tensor, flat: torch.Tensor,
                          scores: torch.Tensor, cells: torch.Tensor, ratio: float,
                          deferred: "_Deferred | None") -> None:
    """§4.1: each segment's static cells as one pseudo-frame (temporal means of features and scores, per segment;
    the clustering features of its first frame), all G through one single-frame batch (§4.5)."""
    n = frames.shape[1]
    means = [(video.cells_of(s, n, c).mean(dim=0), scores[g][:, c].mean(dim=0))
             for g, (s, c) in enumerate(zip(starts, cells))]
    idx, out = _compress_frames(torch.stack([m[0] for m in means]),
                                video.roped_groups(frames[:, :1], cells, "roped.static"),
                                torch.stack([m[1] for m in means]), ratio, video.cfg, deferred)
    if isinstance(idx, list):  # only without `deferred`, so G == 1
        idx, out = idx[0][None], out[0][None]
    kept.add(torch.gather(torch.gather(flat[:, 0], 1, cells), 1, idx), out)


def _segment_context(kept: _Kept, video: _Video, d_flat: torch.Tensor, d_roped: torch.Tensor, free: torch.Tensor,
                     pool_size: int, budget: int, G: int, deferred: "_Deferred | None") -> None:
    """§4.4: each segment's pool (its frames' free dynamic tokens, frame-major) kept whole if it fits the segment's
    `budget`, else merged into `budget` anchors. `pool_size`: free tokens per frame when no pick repeated (the
    deferred path); without `deferred` (G == 1) the pool is read through the mask, whatever its size."""
    D = d_roped.shape[-1]
    flat_feats = video.feats.reshape(-1, D)
    if deferred is not None:  # frame-major, then token order, per segment: what a boolean mask gives
        pool_local = _free_positions(free, pool_size)
        pool_flat = torch.gather(d_flat, 1, pool_local).view(G, -1)
    else:
        pool_local, pool_flat = None, d_flat[free][None]
    if pool_flat.shape[1] <= budget:
        kept.add(pool_flat, torch.index_select(flat_feats, 0, pool_flat.flatten()))
        return
    pool_roped = (_compact_rows(d_roped, pool_local) if pool_local is not None else d_roped[free]
                  ).view(G, pool_flat.shape[1], D)
    local, merged = _merge_context(gathered(flat_feats, pool_flat.flatten(), "pool.feats").view(G, -1, D),
                                   PointSets(pool_roped), budget, video.cfg, per_item=True)
    kept.add(torch.gather(pool_flat, 1, local), merged)


def _select_salient_of_segments(roped: torch.Tensor, scores: torch.Tensor, k_s: int, cfg: TangoConfig,
                                G: int) -> torch.Tensor:
    """`_select_salient` of G segments' frames (G * n rows): one call, or one per segment where a segment's call
    takes the "batched" route (one batched product over its frames, whose bits may depend on the batch)."""
    n = roped.shape[0] // G
    m = min(int(cfg.alpha * k_s), roped.shape[1])
    if route_name(n, m, False, cfg.max_block_elements) == "batched":
        return torch.cat([_select_salient(roped[g * n:(g + 1) * n], scores[g * n:(g + 1) * n], k_s, cfg)
                          for g in range(G)])
    return _select_salient(roped, scores, k_s, cfg, per_item=True)


def _segment_sizes(token_sim: torch.Tensor, tokens: VisualTokens, cfg: TangoConfig) -> List[int]:
    if cfg.segmentation == "holitom":
        return holitom_segments(token_sim, cfg.similarity_threshold, cfg.holitom_max_window)
    if tokens.frame_embeddings is None:
        raise ValueError("segmentation='fastvid' needs frame_embeddings (T, D'): one global embedding per frame")
    emb = F.normalize(tokens.frame_embeddings.detach().float(), p=2, dim=-1)
    return fastvid_segments(consecutive_similarity(emb), cfg.similarity_threshold, cfg.fastvid_min_cuts)


HOST_READS = ("deferred", "per-segment")


def tango_prune(tokens: VisualTokens, cfg: TangoConfig, host_reads: str = "deferred") -> PrunePlan:
    """Tango on one video. Inputs are not modified; the output follows the features' dtype and device.

    The host reads a fixed number of values per call, however many segments and frames the video has
    (docs/algorithm.md, "Host syncs"): the segment sizes, every segment's static count at once, and one deferred
    check at the end. When that check finds a repeated salient pick (degenerate ties only), the call is redone on
    the path that reads the pool sizes segment by segment; both paths give the same plan.

    Args:
        tokens: the video's tokens (see `VisualTokens`).
        cfg: the run's settings.
        host_reads: "deferred" (the default above) or "per-segment" (that fallback path from the start: slower,
            for checks). `trace.recorded()` notes which path gave the plan.
    """
    if host_reads not in HOST_READS:
        raise ValueError(f"host_reads={host_reads!r}: allowed {HOST_READS}")
    with scratch.session(), threads.call_threads():
        plan, path = (_tango_prune(tokens, cfg, _Deferred()) if host_reads == "deferred" else None), "deferred"
        if plan is None:
            plan, path = _tango_prune(tokens, cfg, None), "per-segment"
    trace.note("path " + path)
    return plan


def _tango_prune(tokens: VisualTokens, cfg: TangoConfig, deferred: "_Deferred | None"):
    feats = tokens.features
    T, L, D = feats.shape
    strope_sections(D)  # clear error for an odd or too small D
    video = _Video(tokens, cfg)
    token_sim = _token_similarity(video.signal)  # segmentation and the static test
    sizes = _segment_sizes(token_sim, tokens, cfg)

    kept = _Kept()
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    singles = [s for s, n in zip(starts, sizes) if n == 1]
    # the single-frame segments in batches of the same size (unadjusted ratio), a few frames at a time: every
    # temporary then stays small enough for the allocator to reuse (docs/algorithm.md §4.5)
    chunk = max(1, FRAME_CHUNK_BYTES // max(1, L * (D + 2) * 4))
    for a in range(0, len(singles), chunk):
        part = singles[a:a + chunk]
        frames = torch.tensor(part, device=feats.device)
        if part == list(range(part[0], part[0] + len(part))):  # slices, not gathers, for runs of frames
            frames_or_run = slice(part[0], part[0] + len(part))
        else:
            frames_or_run = frames
        if isinstance(frames_or_run, slice):
            part_feats = feats[frames_or_run]
        else:  # only rows of these frames are read (and copied) later: the gather's buffer is scratch
            part_feats = gathered(feats.reshape(T, L * D), frames, "frames.feats").view(-1, L, D)
        idx, out = _compress_frames(part_feats, video.roped(frames_or_run), video.scores[frames_or_run],
                                    cfg.retention_ratio, cfg, deferred)
        if isinstance(idx, list):
            for f, i, o in zip(part, idx, out):
                kept.add(f * L + i, o)
        else:
            kept.add(frames[:, None] * L + idx, out)
    multi = [(s, n) for s, n in zip(starts, sizes) if n > 1]
    if multi:
        # every multi-frame segment's static mask, and their counts in one host read
        static = torch.stack([(token_sim[s:s + n - 1] > cfg.static_threshold).all(dim=0) for s, n in multi])
        counts = [int(c) for c in static.sum(dim=1).tolist()]
        # segments of the same shape together; one at a time on the path that reads pool sizes on the host
        groups = _segment_groups(multi, counts, L, D) if deferred is not None else [[i] for i in range(len(multi))]
        for group in groups:
            _segments(kept, video, [multi[i][0] for i in group], multi[group[0]][1], static[group],
                      counts[group[0]], deferred)
    if deferred is not None and deferred.failed():
        return None
    return kept.plan(D, feats.dtype, feats.device)
