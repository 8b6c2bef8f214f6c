"""tango_plugin: training-free visual-token pruning (Tango, arXiv 2604.09547) for Video LLMs.

The public API. The engine and the strategies need torch only; model integration (`enable`) imports transformers
lazily, when a model is patched. Layers and data flow: docs/architecture.md.
"""

import warnings as _warnings

from . import model_zoo  # noqa: E402,F401,I001  (the built-in families register themselves; imports no transformers)
from .config import TangoConfig
from .engine.budgets import exact_keep_count, pre_llm_retention
from .engine.types import PrunePlan, VisualTokens
from .integration.adapter import ModelAdapter, get_adapter, list_adapters, register_adapter, unregister_adapter
from .integration.api import TangoHandle, disable, enable, enabled, get_handle
from .integration.pretrained import from_pretrained
from .integration.report import PlanRecord, SampleReport
from .integration.training import load_peft_adapter, lora_target_modules, save_peft_adapter
from .integration.video_io import timestamps_from_metadata
from .presets import get_preset, list_presets, register_preset
from .strategies import (
    PruningStrategy,
    get_strategy,
    list_strategies,
    prune_video_tokens,
    register_strategy,
    run_strategy,
    unregister_strategy,
)

__version__ = "0.1.0"

# Names kept for one release with a DeprecationWarning: old name -> (new name, object getter).
_DEPRECATED = {
    "PruneResult": ("PrunePlan", lambda: PrunePlan),
    "prune": ("prune_video_tokens (tensors) or run_strategy (VisualTokens)", lambda: _strategies.prune),
}


def __getattr__(name):
    if name in _DEPRECATED:
        new, getter = _DEPRECATED[name]
        _warnings.warn(f"tango_plugin.{name} is deprecated and will be removed in the next release; use {new}",
                       DeprecationWarning, stacklevel=2)
        return getter()
    raise AttributeError(f"module 'tango_plugin' has no attribute {name!r}")


from . import strategies as _strategies  # noqa: E402

__all__ = [
    "TangoConfig",
    "prune_video_tokens",
    "PrunePlan",
    "VisualTokens",
    "PruningStrategy",
    "register_strategy",
    "unregister_strategy",
    "get_strategy",
    "list_strategies",
    "run_strategy",
    "ModelAdapter",
    "register_adapter",
    "unregister_adapter",
    "get_adapter",
    "list_adapters",
    "enable",
    "enabled",
    "disable",
    "get_handle",
    "from_pretrained",
    "lora_target_modules",
    "save_peft_adapter",
    "load_peft_adapter",
    "TangoHandle",
    "SampleReport",
    "PlanRecord",
    "register_preset",
    "get_preset",
    "list_presets",
    "timestamps_from_metadata",
    "exact_keep_count",
    "pre_llm_retention",
]
