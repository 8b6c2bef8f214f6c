"""Checks shared by every strategy: a clear `ValueError` instead of a wrong answer.

`check_visual_tokens` validates what a strategy is given, `check_plan` what it returns. Both name the argument
(or the strategy), the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch

# The engine clusters float32 copies (`F.normalize(x.float())`, frame times via `strope.frame_times(...).float()`):
# finite values beyond float32's range become inf there and NaN or a silently degenerate result later.
_F32_MAX = torch.finfo(torch.float32).max


def _shape(t) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + "..."


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every element of t is finite: its minimum and maximum are (both propagate NaN). One reduction in t's
    own dtype and one sync; no float32 copy (a fresh tensor costs page faults)."""
    return t.numel() == 0 or bool(torch.isfinite(torch.stack(list(torch.aminmax(t.detach())))).all())


def _int_value(value: Any) -> Optional[int]:
    """`value` as an int if it is an integer scalar (int, numpy integer, 0-d integer tensor), else None.

    bool and floats are refused, integral floats too: a grid size or index given as a float would be truncated.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return None
        return int(value.item())
    if isinstance(value, numbers.Integral):
        return int(value)
    return None


def _check_finite_and_fits_float32(name: str, x: torch.Tensor, row_name: str) -> None:
    """Refuse nan / inf, and rows (last dim) whose L2 norm overflows float32 where the engine normalises them.

    `F.normalize` of a float32 copy squares and sums: a row with a norm above sqrt(float32 max) ~ 1.8e19 gets an
    inf norm and normalises to zeros (or NaN from float64 input beyond float32), so such tokens look identical to
    the clustering, or the output turns NaN. Fast path, one min/max reduction without a copy: if every |value| <=
    sqrt(float32 max / D), no row's sum of squares can overflow (NaN fails the comparison and goes on).
    """
    bound = math.sqrt(_F32_MAX / x.shape[-1])
    lo, hi = torch.stack(list(torch.aminmax(x))).tolist()  # one sync
    if max(abs(lo), abs(hi)) <= bound:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain non-finite values (nan or inf)")
    rows = x.reshape(-1, x.shape[-1])
    for start in range(0, rows.shape[0], 4096):  # rare path: the exact per-row test, in bounded chunks
        norms = torch.linalg.vector_norm(rows[start:start + 4096].float(), dim=-1)
        bad = torch.nonzero(~torch.isfinite(norms)).flatten()
        if bad.numel():
            row = start + int(bad[0])
            raise ValueError(
                f"{name} are too large for the engine: {row_name} {row} has largest |value| "
                f"{float(rows[row].abs().max()):.3g} and its L2 norm overflows float32 (the engine normalises "
                f"float32 copies, so norms must stay below {math.sqrt(_F32_MAX):.3g}); rescale the {name}")


def _check_grid(grid_hw: Any, L: int) -> None:
    allowed = "a pair (H, W) of positive integers with H * W == L"
    if isinstance(grid_hw, (str, bytes)):
        raise ValueError(f"grid_hw={_show(grid_hw)} is not allowed; expected {allowed} (got text)")
    try:
        items = tuple(grid_hw)
    except TypeError:
        raise ValueError(f"grid_hw={_show(grid_hw)} is not allowed; expected {allowed}") from None
    sizes = [_int_value(v) for v in items]
    if len(items) != 2 or None in sizes:
        raise ValueError(f"grid_hw={_show(grid_hw)} is not allowed; expected {allowed} (integers, not floats: "
                         "a fractional grid size would be truncated)")
    H, W = sizes
    if H <= 0 or W <= 0 or H * W != L:
        raise ValueError(f"grid_hw={(H, W)!r} does not fit L={L} tokens per frame (need H * W == L)")


def _check_timestamps(timestamps: Any, T: int) -> None:
    allowed = f"a (T,) = ({T},) sequence or tensor of frame times in seconds"
    if isinstance(timestamps, (str, bytes)):
        raise ValueError(f"timestamps={_show(timestamps)} is not allowed; expected {allowed} (got text)")
    try:
        ts = torch.as_tensor(timestamps)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"timestamps={_show(timestamps)} is not allowed; expected {allowed}") from None
    if ts.dtype == torch.bool or ts.is_complex():
        raise ValueError(f"timestamps must be real numbers (seconds); got dtype {ts.dtype}")
    if not isinstance(timestamps, torch.Tensor) and ts.is_floating_point():
        # a Python list becomes float32 by default, where 1e300 is already inf: read its values in float64
        ts = torch.as_tensor(timestamps, dtype=torch.float64)
    ts = ts.double()
    if ts.dim() != 1 or ts.shape[0] != T:
        raise ValueError(f"timestamps must have shape (T,) = ({T},); got {_shape(ts)}")
    if not torch.isfinite(ts).all():
        raise ValueError("timestamps contain non-finite values (nan or inf)")
    if float(ts.abs().max()) > _F32_MAX:
        raise ValueError(
            f"timestamps hold {float(ts.abs().max()):.3g}, beyond float32's range ({_F32_MAX:.3g}): the engine "
            "uses frame times in float32 (engine.strope.frame_times), where this becomes inf")


def check_visual_tokens(tokens) -> None:
    """Validate a `VisualTokens` bundle before a strategy sees it.

    Checks: features a non-empty (T, L, D) floating tensor, finite, each token's L2 norm finite in float32;
    saliency (T, L), floating point (not bool or integer: see below), finite; grid_hw a pair
    of integers (ints, numpy / 0-d torch integers) with H * W == L; timestamps (T,) real, finite and within
    float32's range; frame_embeddings (T, D') finite with float32-finite norms; sink positions integers in
    [0, L).

    Raises:
        ValueError: naming the argument, the value (or its shape / dtype) and what is allowed.
    """
    feats, sal = tokens.features, tokens.saliency
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
        raise ValueError(f"features must be a (T, L, D) tensor; got shape {_shape(feats)}")
    T, L, D = feats.shape
    if T == 0 or L == 0 or D == 0:
        raise ValueError(f"features must have T >= 1 frames, L >= 1 tokens and D >= 1 dims; got {_shape(feats)}")
    if not feats.is_floating_point():
        raise ValueError(f"features must be floating point; got dtype {feats.dtype}")
    if not isinstance(sal, torch.Tensor) or tuple(sal.shape) != (T, L):
        raise ValueError(f"saliency must have shape (T, L) = ({T}, {L}) to match features; got {_shape(sal)}")
    # Floating point only: bool has no order to rank by (argmax refuses it), and integer scores break inside
    # Tango (the mean over a static segment, the masking sentinel of the salient pick), so they are refused
    # here for every strategy rather than failing in some inputs only.
    if not sal.is_floating_point():
        raise ValueError(f"saliency must be a floating-point tensor of scores; got dtype {sal.dtype} "
                         "(convert it with .float())")
    _check_grid(tokens.grid_hw, L)
    if tokens.timestamps is not None:
        _check_timestamps(tokens.timestamps, T)
    if tokens.frame_embeddings is not None:
        fe = tokens.frame_embeddings
        if not isinstance(fe, torch.Tensor) or fe.dim() != 2 or fe.shape[0] != T or fe.shape[1] == 0:
            raise ValueError(f"frame_embeddings must have shape (T, D') with T={T}, D' >= 1; got {_shape(fe)}")
        if fe.dtype == torch.bool or fe.is_complex():
            raise ValueError(f"frame_embeddings must be real numbers; got dtype {fe.dtype}")
        _check_finite_and_fits_float32("frame_embeddings", fe, "frame")
    _check_finite_and_fits_float32("features", feats, "token (flat index t * L + i)")
    if not _all_finite(sal):
        raise ValueError("saliency contains non-finite values (nan or inf)")
    for p in tokens.sink_positions:
        n = _int_value(p)
        if n is None:
            raise ValueError(f"sink_positions={_show(list(tokens.sink_positions))} has {_show(p)}; expected integer "
                             f"grid indices in [0, {L})")
        if not 0 <= n < L:
            raise ValueError(f"sink_positions={_show(list(tokens.sink_positions))} has {n}, outside the grid "
                             f"[0, {L})")


def check_plan(plan, tokens, strategy_name: str, *, allow_duplicates: bool = False) -> None:
    """Validate what a strategy returned for `tokens`, once for every strategy.

    A plan must have `kept_indices`, a 1-D integer tensor of flat indices ``t * L + i``, strictly ascending (each
    token once, in sequence order: the splice puts feature k at the k-th kept position) and within [0, T * L);
    and `features`, a (K, D) floating tensor, K = len(kept_indices), D = the tokens' D, all finite. K = 0 is
    allowed here (what an empty plan means is up to the caller).

    Args:
        plan: the strategy's result (any object with `kept_indices` and `features`).
        tokens: the `VisualTokens` the strategy was given.
        strategy_name: the strategy's registered name, for the message.
        allow_duplicates: accept an index repeated next to itself (ascending, not strictly). Tango keeps a token
            twice in a degenerate tie, as the reference does (docs/algorithm.md §4.5); off for everything else.

    Raises:
        ValueError: ``strategy '<name>' returned ...`` saying what is wrong.
    """
    who = f"strategy {strategy_name!r} returned"
    if not (hasattr(plan, "kept_indices") and hasattr(plan, "features")):
        raise ValueError(f"{who} {type(plan).__name__}; expected a PrunePlan (kept_indices, features)")
    idx, out = plan.kept_indices, plan.features
    T, L, D = tokens.features.shape
    total = T * L
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.is_floating_point() or idx.is_complex() \
            or idx.dtype == torch.bool:
        got = f"dtype {idx.dtype}, shape {_shape(idx)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{who} kept_indices of {got}; expected a 1-D integer tensor (K,) of flat indices")
    K = idx.numel()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (K, D):
        raise ValueError(f"{who} features of shape {_shape(out)}; expected (K, D) = ({K}, {D}): one row per kept "
                         "index, with the tokens' feature size")
    if not out.is_floating_point():
        raise ValueError(f"{who} features of dtype {out.dtype}; expected a floating-point tensor")
    if K:
        # one reduction and one sync when the plan is valid; the details only on failure
        ascending = idx[1:] >= idx[:-1] if allow_duplicates else idx[1:] > idx[:-1]
        if not bool((idx[0] >= 0) & (idx[-1] < total) & ascending.all()):
            outside = torch.nonzero((idx < 0) | (idx >= total)).flatten()
            if outside.numel():
                p = int(outside[0])
                raise ValueError(f"{who} kept index {int(idx[p])} (position {p}), outside [0, T * L) = [0, {total}) "
                                 f"for T={T}, L={L}")
            p = int(torch.nonzero(~ascending).flatten()[0])
            a, b = int(idx[p]), int(idx[p + 1])
            what = f"duplicate kept index {a}" if a == b else f"unsorted kept indices ({a} then {b})"
            rule = "ascending (in sequence order)" if allow_duplicates else \
                "strictly ascending (each token once, in sequence order)"
            raise ValueError(f"{who} {what} at positions {p}, {p + 1}; kept_indices must be {rule}")
    if K and not _all_finite(out):
        raise ValueError(f"{who} non-finite features (nan or inf)")
