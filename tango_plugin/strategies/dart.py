"""DART (duplication-aware token reduction): keep a few pivot tokens, then the tokens least similar to each pivot.

Paper: "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More", Zichen Wen et
al., 2025, arXiv:2502.11494 (code: ZichenWen1/DART, which prunes inside the LLM at layer 2). Implemented as the
embedding-level variant that NVIDIA's TensorRT-Edge-LLM runs (`DartPruner`, `cpp/runtime/preprocess/dartPruner.cpp`):
it works on the tokens the LLM would receive, which is what a strategy sees. The rules, and where they differ from
both codes, are in docs/strategies.md ("dart").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import TangoConfig
from ..engine.types import PrunePlan, VisualTokens
from ._common import assemble, check_number, resolve_options
from .base import PruningStrategy, register_strategy


@dataclass(frozen=True)
class DARTOptions:
    """Args:
        pivot_tokens: pivots chosen among the video's tokens by largest L1 norm (the authors' and TensorRT-Edge-LLM's
            default for image pivots is 4). Text pivots are not available here (docs/strategies.md, "dart").
    """

    pivot_tokens: int = 4

    def __post_init__(self) -> None:
        check_number("pivot_tokens", self.pivot_tokens, 1, 1 << 20, integer=True)


def dart_keep_count(total_tokens: int, retention_ratio: float) -> int:
    """TensorRT-Edge-LLM's per-span target: clamp(ceil(N r), 1, N) for N tokens."""
    return max(1, min(total_tokens, math.ceil(total_tokens * retention_ratio)))


def descending_stable(scores: torch.Tensor) -> torch.Tensor:
    """Indices of `scores` from largest to smallest, ties to the lower index (TensorRT-Edge-LLM's `topByScore`)."""
    return torch.argsort(scores, descending=True, stable=True)


def dart_select(features: torch.Tensor, target: int, pivot_tokens: int) -> torch.Tensor:
    """DART's kept rows of an (N, D) token matrix, sorted ascending.

    1. Pivots: the min(pivot_tokens, target) rows of largest L1 norm (ties to the lower index); they are kept.
    2. For pivot i = 0..n-1 in that order: `remaining = target - kept`; take ceil(remaining / (n - i)) of the
       candidates (rows not kept yet) with the lowest cosine similarity to the pivot (ties to the lower index),
       cosine = dot / max(|p| |c|, 1e-8). The quota is re-split over the pivots still to come, so exactly `target`
       rows are kept.
    Norms and dot products are float32, as TensorRT-Edge-LLM accumulates them.
    """
    x = features.detach().float()
    n_rows = x.shape[0]
    pivots = descending_stable(x.abs().sum(-1))[:min(pivot_tokens, target)]
    kept = torch.zeros(n_rows, dtype=torch.bool, device=x.device)
    kept[pivots] = True
    norms = torch.linalg.vector_norm(x, dim=-1)
    for i, p in enumerate(pivots.tolist()):
        remaining = target - int(kept.sum())
        candidates = int((~kept).sum())
        if remaining <= 0 or candidates == 0:
            break
        quota = min(candidates, math.ceil(remaining / (len(pivots) - i)))
        cosine = (x @ x[p]) / (norms * norms[p]).clamp_min(1e-8)
        score = (-cosine).masked_fill(kept, float("-inf"))
        kept[descending_stable(score)[:quota]] = True
    return torch.nonzero(kept).flatten()


@register_strategy("dart")
class DARTStrategy(PruningStrategy):
    """DART (Wen et al. 2025, arXiv:2502.11494), the embedding-level form of TensorRT-Edge-LLM.

    The whole video is one span of N = T * L tokens (as a video's tokens are one contiguous block in the LLM input):
    `dart_select` keeps `dart_keep_count(N, r)` = ceil(N r) of them, features unchanged. Uses only the features (no
    attention, no times); frames may keep different counts.
    """

    feature_gradients = True
    defaults = DARTOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        flat = feats.reshape(T * L, D)
        idx = dart_select(flat, dart_keep_count(T * L, config.retention_ratio), opts.pivot_tokens)
        return assemble([idx], [flat[idx]], D, feats.dtype, feats.device)


__all__ = ["DARTStrategy", "DARTOptions", "dart_keep_count", "dart_select"]
