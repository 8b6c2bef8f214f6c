"""Budget arithmetic: how many tokens each step keeps (docs/algorithm.md §4.6: every rounding rule in one place)."""

from __future__ import annotations

import math
from typing import Tuple


def frame_keep_count(tokens_per_frame: int, retention_ratio: float) -> int:
    """Tokens one frame keeps under a per-frame budget: ceil(L * r), at least one (the simple baselines)."""
    return max(1, math.ceil(tokens_per_frame * retention_ratio))


def frame_budgets(num_tokens: int, ratio: float, context_ratio: float) -> Tuple[int, int]:
    """(salient, context) split of one frame's budget on the single-frame path: ceil(L * r) at least one, then
    int(retain * (1 - context_ratio)) salient tokens and the rest context."""
    retain = frame_keep_count(num_tokens, ratio) if num_tokens > 0 else 0
    salient = int(retain * (1.0 - context_ratio))
    return salient, retain - salient


def segment_budgets(num_dynamic: int, ratio: float, context_ratio: float) -> Tuple[int, int]:
    """(salient, context) budget per frame of a segment's dynamic tokens: ceil(n * r) (may be 0), then the same
    int() split as `frame_budgets`."""
    raw = math.ceil(num_dynamic * ratio)
    salient = int(raw * (1.0 - context_ratio))
    return salient, raw - salient


def adjusted_ratio(ratio: float, num_frames: int, tokens_per_frame: int, num_static: int) -> float:
    """Retention ratio raised to compensate for static tokens collapsed to one copy per segment:
    r / ((T L - (T - 1) S) / (T L)), at most 1."""
    total = num_frames * tokens_per_frame
    gain = (num_frames - 1) * num_static
    return min(ratio / ((total - gain) / total), 1.0)


__all__ = ["frame_keep_count", "frame_budgets", "segment_budgets", "adjusted_ratio"]
