"""FastVID: dynamic temporal segmentation, then density-based spatio-temporal pruning inside each segment.

Paper: "FastVID: Dynamic Density Pruning for Fast Video Large Language Models", Leqi Shen, Guoqiang Gong, Tao He,
Yifeng Zhang, Pengzhang Liu, Sicheng Zhao, Guiguang Ding, NeurIPS 2025, arXiv:2503.11187.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from ..config import TangoConfig
from ..engine.budgets import frame_keep_count
from ..engine.clustering import PointSets, assign_to_members, cluster
from ..engine.dpc import merge_clusters
from ..engine.segmentation import consecutive_similarity, fastvid_segments
from ..engine.types import PrunePlan, VisualTokens
from ._common import assemble, check_number, normalized, resolve_options, top_per_frame
from .base import PruningStrategy, register_strategy


@dataclass(frozen=True)
class FastVIDOptions:
    """Args:
        min_segments: c of DySeg; the c - 1 least similar frame transitions are always cut (at least c segments).
        similarity_threshold: tau of DySeg; every transition less similar than tau is cut as well.
        density_ratio: d, the share of each frame's budget spent on density-based merged tokens (DTM); the rest
            goes to attention-based selection (ATS).
        anchor_interval: p; anchor tokens are taken from every p-th frame of a segment (its first frame first).
        beta: floor of an anchor's own weight when its members are merged into it: the merged token is
            w * anchor + (1 - w) * mean(members), w = max(1 / members, beta) (a lone anchor stays unchanged).
        num_neighbors: k of the DPC-KNN density of the anchor candidates.

    Defaults: c = 8, tau = 0.9, d = 0.4, p = 4, beta = 0.6, the authors' LLaVA-OneVision / LLaVA-Video run
    scripts; k = 5 is our choice.
    """

    min_segments: int = 8
    similarity_threshold: float = 0.9
    density_ratio: float = 0.4
    anchor_interval: int = 4
    beta: float = 0.6
    num_neighbors: int = 5

    def __post_init__(self) -> None:
        check_number("min_segments", self.min_segments, 1, 2 ** 31, integer=True)
        check_number("similarity_threshold", self.similarity_threshold, -1.0, 1.0)
        check_number("density_ratio", self.density_ratio, 0.0, 1.0)
        check_number("anchor_interval", self.anchor_interval, 1, 2 ** 31, integer=True)
        check_number("beta", self.beta, 0.0, 1.0)
        check_number("num_neighbors", self.num_neighbors, 1, 2 ** 31, integer=True)


def fastvid_counts(tokens_per_frame: int, ratio: float, density_ratio: float):
    """(attention-selected, density-merged) tokens per frame: k = ceil(L * r), ATS = int(k * (1 - d)), DTM = k - ATS
    (a segment of n frames keeps n * DTM merged tokens)."""
    k = frame_keep_count(tokens_per_frame, ratio)
    ats = int(k * (1.0 - density_ratio))
    return ats, k - ats


@register_strategy("fastvid")
class FastVIDStrategy(PruningStrategy):
    """FastVID (Shen et al., NeurIPS 2025, arXiv:2503.11187).

    1. DySeg: cosine similarity of consecutive frames' global features (``tokens.frame_embeddings``, else the mean
       token of each frame); cut after the c - 1 least similar transitions and after every transition below tau
       (`tango_plugin.engine.segmentation.fastvid_segments`). A scene cut therefore always ends a segment.
    2. STPrune, per segment of n frames, k = ceil(L * r) per frame:
       * ATS: in every frame the int(k (1 - d)) tokens with the highest attention (sinks zeroed) are kept as they are;
       * DTM: the segment's other tokens are merged into n * (k - ATS) anchors. Anchor candidates are the remaining
         tokens of the anchor frames (every p-th frame); the anchors are the candidates with the highest DPC-KNN
         score rho * delta (density peaks), every remaining token of the segment joins its nearest anchor (cosine),
         and the anchor becomes w * anchor + (1 - w) * mean(members), w = max(1 / members, beta), at its position.

    Budget: exactly ``T * ceil(L * r)`` tokens.

    Simplifications: the density is computed among the anchor candidates only (a k-NN density of our choosing);
    when the anchor frames hold fewer candidates than the segment needs anchors
    (large r), the candidates are all remaining tokens of the segment.
    """
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    defaults = FastVIDOptions()

    def segments(self, tokens: VisualTokens, config: TangoConfig) -> List[int]:
        """DySeg: the segment lengths (frames) of this video."""
        opts = resolve_options(self.name, self.defaults, config)
        return self._segments(tokens, opts)

    @staticmethod
    def _segments(tokens: VisualTokens, opts: FastVIDOptions) -> List[int]:
        glob = tokens.frame_embeddings if tokens.frame_embeddings is not None else tokens.features.float().mean(1)
        sim = consecutive_similarity(normalized(glob))
        return fastvid_segments(sim, opts.similarity_threshold, opts.min_segments)

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        n_ats, n_dtm = fastvid_counts(L, config.retention_ratio, opts.density_ratio)
        _, ats_flat, ats_feats, rest = top_per_frame(tokens, n_ats)  # attention-based token selection
        idx_pieces, feat_pieces = [ats_flat], [ats_feats]
        if n_dtm > 0:
            start = 0
            for n in self._segments(tokens, opts):
                idx, out = self._merge_segment(feats, rest, start, n, n * n_dtm, opts)
                idx_pieces.append(idx)
                feat_pieces.append(out)
                start += n
        return assemble(idx_pieces, feat_pieces, D, feats.dtype, feats.device)

    @staticmethod
    def _merge_segment(feats, rest, start: int, n: int, num_anchors: int, opts: FastVIDOptions):
        """DTM on frames [start, start + n): (flat anchor indices, merged anchor features)."""
        L, D = feats.shape[1], feats.shape[2]
        pool = torch.nonzero(rest[start:start + n])  # (P, 2) rows (frame offset, cell), frame-major
        pool_flat = (pool[:, 0] + start) * L + pool[:, 1]
        pool_feats = feats.reshape(-1, D)[pool_flat]
        unit = normalized(pool_feats)
        is_cand = pool[:, 0] % opts.anchor_interval == 0
        if int(is_cand.sum()) < num_anchors:
            is_cand = torch.ones_like(is_cand)
        cand = torch.nonzero(is_cand).flatten()
        centres = cand[cluster(PointSets(unit[cand][None]), num_anchors, opts.num_neighbors, None)[0][0]].sort().values
        assign = assign_to_members(PointSets(unit[None]), centres[None])[0]
        assign[centres] = torch.arange(centres.numel(), device=feats.device)  # an anchor belongs to itself
        merged = merge_clusters(pool_feats[None], assign[None], pool_feats[centres][None], opts.beta)[0]
        return pool_flat[centres], merged


__all__ = ["FastVIDStrategy", "FastVIDOptions", "fastvid_counts"]
