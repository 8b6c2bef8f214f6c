"""Helpers shared by the baseline strategies: per-strategy options, integer budget splits, plan assembly.

Every baseline keeps its paper's hyper-parameters in a small frozen dataclass; `resolve_options` overlays the
run's ``config.strategy_options`` dict (a `TangoConfig` field).
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Sequence, TypeVar

import torch
import torch.nn.functional as F

from ..engine.tango import masked_saliency, stable_topk
from ..engine.types import PrunePlan

Opts = TypeVar("Opts")


def resolve_options(strategy: str, defaults: Opts, config) -> Opts:
    """`defaults` with the overrides of ``config.strategy_options``; unknown keys are a `ValueError`.

    Args:
        strategy: the strategy's registered name (for messages).
        defaults: a frozen dataclass instance holding the paper's defaults; its ``__post_init__`` validates values.
        config: the run's `TangoConfig` (``strategy_options`` may be absent or None -> no overrides).
    """
    overrides = getattr(config, "strategy_options", None) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"strategy {strategy!r}: strategy_options must be a dict; got {type(overrides).__name__}")
    allowed = sorted(f.name for f in dataclasses.fields(defaults))
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise ValueError(f"strategy {strategy!r}: unknown option(s) {unknown}; allowed: {allowed}")
    try:
        return dataclasses.replace(defaults, **overrides)
    except (TypeError, ValueError) as err:  # bad values: name the strategy as well
        raise ValueError(f"strategy {strategy!r}: {err}") from None


def check_number(name: str, value, low: float, high: float, integer: bool = False, low_open: bool = False) -> None:
    """Raise `ValueError` unless `value` is a number (an int when `integer`) in [low, high] ((low, high] if open)."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and math.isnan(value)) \
            or value < low or value > high or (low_open and value == low):
        kind = "an integer" if integer else "a number"
        bracket = "(" if low_open else "["
        raise ValueError(f"option {name}={value!r} is not allowed; expected {kind} in {bracket}{low}, {high}]")


def apportion(total: int, weights: torch.Tensor, low: int, high: int) -> List[int]:
    """Split `total` into integers proportional to `weights`, each in [low, high], summing to `total`.

    Largest-remainder rounding; the shares of items that hit a bound go to the others (water-filling). Ties of
    remainders go to the earlier item, so the split is deterministic.

    Args:
        total: the sum, clamped to [n * low, n * high].
        weights: (n,) non-negative weights (all zero -> equal shares).
        low / high: per-item bounds.
    """
    n = weights.numel()
    total = max(n * low, min(n * high, int(total)))
    w = weights.detach().double().cpu().clamp_min(0)
    if float(w.sum()) <= 0:
        w = torch.ones(n, dtype=torch.float64)
    counts = torch.full((n,), low, dtype=torch.long)
    free = torch.ones(n, dtype=torch.bool)
    left = total - n * low
    while left > 0 and bool(free.any()):
        share = torch.where(free, w, torch.zeros_like(w))
        if float(share.sum()) <= 0:
            share = free.double()
        room = (high - counts).double()
        want = share / share.sum() * left
        if bool((want > room + 1e-9).any()):  # clip the items that overflow, re-split the rest
            over = want > room + 1e-9
            left -= int((high - counts[over]).sum())
            counts[over] = high
            free &= ~over
            continue
        base = want.floor().long()
        counts += base
        rest = left - int(base.sum())
        frac = (want - base.double()).masked_fill(~free, -1.0)
        frac = frac.masked_fill(counts >= high, -1.0)
        order = torch.sort(frac, descending=True, stable=True).indices[:rest]
        counts[order] += 1
        left = 0
    return counts.tolist()


def normalized(x: torch.Tensor) -> torch.Tensor:
    """A float32, L2-normalised, detached copy along the last dim (zero vectors stay zero).

    Detached because it only feeds decisions (similarities, clustering): under autograd the strategies record only
    their feature path (docs/training.md, "Gradients").
    """
    return F.normalize(x.detach().float(), p=2, dim=-1)


def cluster_means(features: torch.Tensor, assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean feature of each cluster: (P, D) features, (P,) cluster ids in [0, m) -> (m, D) float32."""
    D = features.shape[-1]
    sums = torch.zeros(num_clusters, D, dtype=torch.float32, device=features.device)
    sums.index_add_(0, assign, features.float())
    counts = torch.zeros(num_clusters, dtype=torch.float32, device=features.device)
    counts.index_add_(0, assign, torch.ones_like(assign, dtype=torch.float32))
    return sums / counts.clamp_min(1)[:, None]


def assemble(indices: Sequence[torch.Tensor], features: Sequence[torch.Tensor], dim: int, dtype: torch.dtype,
             device) -> PrunePlan:
    """Kept (flat index, feature) pieces -> a `PrunePlan` sorted by index, features cast to the input dtype."""
    indices = [i.reshape(-1) for i in indices if i.numel()]
    features = [f.reshape(-1, dim) for f in features if f.numel()]
    if not indices:
        return PrunePlan(torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dim, dtype=dtype,
                                                                                       device=device))
    idx = torch.cat(indices).to(device=device, dtype=torch.long)
    feats = torch.cat([f.to(device=device, dtype=dtype) for f in features])
    order = torch.sort(idx, stable=True).indices
    return PrunePlan(kept_indices=idx[order], features=feats[order])


__all__ = ["resolve_options", "check_number", "apportion", "normalized", "cluster_means", "assemble"]


def top_per_frame(tokens, k: int):
    """The k best-scored tokens of every frame (sink positions zeroed, ties to the lower index).

    Returns:
        (local columns (T, k), flat indices (T, k), their features (T * k, D), mask (T, L) of the tokens left).
    """
    feats = tokens.features
    T, L, D = feats.shape
    local = stable_topk(masked_saliency(tokens.saliency, tokens.sink_positions), k)
    flat = local + torch.arange(T, device=feats.device)[:, None] * L
    rest = torch.ones(T, L, dtype=torch.bool, device=feats.device)
    rest.scatter_(1, local, False)
    return local, flat, feats.reshape(T * L, D)[flat.flatten()], rest
