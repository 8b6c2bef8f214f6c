"""The strategy interface and its registry: a pruning method sees `VisualTokens` and returns a `PrunePlan`.

`run_strategy` is the one place where a strategy is called: it checks the tokens, calls the strategy registered
under `config.strategy` and checks the plan it returns; the model adapters go through it too.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple, Type

import torch

from ..config import TangoConfig
from ..engine import checks
from ..engine.budgets import exact_keep_count
from ..engine.tango import masked_saliency
from ..engine.types import PrunePlan, VisualTokens
from ..registry import Registry


class PruningStrategy:
    """Base class of pruning methods. Subclasses implement `select`; they must not modify their inputs.

    `select` returns a `PrunePlan` whose `kept_indices` are sorted ascending, unique and inside the video, and whose
    `features` row k belongs to `kept_indices[k]`.
    """

    #: the name it is registered under (set by `register_strategy`)
    name: str = ""
    #: the plan may repeat an index (Tango, in degenerate ties: two clusters keep the same best token, as the
    #: paper's code does; docs/algorithm.md §4.5); every other disorder is refused all the same
    allows_duplicate_indices: bool = False
    #: under autograd `select` records only its feature path (row gathers, means, merges: linear in the features)
    #: and makes its decisions from detached values, so the selection costs no autograd memory
    #: (docs/training.md, "Gradients"); every built-in strategy does. A strategy that leaves this False still
    #: trains, but `run_strategy` warns once that autograd records all of it.
    feature_gradients: bool = False

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        return self.select(tokens, config)


def _check_strategy(name: str, cls) -> type:
    if not (isinstance(cls, type) and issubclass(cls, PruningStrategy)):
        raise ValueError(f"strategy {name!r}: {cls!r} is not a PruningStrategy subclass")
    if cls.select is PruningStrategy.select:
        raise ValueError(f"strategy {name!r}: {cls.__name__} does not implement select(tokens, config)")
    cls.name = name
    return cls


STRATEGIES = Registry("strategy", check=_check_strategy,
                      hint="Register one with @tango_plugin.register_strategy('<name>').")


def register_strategy(name: str, strategy: Optional[Type[PruningStrategy]] = None, *, exist_ok: bool = False):
    """Register a `PruningStrategy` subclass under `name`; usable as a decorator.

    Example:
        ```python
        @register_strategy("my_method")
        class MyStrategy(PruningStrategy):
            def select(self, tokens, config): ...
        ```
    """
    return STRATEGIES.register(name, strategy, exist_ok=exist_ok)


#: remove the strategy registered under a name (a temporary or test strategy; an unknown name is a `ValueError`)
unregister_strategy = STRATEGIES.unregister
#: sorted names of the registered strategies
list_strategies = STRATEGIES.names


def get_strategy(name: str) -> PruningStrategy:
    """A ready-to-call instance of the strategy registered under `name`.

    (Strategies are stateless, so lookup hands out an instance; `get_adapter` hands out a class because an adapter
    is bound to one model when `enable` builds it.)
    """
    return STRATEGIES.get(name)()


def run_strategy(tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
    """Run `config.strategy` on one video's tokens: check the input, call the strategy, check its plan.

    `retention_ratio == 1.0` keeps every token with its own features for every strategy (no merging either): 1.0
    means "no pruning", in the engine as in the model adapters.

    With `config.exact_budget` the checked plan is then fitted to exactly
    `engine.budgets.exact_keep_count(T, L, r) = T * max(1, ceil(L * r))` tokens by `fit_exact_budget`, here, for
    every strategy (docs/algorithm.md, "Exact-count budget").
    """
    checks.check_visual_tokens(tokens)
    strategy = get_strategy(config.strategy)
    if config.retention_ratio >= 1.0:
        return PrunePlan.keep_all(tokens.features)  # T * L == exact_keep_count(T, L, 1.0)
    if not strategy.feature_gradients and torch.is_grad_enabled() and tokens.features.requires_grad:
        _warn_full_autograd(config.strategy)
    plan = strategy.select(tokens, config)
    checks.check_plan(plan, tokens, config.strategy, allow_duplicates=strategy.allows_duplicate_indices)
    if getattr(config, "exact_budget", False):
        T, L = tokens.saliency.shape
        plan = fit_exact_budget(plan, tokens, exact_keep_count(T, L, config.retention_ratio))
        checks.check_plan(plan, tokens, config.strategy)  # strictly ascending now, duplicates or not before
    return plan


_WARNED_FULL_AUTOGRAD: set = set()


def _warn_full_autograd(name: str) -> None:
    if name not in _WARNED_FULL_AUTOGRAD:
        _WARNED_FULL_AUTOGRAD.add(name)
        warnings.warn(f"strategy {name!r} does not declare feature_gradients=True, and the features it gets require "
                      "gradients (a trainable projector or vision tower): autograd records its whole selection, "
                      "distance matrices included (docs/training.md, 'Gradients')", UserWarning, stacklevel=3)


def fit_exact_budget(plan: PrunePlan, tokens: VisualTokens, target: int) -> PrunePlan:
    """The exact-count rule of ``TangoConfig(exact_budget=True)``: `plan` made to keep exactly `target` tokens
    (docs/algorithm.md, "Exact-count budget").

    1. A repeated index (Tango's degenerate tie, §4.5) is kept once, with its first entry's features.
    2. Fewer than `target`: top up with the highest-saliency tokens the plan does not keep (saliency with the
       sink positions zeroed, as the strategies see it; ties to the lower flat index), with their own features.
       The kept set is a superset of the plan's.
    3. More than `target`: drop the lowest-saliency kept tokens (ties: the higher flat index goes first). The kept
       set is a subset of the plan's.

    The features of tokens the plan kept stay the plan's (merged where the strategy merged). The result is sorted
    and unique. `plan` must be a checked plan for `tokens` (ascending, in range); its tensors are not modified.
    """
    idx, feats = plan.kept_indices, plan.features
    T, L, D = tokens.features.shape
    if not 0 <= target <= T * L:
        raise ValueError(f"exact budget target={target} is outside [0, T * L] = [0, {T * L}]")
    if idx.numel() > 1:
        first = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
        first[1:] = idx[1:] != idx[:-1]  # the plan is ascending: repeats are neighbours
        if not bool(first.all()):
            idx, feats = idx[first], feats[first]
    n = idx.numel()
    if n == target:
        return plan if idx is plan.kept_indices else PrunePlan(kept_indices=idx, features=feats)
    idx = idx.to(torch.long)
    scores = masked_saliency(tokens.saliency, tokens.sink_positions).reshape(T * L).to(idx.device)
    if n < target:
        unkept = torch.ones(T * L, dtype=torch.bool, device=idx.device)
        unkept[idx] = False
        candidates = torch.nonzero(unkept).flatten()  # ascending, so the stable sort sends ties to the lower index
        best = torch.sort(scores[candidates], descending=True, stable=True).indices[: target - n]
        add = candidates[best]
        extra = tokens.features.reshape(T * L, D)[add.to(tokens.features.device)].to(device=feats.device,
                                                                                   dtype=feats.dtype)
        idx, feats = torch.cat([idx, add]), torch.cat([feats, extra])
    else:
        keep = torch.sort(scores[idx], descending=True, stable=True).indices[:target]
        idx, feats = idx[keep], feats[keep.to(feats.device)]
    order = torch.sort(idx).indices
    return PrunePlan(kept_indices=idx[order], features=feats[order.to(feats.device)])


def prune_video_tokens(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid_hw: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    config: Optional[TangoConfig] = None,
    frame_embeddings: Optional[torch.Tensor] = None,
) -> PrunePlan:
    """Prune one video's visual tokens with `config.strategy` (Tango by default).

    Args:
        features: (T, L, D) visual tokens in LLM space, frame-major, raster order inside a frame.
        saliency: (T, L) attention signal, higher = keep.
        grid_hw: (H, W) with L == H * W.
        timestamps: (T,) frame times in seconds; None -> 0..T-1.
        config: settings (default `TangoConfig()`); `config.sink_positions` are zeroed in the saliency.
        frame_embeddings: (T, D') per-frame global embeddings, needed only for segmentation="fastvid".

    Returns:
        `PrunePlan` with `kept_indices` (K,) sorted flat indices ``t * L + i`` and `features` (K, D), merged where
        Tango merges; dtype and device follow `features`. The caller's tensors are not modified.

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
    return run_strategy(tokens, config)


def prune(tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
    """Deprecated alias of `run_strategy` (removed in the next release)."""
    warnings.warn("tango_plugin.prune is deprecated; use tango_plugin.prune_video_tokens (tensors) or "
                  "tango_plugin.strategies.run_strategy (VisualTokens)", DeprecationWarning, stacklevel=2)
    return run_strategy(tokens, config)


__all__ = ["PruningStrategy", "register_strategy", "unregister_strategy", "list_strategies", "get_strategy",
           "run_strategy", "fit_exact_budget", "prune_video_tokens", "STRATEGIES", "VisualTokens", "PrunePlan"]
