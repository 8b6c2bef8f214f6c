"""The intra-LLM stage of Tango's LLaVA-Video runs (docs/algorithm.md §6), on plain tensors.

At one decoder layer, the visual tokens the last prompt token attends to most are kept; every other visual
token is folded into its most similar kept token: pooled = (kept + sum of assigned) / (1 + count),
new = w * kept + (1 - w) * pooled with w = 0.6.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .dpc import stable_topk


def intra_llm_keep_count(num_visual: int, ratio: float) -> int:
    """Visual tokens kept at the intra-LLM layer: Python's round(n * ratio), as the reference."""
    return round(num_visual * ratio)


def intra_llm_merge(hidden: torch.Tensor, scores: torch.Tensor, ratio: float,
                    self_weight: float = 0.6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep the top-scoring visual tokens of one sample and merge the rest into them.

    Args:
        hidden: (n, D) hidden states of the visual tokens at the layer's input.
        scores: (n,) attention of the last prompt token to each visual token (mean over heads).
        ratio: share of the visual tokens kept.
        self_weight: weight of a kept token against its pooled cluster (0.6 in the reference).

    Returns:
        (kept local indices (K,) ascending, their new hidden states (K, D) in the hidden dtype). Similarities,
        sums and counts are computed in float32 (the reference uses the hidden dtype).
    """
    n, D = hidden.shape
    k = intra_llm_keep_count(n, ratio)
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=hidden.device), hidden[:0]
    kept = stable_topk(scores.float(), k).sort().values
    is_kept = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    is_kept[kept] = True
    others = torch.nonzero(~is_kept).flatten()
    h = hidden.float()
    kept_h = h[kept]
    sums = torch.zeros_like(kept_h)
    counts = torch.zeros(k, 1, dtype=torch.float32, device=hidden.device)
    if others.numel():
        sim = F.normalize(h[others], dim=-1) @ F.normalize(kept_h, dim=-1).T
        target = sim.argmax(dim=-1)  # first maximum on ties
        sums.index_add_(0, target, h[others])
        counts.index_add_(0, target, torch.ones(others.numel(), 1, device=hidden.device))
    pooled = (kept_h + sums) / (1.0 + counts)
    return kept, (self_weight * kept_h + (1 - self_weight) * pooled).to(hidden.dtype)
