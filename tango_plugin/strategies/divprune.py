"""DivPrune: visual-token pruning as a Max-Min Diversity Problem, solved greedily on cosine distance.

Paper: "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", Saeed Ranjbar Alvar,
Gursimran Singh, Mohammad Akbari, Yong Zhang, CVPR 2025, arXiv:2503.02175.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import TangoConfig
from ..engine.types import PrunePlan, VisualTokens
from ._common import check_number, normalized, resolve_options
from .base import PruningStrategy, register_strategy

# rows of the similarity matrix computed per matrix product (bounds the temporaries of the blocked product)
_ROW_BLOCK = 2048


@dataclass(frozen=True)
class DivPruneOptions:
    """Args:
        max_matrix_tokens: up to this many tokens the whole N x N cosine-distance matrix is kept in memory, as the
            paper's implementation does (N = 18816, 96 frames of 196, is 1.4 GB in float32); above it the distances
            to each new pick are recomputed from the features (the same choices, N x N memory avoided, slower).
            An implementation knob, not a hyper-parameter of the method (which has none besides the budget).
    """

    max_matrix_tokens: int = 24576

    def __post_init__(self) -> None:
        check_number("max_matrix_tokens", self.max_matrix_tokens, 0, 2 ** 31, integer=True)


def divprune_count(num_frames: int, tokens_per_frame: int, ratio: float) -> int:
    """Tokens DivPrune keeps: ceil(T * L * r), at least 1 (one budget for the whole video)."""
    return max(1, math.ceil(num_frames * tokens_per_frame * ratio))


def max_min_select(unit: torch.Tensor, k: int, max_matrix_tokens: int = 24576) -> torch.Tensor:
    """Greedy max-min diversity selection on cosine distance ``1 - <u_i, u_j>`` of L2-normalised rows.

    First pick: the point whose nearest other point is farthest. Then, k - 1 times, the point whose distance to
    its nearest selected point is largest. Ties -> lower index; selected points are never picked again (the
    distance to themselves is 0, and exact duplicates would otherwise tie with them).

    Args:
        unit: (N, D) float32 unit rows.
        k: points to select (<= N).

    Returns:
        (k,) indices in selection order.
    """
    N = unit.shape[0]
    device = unit.device
    k = min(k, N)
    full = N <= max_matrix_tokens
    sim = torch.empty(N, N, dtype=torch.float32, device=device) if full else None
    nearest = torch.full((N,), -math.inf, dtype=torch.float32, device=device)  # max similarity to another point
    for a in range(0, N, _ROW_BLOCK):
        block = unit[a:a + _ROW_BLOCK] @ unit.T  # (b, N)
        rows = torch.arange(a, min(a + _ROW_BLOCK, N), device=device)
        if sim is not None:
            sim[a:a + _ROW_BLOCK] = block
        block[rows - a, rows] = -math.inf  # exclude the point itself
        nearest[a:a + _ROW_BLOCK] = block.max(dim=1).values
        del block
    if N == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    picks = torch.empty(k, dtype=torch.long, device=device)
    picks[0] = torch.argmax(1.0 - nearest)  # first maximum = lowest index on ties
    # min over the selected set of the distance = 1 - max similarity to any selected point
    best_sim = sim[picks[0]].clone() if sim is not None else unit @ unit[picks[0]]
    taken = torch.zeros(N, dtype=torch.bool, device=device)
    taken[picks[0]] = True
    for i in range(1, k):
        score = (1.0 - best_sim).masked_fill(taken, -math.inf)
        p = torch.argmax(score)
        picks[i] = p
        taken[p] = True
        row = sim[p] if sim is not None else unit @ unit[p]
        torch.maximum(best_sim, row, out=best_sim)
    return picks


@register_strategy("divprune")
class DivPruneStrategy(PruningStrategy):
    """DivPrune (Alvar et al., CVPR 2025, arXiv:2503.02175): keep the most diverse subset of the whole video.

    The kept set solves the Max-Min Diversity Problem (maximise the smallest pairwise cosine distance among the
    kept tokens) with the paper's greedy algorithm over all T * L tokens at once (its video setting): start from
    the token farthest from its nearest neighbour, then repeatedly add the token farthest from the kept set (see
    `max_min_select`). Features are kept unchanged (pruning, no merging); saliency is not used.

    Budget: exactly ``ceil(T * L * r)`` tokens over the whole video (frames may keep very different numbers).

    Cost: the N x N similarity matrix (N = T * L), O(N^2 D) time; see `DivPruneOptions.max_matrix_tokens`.
    Simplifications: none in the selection rule; the paper prunes after the projector (as here), with the budget
    rounded to the nearest integer rather than up.
    """
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    defaults = DivPruneOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        k = divprune_count(T, L, config.retention_ratio)
        flat = feats.reshape(T * L, D)
        picks = max_min_select(normalized(flat), k, opts.max_matrix_tokens)
        kept = picks.sort().values
        return PrunePlan(kept_indices=kept, features=flat[kept])


__all__ = ["DivPruneStrategy", "DivPruneOptions", "divprune_count", "max_min_select"]
