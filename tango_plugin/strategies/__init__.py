"""Pruning strategies: the interface, its registry and the registered methods.

A strategy sees one video's `VisualTokens` and returns a `PrunePlan` (docs/architecture.md, "Add a strategy").
`base` holds the interface and `run_strategy`; each other module registers its methods when imported.
"""

from . import baselines  # noqa: F401,I001  (registers random, visionzip, divprune, fastvid, holitom, vidcom2)
from . import builtin  # noqa: F401  (registers tango, topk, uniform)
from . import dart  # noqa: F401  (registers dart)
from . import evs  # noqa: F401  (registers evs)
from . import flashvid  # noqa: F401  (registers flashvid)
from .base import (
    STRATEGIES,
    PrunePlan,
    PruningStrategy,
    VisualTokens,
    get_strategy,
    list_strategies,
    prune,
    prune_video_tokens,
    register_strategy,
    run_strategy,
    unregister_strategy,
)

__all__ = ["PruningStrategy", "register_strategy", "unregister_strategy", "list_strategies", "get_strategy",
           "run_strategy", "prune_video_tokens", "STRATEGIES", "VisualTokens", "PrunePlan", "prune"]
