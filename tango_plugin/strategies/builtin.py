"""Built-in strategies: Tango (the default) and two simple baselines that prove the interface and serve as
comparison points in the benchmarks: "topk" (per-frame attention top-k) and "uniform" (evenly spaced tokens)."""

from __future__ import annotations

import torch

from ..config import TangoConfig
from ..engine.budgets import frame_keep_count
from ..engine.tango import masked_saliency, stable_topk, tango_prune
from ..engine.types import PrunePlan, VisualTokens
from .base import PruningStrategy, register_strategy


def plan_from_frame_columns(tokens: VisualTokens, local: torch.Tensor) -> PrunePlan:
    """Turn per-frame kept columns (T, k) into a sorted flat plan with the tokens' own features."""
    T, L = tokens.saliency.shape
    flat = (local + torch.arange(T, device=local.device)[:, None] * L).flatten().sort().values
    return PrunePlan(kept_indices=flat, features=tokens.features.reshape(T * L, -1)[flat])


@register_strategy("topk")
class TopKStrategy(PruningStrategy):
    """Per frame, the ceil(L * r) tokens with the highest saliency (ties -> lower index)."""
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        k = frame_keep_count(tokens.tokens_per_frame, config.retention_ratio)
        scores = masked_saliency(tokens.saliency, tokens.sink_positions)
        return plan_from_frame_columns(tokens, stable_topk(scores, k))


@register_strategy("uniform")
class UniformStrategy(PruningStrategy):
    """Per frame, ceil(L * r) tokens evenly spaced in raster order (ignores saliency)."""
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        T, L = tokens.saliency.shape
        k = frame_keep_count(L, config.retention_ratio)
        cols = torch.linspace(0, L - 1, k, dtype=torch.float64).round().long().unique()
        return plan_from_frame_columns(tokens, cols.to(tokens.features.device).expand(T, -1))


@register_strategy("tango")
class TangoStrategy(PruningStrategy):
    """Tango: diversity-driven salient pick plus ST-RoPE-guided context merging (the paper's method,
    docs/algorithm.md)."""
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    allows_duplicate_indices = True

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        return tango_prune(tokens, config)


__all__ = ["TopKStrategy", "UniformStrategy", "TangoStrategy", "plan_from_frame_columns"]
