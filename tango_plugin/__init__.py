"""tango_plugin: training-free visual-token pruning (Tango, arXiv 2604.09547) for Video LLMs.

The engine (`prune_video_tokens`, strategies) needs torch only; model integration (`enable`) imports
transformers lazily, when a model is patched.
"""

from .config import TangoConfig
from .engine import PruneResult, prune_video_tokens
from .strategies import (
    PrunePlan,
    PruningStrategy,
    VisualTokens,
    get_strategy,
    list_strategies,
    prune,
    register_strategy,
    unregister_strategy,
)

__version__ = "0.1.0"

# Model-facing API, imported on first use so that `import tango_plugin` stays light.
_LAZY = {
    "enable": ".api",
    "enabled": ".api",
    "TangoHandle": ".api",
    "ModelAdapter": ".adapters",
    "register_adapter": ".adapters",
    "get_adapter": ".adapters",
    "list_adapters": ".adapters",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'tango_plugin' has no attribute {name!r}")


__all__ = [
    "TangoConfig",
    "PruneResult",
    "prune_video_tokens",
    "PrunePlan",
    "PruningStrategy",
    "VisualTokens",
    "get_strategy",
    "list_strategies",
    "prune",
    "register_strategy",
    "unregister_strategy",
    *_LAZY,
]
