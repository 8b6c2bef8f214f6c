"""The framework-free engine: Tango maths on plain tensors (torch only, never transformers)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..config import TangoConfig
from ..strategies import PrunePlan, VisualTokens, prune

# The result type of `prune_video_tokens`: `kept_indices` (K,) sorted flat indices, `features` (K, D).
PruneResult = PrunePlan


def prune_video_tokens(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid_hw: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    config: Optional[TangoConfig] = None,
    frame_embeddings: Optional[torch.Tensor] = None,
) -> PruneResult:
    """Prune one video's visual tokens with `config.strategy` (Tango by default).

    Args:
        features: (T, L, D) visual tokens in LLM space, frame-major, raster order inside a frame.
        saliency: (T, L) attention signal, higher = keep.
        grid_hw: (H, W) with L == H * W.
        timestamps: (T,) frame times in seconds; None -> 0..T-1.
        config: settings (default `TangoConfig()`); `config.sink_positions` are zeroed in the saliency.
        frame_embeddings: (T, D') per-frame global embeddings, needed only for segmentation="fastvid".

    Returns:
        `PruneResult` with `kept_indices` (K,) sorted flat indices ``t * L + i`` and `features` (K, D), merged
        where Tango merges; dtype and device follow `features`. The caller's tensors are not modified.

    Example:
        ```python
        >>> res = prune_video_tokens(torch.randn(8, 16, 64), torch.rand(8, 16), grid_hw=(4, 4))
        >>> res.features.shape[0] == res.kept_indices.numel()
        True
        ```
    """
    config = config if config is not None else TangoConfig()
    if not isinstance(config, TangoConfig):
        raise ValueError(f"config must be a TangoConfig; got {type(config).__name__}")
    tokens = VisualTokens(features=features, saliency=saliency, grid_hw=grid_hw, timestamps=timestamps,
                          frame_embeddings=frame_embeddings, sink_positions=tuple(config.sink_positions or ()))
    return prune(tokens, config)


__all__ = ["PruneResult", "prune_video_tokens"]
