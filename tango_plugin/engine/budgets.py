"""Budget arithmetic: how many tokens each step keeps (docs/algorithm.md §4.6: every rounding rule in one place)."""

from __future__ import annotations

import math
import numbers
from typing import Tuple

from ..config import integer_at_least, real_in_range


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


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= 1")
    return int(value)


def exact_keep_count(num_frames: int, tokens_per_frame: int, retention_ratio: float) -> int:
    """Tokens one video keeps under ``TangoConfig(exact_budget=True)``, for every strategy: T * max(1, ceil(L * r)).

    A pure function of the grid and the ratio, known before the vision tower runs, so a serving engine can size
    the placeholder tokens of a request (vLLM's pruning contract) and a compiled model can use static shapes. It is
    the count the per-frame baselines (`topk`, `uniform`) keep anyway, the same per-frame `ceil` as Tango's
    budgets (docs/algorithm.md §4.6), and T * L at r = 1.0 (nothing pruned). A still image is T = 1.

    Args:
        num_frames: T (frames, or temporal patches for the Qwen families), >= 1.
        tokens_per_frame: L = H * W tokens per frame as the LLM receives them, >= 1.
        retention_ratio: r in (0, 1].

    Example:
        ```python
        >>> exact_keep_count(32, 196, 0.1)
        640
        ```
    """
    T = _positive_int("num_frames", num_frames)
    L = _positive_int("tokens_per_frame", tokens_per_frame)
    if isinstance(retention_ratio, bool) or not isinstance(retention_ratio, numbers.Real) \
            or not 0.0 < float(retention_ratio) <= 1.0:
        raise ValueError(f"retention_ratio={retention_ratio!r} is not allowed; expected a number in (0, 1]")
    return T * frame_keep_count(L, float(retention_ratio))


def plain_keep_ceiling(num_frames: int, tokens_per_frame: int, retention_ratio: float) -> int:
    """Most tokens a built-in strategy keeps without `exact_budget`: max(L, ceil(r * T * L) + 2 T), at most T * L.

    The per-frame baselines keep T * ceil(L r) <= r T L + T. Tango keeps, per segment of T_s frames,
    ``[S > 0] ceil(S r_adj) + T_s ceil(L_dyn r_adj)`` <= r T_s L + T_s + 1 (§4.6, since
    r_adj (T_s L - (T_s - 1) S) = r T_s L; fewer than r T_s L tokens when r_adj is clamped at 1), so at most
    r T L + T + (segments) <= r T L + 2 T. EVS keeps max(L, int(r T L)): never less than its first frame.
    `tango-plugin matrix` checks this bound for every strategy without `exact_budget`.
    """
    T = _positive_int("num_frames", num_frames)
    L = _positive_int("tokens_per_frame", tokens_per_frame)
    return min(T * L, max(L, math.ceil(float(retention_ratio) * T * L) + 2 * T))


def pre_llm_retention(target_ratio: float, num_layers: int, intra_llm_layer: int,
                      intra_llm_ratio: float = 0.5) -> float:
    """Pre-LLM retention that makes the layer-averaged token count equal `target_ratio` when the intra-LLM stage
    keeps `intra_llm_ratio` of the tokens from layer `intra_llm_layer` on (docs/algorithm.md §6).

    `min(1, num_layers * r / (K + (num_layers - K) * p))`; the reference's run scripts print it with 6 significant
    digits (r = 0.1, 28 layers, K = 18, p = 0.5 -> 0.121739, the `llava-video` preset).

    Example:
        ```python
        >>> round(pre_llm_retention(0.1, 28, 18, 0.5), 6)
        0.121739
        ```
    """
    r = real_in_range("target_ratio", target_ratio, 0.0, 1.0, low_open=True)
    n = integer_at_least("num_layers", num_layers, 2)
    try:
        k = integer_at_least("intra_llm_layer", intra_llm_layer, 1)
    except ValueError:
        k = 0
    if not 1 <= k < n:
        raise ValueError(f"intra_llm_layer={intra_llm_layer!r} is not allowed; expected an integer in [1, {n - 1}] "
                         f"(below num_layers={n})")
    p = real_in_range("intra_llm_ratio", intra_llm_ratio, 0.0, 1.0, low_open=True)
    return min(1.0, n * r / (k + (n - k) * p))


__all__ = ["frame_keep_count", "frame_budgets", "segment_budgets", "adjusted_ratio", "exact_keep_count",
           "plain_keep_ceiling", "pre_llm_retention"]
