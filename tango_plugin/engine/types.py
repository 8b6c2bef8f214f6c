"""The engine's data types: what a pruning method sees (`VisualTokens`) and what it returns (`PrunePlan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch


@dataclass
class VisualTokens:
    """One video's (or one image's, as a single frame) visual tokens, as the LLM would receive them.

    Args:
        features: (T, L, D) token features in LLM space, frame-major, raster order inside a frame.
        saliency: (T, L) attention signal, higher = more important.
        grid_hw: (H, W) with L == H * W.
        timestamps: (T,) seconds of each frame (None -> 0..T-1).
        frame_embeddings: (T, D') per-frame global embedding (only for segmentation="fastvid").
        sink_positions: per-frame grid indices whose saliency is zeroed before selection.
    """

    features: torch.Tensor
    saliency: torch.Tensor
    grid_hw: Tuple[int, int]
    timestamps: Optional[torch.Tensor] = None
    frame_embeddings: Optional[torch.Tensor] = None
    sink_positions: Tuple[int, ...] = ()

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[1]


@dataclass
class PrunePlan:
    """What a strategy keeps.

    Args:
        kept_indices: LongTensor (K,), sorted ascending flat indices ``t * L + i``.
        features: (K, D) features of the kept tokens in `kept_indices` order (merged where the method merges).
    """

    kept_indices: torch.Tensor
    features: torch.Tensor

    @classmethod
    def keep_all(cls, features: torch.Tensor) -> "PrunePlan":
        """Every token of a (T, L, D) video kept, features untouched (retention 1.0)."""
        T, L, D = features.shape
        return cls(kept_indices=torch.arange(T * L, device=features.device), features=features.reshape(T * L, D))


__all__ = ["VisualTokens", "PrunePlan"]
