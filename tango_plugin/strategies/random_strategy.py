"""The "random" baseline: per frame, ceil(L * r) tokens drawn uniformly without replacement from a seeded
generator (the floor every learned or heuristic method has to beat)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TangoConfig
from ..engine.budgets import frame_keep_count
from ..engine.tango import stable_topk
from ..engine.types import PrunePlan, VisualTokens
from ._common import check_number, resolve_options
from .base import PruningStrategy, register_strategy
from .builtin import plan_from_frame_columns


@dataclass(frozen=True)
class RandomOptions:
    """Args:
        seed: seed of the CPU generator; the same seed gives the same plan for the same (T, L, r).
    """

    seed: int = 0

    def __post_init__(self) -> None:
        check_number("seed", self.seed, 0, 2 ** 63 - 1, integer=True)


@register_strategy("random")
class RandomStrategy(PruningStrategy):
    """Per frame, ceil(L * r) tokens chosen uniformly at random (independently per frame).

    Budget: exactly ``T * ceil(L * r)`` tokens (`frame_keep_count` per frame, as "topk").

    The draw is a CPU `torch.Generator` seeded with ``strategy_options["seed"]`` (default 0): uniform keys per token,
    the k largest kept. It depends on (seed, T, L, r) only, never on the content or the device.
    """
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    defaults = RandomOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        T, L = tokens.saliency.shape
        k = frame_keep_count(L, config.retention_ratio)
        gen = torch.Generator().manual_seed(opts.seed)
        keys = torch.rand(T, L, generator=gen)  # top-k of i.i.d. keys = a uniform k-subset
        cols = stable_topk(keys, k).to(tokens.features.device)
        return plan_from_frame_columns(tokens, cols)


__all__ = ["RandomStrategy", "RandomOptions"]
