"""FlashVID: attention- and diversity-based token selection, then tree-based spatio-temporal merging.

Paper: "FlashVID: ...", Ziyang Fan et al., ICLR 2026, arXiv:2602.08024; code: Fanziyang-v/FlashVID (MIT), read at
commit 1d37422 (`flashvid/utils.py`, `flashvid/token_selection.py`, `flashvid/__init__.py`). This is the vision-side
compression (DySeg, ADTS, TSTM and the spatial clustering of the tree roots); the authors' second stage, a FastV
prune inside the LLM, is not a strategy. docs/strategies.md ("flashvid") lists every rule and each difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..config import TangoConfig
from ..engine.clustering import PointSets, assign_to_members, cluster
from ..engine.tango import masked_saliency
from ..engine.types import PrunePlan, VisualTokens
from ._common import assemble, check_number, cluster_means, resolve_options
from .base import PruningStrategy, register_strategy

SELECTIONS = ("attn_div", "attn_div_v2")

# largest (frames x L x L) similarity block built at once (float32 elements): bounds the memory of long videos
_MAX_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class FlashVIDOptions:
    """The authors' defaults (`flashvid()` in their code, LLaVA-OV / LLaVA-Video scripts), except `expansion`.

    Args:
        alpha: share of each frame's budget picked by ADTS; the rest comes from tree merging.
        temporal_threshold: a token joins its most similar token of the previous frame above this cosine (tau).
        segment_threshold: DySeg cuts between frames whose mean features' cosine is below this.
        min_segments: DySeg adds cuts at the least similar transitions up to this many segments (the Qwen scripts
            use 4).
        complementary_segment: whether DySeg adds those cuts.
        expansion: the per-frame budget is ceil(L r expansion). The authors use 1.25 together with their FastV prune
            inside the LLM (layer-averaged retention r); 1.0 here keeps r of the tokens, like every strategy.
        selection: "attn_div_v2" (attention x event relevance calibration; `flashvid()`'s default) or "attn_div"
            (attention only; the config class's default and the Qwen scripts').
    """

    alpha: float = 0.7
    temporal_threshold: float = 0.8
    segment_threshold: float = 0.9
    min_segments: int = 8
    complementary_segment: bool = True
    expansion: float = 1.0
    selection: str = "attn_div_v2"

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_number("temporal_threshold", self.temporal_threshold, -1.0, 1.0)
        check_number("segment_threshold", self.segment_threshold, -1.0, 1.0)
        check_number("min_segments", self.min_segments, 1, 1 << 20, integer=True)
        check_number("expansion", self.expansion, 0.0, 10.0, low_open=True)
        if not isinstance(self.complementary_segment, bool):
            raise ValueError(f"option complementary_segment={self.complementary_segment!r} is not allowed; "
                             "expected True or False")
        if self.selection not in SELECTIONS:
            raise ValueError(f"option selection={self.selection!r} is not allowed; expected one of {list(SELECTIONS)}")


def flashvid_budget(tokens_per_frame: int, ratio: float, alpha: float, expansion: float) -> Tuple[int, int, int]:
    """(budget, A, S) per frame: budget = clamp(ceil(L r expansion), 1, L), A = ceil(budget alpha) tokens picked by
    ADTS, S = budget - A tokens' worth of merged context."""
    budget = max(1, min(tokens_per_frame, math.ceil(tokens_per_frame * ratio * expansion)))
    picked = math.ceil(budget * alpha)
    return budget, picked, budget - picked


def dyseg(frame_means: torch.Tensor, threshold: float, min_segments: int, complementary: bool) -> List[int]:
    """DySeg: segment lengths of a video from its (T, D) per-frame mean features.

    Cut after frame t where cos(m_t, m_t+1) < threshold. With `complementary`, while there are fewer than
    `min_segments` segments, also cut at the least similar remaining transitions (ties to the earlier one).
    """
    T = frame_means.shape[0]
    if T == 1:
        return [1]
    sim = F.cosine_similarity(frame_means[:-1].float(), frame_means[1:].float(), dim=-1)
    cut = sim < threshold
    missing = min_segments - (int(cut.sum()) + 1)
    if complementary and missing > 0:
        others = torch.nonzero(~cut).flatten()
        order = torch.argsort(sim[others], stable=True)[:missing]
        cut[others[order]] = True
    ends = torch.nonzero(cut).flatten().tolist() + [T - 1]
    return [b - a for a, b in zip([-1] + ends[:-1], ends)]


def adts(features: torch.Tensor, attention: torch.Tensor, count: int, selection: str) -> torch.Tensor:
    """ADTS, attention- and diversity-based token selection, per frame of an (F, L, D) segment: (F, count) indices.

    Greedy max-min selection on calibrated distances D[i, j] = (1 - cos(x_i, x_j)) w_j, with w_j the token's
    attention ("attn_div") or attention times its event relevance <x_j, mean feature of the segment>
    ("attn_div_v2"). The first pick maximises min over other i of D[i, j]; each next one maximises the minimum of
    D[s, j] over the picked s. Ties go to the lower index.
    """
    Fn, L, _ = features.shape
    x = features.float()
    weight = attention.float()
    if selection == "attn_div_v2":
        weight = weight * (x @ x.reshape(Fn * L, -1).mean(0))
    unit = F.normalize(x, dim=-1)
    picks = []
    step = max(1, _MAX_BLOCK_ELEMENTS // (L * L))
    for a in range(0, Fn, step):
        dist = (1 - unit[a:a + step] @ unit[a:a + step].transpose(1, 2)) * weight[a:a + step, None, :]
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        rows = torch.arange(dist.shape[0], device=x.device)
        chosen = torch.zeros(dist.shape[0], L, dtype=torch.bool, device=x.device)
        score = dist.min(dim=1).values
        order = []
        for _ in range(count):
            pick = score.masked_fill(chosen, float("-inf")).argmax(dim=-1)
            chosen[rows, pick] = True
            order.append(pick)
            score = torch.minimum(score, dist[rows, pick]) if len(order) > 1 else dist[rows, pick]
        picks.append(torch.stack(order, dim=1) if order else rows.new_empty(dist.shape[0], 0))
    return torch.sort(torch.cat(picks), dim=-1).values


def tree_parents(features: torch.Tensor, selected: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """TSTM's edges: each token's most similar not-selected token in the previous frame, and that cosine.

    Args:
        features: (F, L, D) segment; selected: (F, L) ADTS picks (never a child nor a parent).
    Returns:
        parent (F, L) indices into the previous frame (0 for frame 0), similarity (F, L) (-1 for frame 0 and picks).
    """
    Fn, L, _ = features.shape
    unit = F.normalize(features.float(), dim=-1)
    parent = torch.zeros(Fn, L, dtype=torch.long, device=features.device)
    best = torch.full((Fn, L), -1.0, device=features.device)
    step = max(1, _MAX_BLOCK_ELEMENTS // (L * L))
    for a in range(1, Fn, step):
        b = min(Fn, a + step)
        sim = unit[a:b] @ unit[a - 1:b - 1].transpose(1, 2)  # (n, L child, L parent)
        sim = sim.masked_fill(selected[a:b, :, None] | selected[a - 1:b - 1, None, :], -1.0)
        best[a:b], parent[a:b] = sim.max(dim=-1)
    best[selected] = -1.0
    return parent, best


def merge_flags(similarity: torch.Tensor, threshold: float, lower_bound: int) -> torch.Tensor:
    """Which tokens join their parent: similarity > threshold; if that leaves fewer than `lower_bound` roots, only
    those above the k-th largest similarity, k = F L - lower_bound (so at least `lower_bound` roots remain)."""
    flags = similarity > threshold
    total = similarity.numel()
    if total - int(flags.sum()) < lower_bound:
        k = total - lower_bound
        if k <= 0:
            return torch.zeros_like(flags)
        soft = max(float(torch.sort(similarity.flatten(), descending=True).values[k - 1]), -1 + 1e-6)
        flags = similarity > soft
    return flags


def aggregate_trees(features: torch.Tensor, parent: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """(F, L, D) mean feature of the tree rooted at each token (meaningful at roots): every flagged token's subtree
    sum and size go to its parent, last frame first. The feature path stays differentiable."""
    Fn, L, D = features.shape
    sums = list(features.float().unbind(0))
    counts = [torch.ones(L, device=features.device) for _ in range(Fn)]
    for t in range(Fn - 1, 0, -1):
        child = torch.nonzero(flags[t]).flatten()
        if child.numel():
            sums[t - 1] = sums[t - 1].index_add(0, parent[t, child], sums[t][child])
            counts[t - 1] = counts[t - 1].index_add(0, parent[t, child], counts[t][child])
    return torch.stack(sums) / torch.stack(counts)[..., None]


def dpc_centres(points: torch.Tensor, count: int) -> torch.Tensor:
    """FlashVID's DPC-kNN centres of (n, D) points, by decreasing density x delta (ties to the lower index).

    The authors use distances / sqrt(D) and a density exp(-mean d^2 over the k = min(count, 7) nearest, the point
    itself included). The engine's DPC-KNN averages over the k - 1 nearest others; scaling the points by
    sqrt((k - 1) / (k D)) makes its density the authors' and scales every delta alike, so the order is theirs.
    With k = 1 every density is 1 and the first point is the one centre (the authors' noise picks one at random).
    """
    n, D = points.shape
    k = min(count, 7)
    if count >= n:
        return torch.arange(n, device=points.device)
    if k == 1:
        return torch.zeros(1, dtype=torch.long, device=points.device)
    scaled = points.float() * math.sqrt((k - 1) / (k * D))
    return cluster(PointSets(scaled[None]), count, k - 1, None)[0][0]


@register_strategy("flashvid")
class FlashVIDStrategy(PruningStrategy):
    """FlashVID (Fan et al., ICLR 2026, arXiv:2602.08024), vision side.

    Per frame budget b = ceil(L r), A = ceil(b alpha) picked, S = b - A merged (`flashvid_budget`).
    1. DySeg splits the video into segments (`dyseg`).
    2. Per segment of n frames: ADTS picks A tokens per frame (`adts`, saliency as the attention).
    3. TSTM: every other token may join its most similar other token of the previous frame (`tree_parents`,
       `merge_flags`); each tree becomes its root, the earliest token, carrying the tree's mean (`aggregate_trees`).
    4. The roots of each frame are clustered by DPC-kNN to ceil(n_t S n / total roots) centres (`dpc_centres`), each
       cluster the mean of its roots at the centre's position.
    Kept: about T b tokens (A per frame + at least S per frame, rounded up per frame).
    """

    feature_gradients = True
    defaults = FlashVIDOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        budget, A, S = flashvid_budget(L, config.retention_ratio, opts.alpha, opts.expansion)
        decide = feats.detach().float()
        attention = masked_saliency(tokens.saliency, tokens.sink_positions).float()
        lengths = dyseg(decide.mean(1), opts.segment_threshold, opts.min_segments, opts.complementary_segment)
        indices, outputs = [], []
        start = 0
        for n in lengths:
            seg = slice(start, start + n)
            picked = adts(decide[seg], attention[seg], A, opts.selection)
            offsets = (torch.arange(start, start + n, device=feats.device) * L)[:, None]
            indices.append((picked + offsets).flatten())
            outputs.append(feats.reshape(T * L, D)[indices[-1]])
            if S > 0 and opts.temporal_threshold < 1:
                idx, out = self._merged(feats[seg], decide[seg], picked, budget, S, start, opts.temporal_threshold)
                indices.append(idx)
                outputs.append(out)
            start += n
        return assemble(indices, outputs, D, feats.dtype, feats.device)

    @staticmethod
    def _merged(feats, decide, picked, budget: int, S: int, start: int, tau: float):
        """Steps 3-4 for one segment: (flat indices, features) of its cluster tokens."""
        n, L, D = feats.shape
        selected = torch.zeros(n, L, dtype=torch.bool, device=feats.device)
        selected.scatter_(1, picked, True)
        parent, similarity = tree_parents(decide, selected)
        flags = merge_flags(similarity, tau, budget * n) if n > 1 else torch.zeros_like(selected)
        trees = aggregate_trees(feats, parent, flags)
        roots = ~flags & ~selected
        total = int(roots.sum())
        if total == 0:
            return torch.empty(0, dtype=torch.long, device=feats.device), feats.new_empty(0, D)
        ratio = S * n / total
        indices, outputs = [], []
        for t in range(n):
            cols = torch.nonzero(roots[t]).flatten()
            count = math.ceil(cols.numel() * ratio)
            if count == 0:
                continue
            if ratio >= 1:
                centres, members = cols, trees[t, cols]
            else:
                points = trees[t, cols]
                order = dpc_centres(points.detach(), count)
                assign = assign_to_members(PointSets(points.detach()[None]), order[None])[0]
                assign[order] = torch.arange(order.numel())
                centres, members = cols[order], cluster_means(points, assign, order.numel())
            indices.append(centres + (start + t) * L)
            outputs.append(members)
        return torch.cat(indices), torch.cat(outputs)


__all__ = ["FlashVIDStrategy", "FlashVIDOptions", "flashvid_budget", "dyseg", "adts", "tree_parents",
           "merge_flags", "aggregate_trees", "dpc_centres"]
