"""The strategy interface: a pruning method sees `VisualTokens` and returns a `PrunePlan`.

Tango is the default strategy; "topk" (per-frame attention top-k) and "uniform" (evenly spaced tokens) are
simple baselines that prove the interface and serve as comparison points in the benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Type

import torch

from .config import TangoConfig


@dataclass
class VisualTokens:
    """One video's (or image's) visual tokens, as the LLM would receive them.

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


class PruningStrategy:
    """Base class of pruning methods. Subclasses implement `select`; they must not modify their inputs."""

    name: str = ""

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        return self.select(tokens, config)


_STRATEGIES: Dict[str, Type[PruningStrategy]] = {}


def register_strategy(name: str, strategy: Optional[Type[PruningStrategy]] = None, *, exist_ok: bool = False):
    """Register a `PruningStrategy` subclass under `name`; usable as a decorator.

    Example:
        ```python
        @register_strategy("my_method")
        class MyStrategy(PruningStrategy):
            def select(self, tokens, config): ...
        ```
    """

    def _register(cls: Type[PruningStrategy]) -> Type[PruningStrategy]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"strategy name={name!r} must be a non-empty string")
        if not (isinstance(cls, type) and issubclass(cls, PruningStrategy)):
            raise TypeError(f"strategy {name!r}: {cls!r} is not a PruningStrategy subclass")
        if name in _STRATEGIES and not exist_ok and _STRATEGIES[name] is not cls:
            raise ValueError(f"a strategy named {name!r} is already registered ({_STRATEGIES[name].__name__}); "
                             "pass exist_ok=True to replace it")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    if strategy is not None:
        return _register(strategy)
    return _register


def unregister_strategy(name: str) -> None:
    """Remove the strategy registered under `name` (a temporary or test strategy); unknown names are an error."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; registered strategies: {list_strategies()}")
    del _STRATEGIES[name]


def list_strategies() -> list:
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> PruningStrategy:
    """An instance of the strategy registered under `name`."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; registered strategies: {list_strategies()}")
    return _STRATEGIES[name]()


def prune(tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
    """Run `config.strategy` on `tokens` after checking them (the entry point adapters use)."""
    from .engine.checks import check_visual_tokens

    check_visual_tokens(tokens)
    return get_strategy(config.strategy).select(tokens, config)


# ---------------------------------------------------------------------------------------------- built-ins
def frame_budget(tokens_per_frame: int, retention_ratio: float) -> int:
    """Tokens kept per frame by the simple baselines: ceil(L * r), at least one."""
    return max(1, math.ceil(tokens_per_frame * retention_ratio))


def _plan_from_local(tokens: VisualTokens, local: torch.Tensor) -> PrunePlan:
    """Turn per-frame kept columns (T, k) into a sorted flat plan with the tokens' own features."""
    T, L = tokens.saliency.shape
    flat = (local + torch.arange(T, device=local.device)[:, None] * L).flatten().sort().values
    return PrunePlan(kept_indices=flat, features=tokens.features.reshape(T * L, -1)[flat])


@register_strategy("topk")
class TopKStrategy(PruningStrategy):
    """Per frame, the ceil(L * r) tokens with the highest saliency (ties -> lower index)."""

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        from .engine.tango import masked_saliency, stable_topk

        k = frame_budget(tokens.tokens_per_frame, config.retention_ratio)
        scores = masked_saliency(tokens.saliency, tokens.sink_positions)
        return _plan_from_local(tokens, stable_topk(scores, k))


@register_strategy("uniform")
class UniformStrategy(PruningStrategy):
    """Per frame, ceil(L * r) tokens evenly spaced in raster order (ignores saliency)."""

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        T, L = tokens.saliency.shape
        k = frame_budget(L, config.retention_ratio)
        cols = torch.linspace(0, L - 1, k, dtype=torch.float64).round().long().unique()
        return _plan_from_local(tokens, cols.to(tokens.features.device).expand(T, -1))


@register_strategy("tango")
class TangoStrategy(PruningStrategy):
    """Tango: diversity-driven salient selection plus ST-RoPE-guided context merging (the paper's method)."""

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        from .engine.tango import tango_prune

        return tango_prune(tokens, config)

