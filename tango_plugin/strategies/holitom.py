"""HoliTom's outer-LLM stage: global redundancy-aware temporal segmentation, temporal merging of tokens that stay
the same through a segment, then spatial reduction of what remains.

Paper: "HoliTom: Holistic Token Merging for Fast Video Large Language Models", Kele Shao, Keda Tao, Can Qin,
Haoxuan You, Yang Sui, Huan Wang, NeurIPS 2025, arXiv:2505.21334.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from ..config import TangoConfig
from ..engine.budgets import frame_keep_count
from ..engine.clustering import PointSets, cluster
from ..engine.segmentation import consecutive_similarity, holitom_segments
from ..engine.tango import masked_saliency, stable_topk
from ..engine.types import PrunePlan, VisualTokens
from ._common import apportion, assemble, check_number, cluster_means, normalized, resolve_options
from .base import PruningStrategy, register_strategy


@dataclass(frozen=True)
class HoliTomOptions:
    """Args:
        similarity_threshold: tau; a token is temporally redundant over a segment when its cosine similarity with
            itself in the next frame stays above tau.
        beta: weight of a cluster's centre when the cluster is merged: beta * centre + (1 - beta) * mean(others).
        num_neighbors: k of the DPC-KNN density that clusters the merged static tokens.
        max_window: longest segment of the dynamic programme, in frames.

    Defaults: tau = 0.8, beta = 0.6, k = 7, window 1024, the authors' settings.
    """

    similarity_threshold: float = 0.8
    beta: float = 0.6
    num_neighbors: int = 7
    max_window: int = 1024

    def __post_init__(self) -> None:
        check_number("similarity_threshold", self.similarity_threshold, -1.0, 1.0)
        check_number("beta", self.beta, 0.0, 1.0)
        check_number("num_neighbors", self.num_neighbors, 1, 2 ** 31, integer=True)
        check_number("max_window", self.max_window, 1, 2 ** 31, integer=True)


def segment_split(num_frames: int, tokens_per_frame: int, num_static: int, budget: int) -> Tuple[int, List[int]]:
    """(static kept, dynamic kept per frame) of one segment after temporal merging.

    The segment holds ``S`` merged static tokens and ``n * (L - S)`` dynamic ones (P in all). If P <= budget
    everything stays. Otherwise both pools are reduced at the same rate: ``round(budget * S / P)`` static tokens,
    the rest of the budget spread evenly over the frames (earlier frames first), capped at L - S per frame; what a
    cap refuses goes back to the static pool.
    """
    n, L, S = num_frames, tokens_per_frame, num_static
    pool = S + n * (L - S)
    if pool <= budget:
        return S, [L - S] * n
    k_static = min(S, int(round(budget * S / pool)))
    dyn = apportion(budget - k_static, torch.ones(n), 0, L - S) if L > S else [0] * n
    k_static = min(S, budget - sum(dyn))
    return k_static, dyn


@register_strategy("holitom")
class HoliTomStrategy(PruningStrategy):
    """HoliTom (Shao et al., NeurIPS 2025, arXiv:2505.21334), the outer-LLM part, on one video.

    1. Temporal segmentation: the partition of the frames that maximises the number of tokens that can be merged
       over time (a dynamic programme, `tango_plugin.engine.segmentation.holitom_segments`; a window of w frames
       scores (w - 1) x #tokens similar above tau over all its consecutive pairs).
    2. Temporal merging: inside each segment, a grid position whose token stays similar (> tau) through the whole
       segment becomes one token, the mean over the segment's frames, placed at its first occurrence.
    3. Spatial merging, to the budget: the merged (redundant) tokens are clustered by DPC-KNN (density peaks, k
       neighbours), each cluster becoming beta * centre + (1 - beta) * mean(other members) at its centre; the
       non-redundant (dynamic) tokens of each frame are selected by attention (top saliency, sinks zeroed).

    Budget: a segment of n frames may keep ``n * ceil(L * r)`` tokens; it keeps fewer only when temporal merging
    alone leaves fewer (see `segment_split`). Total ``<= T * ceil(L * r)``, equal unless a segment is almost static.

    Simplifications: the paper's inner-LLM merging stage is not part of a pre-LLM strategy; its per-token
    redundancy within a segment is reduced to "similar through the whole segment" (what the segmentation
    objective counts); dynamic tokens are selected by attention only (no contextual merging among them); the budget
    is balanced per segment (static and dynamic pools at the same rate) rather than by one video-wide adjusted
    ratio.
    """
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    defaults = HoliTomOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        tau = float(opts.similarity_threshold)
        scores = masked_saliency(tokens.saliency, tokens.sink_positions)
        token_sim = self.token_similarity(feats)
        sizes = holitom_segments(token_sim, tau, opts.max_window)
        per_frame = frame_keep_count(L, config.retention_ratio)
        flat = feats.reshape(T * L, D)
        cells = torch.arange(L, device=feats.device)
        idx_pieces, feat_pieces = [], []
        start = 0
        for n in sizes:
            static = (token_sim[start:start + n - 1] > tau).all(dim=0) if n > 1 else torch.zeros(
                L, dtype=torch.bool, device=feats.device)
            S = int(static.sum())
            k_static, k_dyn = segment_split(n, L, S, n * per_frame)
            if S:
                pos = cells[static]
                merged = feats[start:start + n][:, pos].float().mean(dim=0)  # (S, D): one token per position
                idx, out = self._reduce_static(merged, k_static, opts)
                idx_pieces.append(start * L + pos[idx])
                feat_pieces.append(out)
            dyn_cells = cells[~static]
            for j, k in enumerate(k_dyn):
                if k:
                    t = start + j
                    local = stable_topk(scores[t, dyn_cells], k)
                    kept = t * L + dyn_cells[local]
                    idx_pieces.append(kept)
                    feat_pieces.append(flat[kept])
            start += n
        return assemble(idx_pieces, feat_pieces, D, feats.dtype, feats.device)

    @staticmethod
    def token_similarity(feats: torch.Tensor, frames_per_chunk: int = 16) -> torch.Tensor:
        """(T-1, L) cosine similarity of each token with the same grid position in the next frame."""
        T, L, _ = feats.shape
        out = torch.empty(max(T - 1, 0), L, dtype=torch.float32, device=feats.device)
        for a in range(0, T - 1, frames_per_chunk):
            out[a:a + frames_per_chunk] = consecutive_similarity(normalized(feats[a:a + frames_per_chunk + 1]))
        return out

    @staticmethod
    def _reduce_static(merged: torch.Tensor, k: int, opts: HoliTomOptions):
        """k of the S temporally merged tokens: all of them if k == S, else k DPC-KNN centres, each merged with the
        tokens nearest to it (beta * centre + (1 - beta) * mean of the others; a lone centre stays as it is)."""
        S = merged.shape[0]
        if k >= S:
            return torch.arange(S, device=merged.device), merged
        if k == 0:
            return torch.empty(0, dtype=torch.long, device=merged.device), merged[:0]
        unit = normalized(merged)[None]
        centres, assign = cluster(PointSets(unit), k, opts.num_neighbors, "ascending")
        centres, assign = centres[0].sort().values, assign[0]
        others = torch.ones(S, dtype=torch.bool, device=merged.device)
        others[centres] = False  # a centre heads its own cluster; it is not one of its members
        counts = torch.bincount(assign[others], minlength=k)
        means = cluster_means(merged[others], assign[others], k)
        centre_feats = merged[centres].float()
        out = torch.where(counts[:, None] > 0, opts.beta * centre_feats + (1 - opts.beta) * means, centre_feats)
        return centres, out


__all__ = ["HoliTomStrategy", "HoliTomOptions", "segment_split"]
