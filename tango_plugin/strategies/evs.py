"""EVS (Efficient Video Sampling): drop the tokens that repeat the previous frame's token at the same position.

Paper: "Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM Inference", Natan Bagrov et
al. (NVIDIA), 2025, arXiv:2510.14624. Checked against vLLM's implementation, `vllm/multimodal/video_prune/evs.py`
(`compute_retained_tokens_count`, `compute_retention_mask`, vLLM 0.32), which `--video-pruning-method evs` runs:
tests/test_strategies_new.py compares the kept set bit for bit with it where vLLM is importable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import TangoConfig
from ..engine.types import PrunePlan, VisualTokens
from ._common import assemble, check_number, resolve_options
from .base import PruningStrategy, register_strategy


@dataclass(frozen=True)
class EVSOptions:
    """Args:
        pruning_rate: vLLM's q in [0, 1), the share of tokens dropped; None (default) derives the count from the
            retention ratio r instead (see `evs_keep_count`). Give it to reproduce a vLLM run's count exactly:
            vLLM computes `int(T L (1 - q))`, and `1 - (1 - r)` is not always r in floating point.
    """

    pruning_rate: Optional[float] = None

    def __post_init__(self) -> None:
        if self.pruning_rate is not None:
            check_number("pruning_rate", self.pruning_rate, 0.0, 1.0)
            if self.pruning_rate >= 1.0:
                raise ValueError(f"option pruning_rate={self.pruning_rate!r} is out of range; expected [0, 1)")


def evs_keep_count(num_frames: int, tokens_per_frame: int, retention_ratio: float,
                   pruning_rate: Optional[float] = None) -> int:
    """EVS's count: max(L, int(T L (1 - q))) (vLLM's `compute_retained_tokens_count`: at least the first frame);
    with no `pruning_rate`, int(T L r) in its place (the same as q = 1 - r up to floating-point rounding)."""
    total = num_frames * tokens_per_frame
    kept = int(total * (1 - pruning_rate)) if pruning_rate is not None else int(total * retention_ratio)
    return max(tokens_per_frame, kept)


def evs_dissimilarity(features: torch.Tensor) -> torch.Tensor:
    """(T, L) temporal dissimilarity of a (T, L, D) video: 1 - cosine(token, same position in the previous frame),
    255 for the first frame (always kept first), in the features' dtype, as vLLM computes it."""
    x = features.detach()
    similarity = F.cosine_similarity(x[1:], x[:-1], dim=-1)
    return torch.cat([255 * torch.ones_like(x[:1, :, 0]), 1 - similarity], dim=0)


@register_strategy("evs")
class EVSStrategy(PruningStrategy):
    """EVS (Bagrov et al. 2025, arXiv:2510.14624), as vLLM runs it (`--video-pruning-method evs`).

    Every token of the first frame scores 255; every later token scores 1 - its cosine similarity to the token at the
    same grid position in the previous frame. The `evs_keep_count` highest scores are kept (stable order: ties go to
    the lower flat index), features unchanged. Only the features are used (no attention, no saliency, no time).

    Budget: max(L, int(T L r)) (or vLLM's max(L, int(T L (1 - q))) with the `pruning_rate` option): not T ceil(L r);
    with `exact_budget=True` run_strategy fits it to that count by saliency, like every strategy.
    """

    feature_gradients = True
    defaults = EVSOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        scores = evs_dissimilarity(feats).reshape(-1)
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)
        keep = order[:evs_keep_count(T, L, config.retention_ratio, opts.pruning_rate)]
        idx = torch.sort(keep).values
        return assemble([idx], [feats.reshape(T * L, D)[idx]], D, feats.dtype, feats.device)


__all__ = ["EVSStrategy", "EVSOptions", "evs_keep_count", "evs_dissimilarity"]
