"""Input checks shared by every strategy: a clear `ValueError` instead of a wrong answer."""

from __future__ import annotations

import torch


def _shape(t) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _all_finite(t: torch.Tensor) -> bool:
    # one cheap reduction first: any nan/inf makes the sum non-finite; only then the exact element check
    # (a finite tensor whose sum overflows lands there too)
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


def check_visual_tokens(tokens) -> None:
    """Validate a `VisualTokens` bundle (shapes, grid, finiteness, sink positions)."""
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
    try:
        H, W = (int(v) for v in tokens.grid_hw)
    except (TypeError, ValueError):
        raise ValueError(f"grid_hw must be a pair (H, W) of positive integers; got {tokens.grid_hw!r}") from None
    if H <= 0 or W <= 0 or H * W != L:
        raise ValueError(f"grid_hw={tuple(tokens.grid_hw)!r} does not fit L={L} tokens per frame (need H * W == L)")
    if tokens.timestamps is not None:
        ts = torch.as_tensor(tokens.timestamps)
        if ts.dim() != 1 or ts.shape[0] != T:
            raise ValueError(f"timestamps must have shape (T,) = ({T},); got {_shape(ts)}")
        if not torch.isfinite(ts.double()).all():
            raise ValueError("timestamps contain non-finite values (nan or inf)")
    if tokens.frame_embeddings is not None:
        fe = tokens.frame_embeddings
        if not isinstance(fe, torch.Tensor) or fe.dim() != 2 or fe.shape[0] != T:
            raise ValueError(f"frame_embeddings must have shape (T, D') with T={T}; got {_shape(fe)}")
        if not _all_finite(fe):
            raise ValueError("frame_embeddings contain non-finite values (nan or inf)")
    if not _all_finite(feats):
        raise ValueError("features contain non-finite values (nan or inf)")
    if not _all_finite(sal):
        raise ValueError("saliency contains non-finite values (nan or inf)")
    for p in tokens.sink_positions:
        if not 0 <= int(p) < L:
            raise ValueError(f"sink_positions={list(tokens.sink_positions)!r} has {p}, outside the grid [0, {L})")
