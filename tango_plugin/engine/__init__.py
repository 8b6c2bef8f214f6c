"""The framework-free engine: Tango maths on plain tensors (torch and numpy only, never transformers).

The engine owns its data types (`VisualTokens`, `PrunePlan`), the budget arithmetic, the input checks, the
saliency maths and the steps of Tango; it imports nothing above `tango_plugin.config`. Strategies
(`tango_plugin.strategies`) call into it; `tango_plugin.prune_video_tokens` is the public entry point.
"""

from .budgets import adjusted_ratio, frame_budgets, frame_keep_count, segment_budgets
from .checks import check_visual_tokens
from .tango import masked_saliency, stable_topk, tango_prune
from .types import PrunePlan, VisualTokens

__all__ = ["VisualTokens", "PrunePlan", "tango_prune", "masked_saliency", "stable_topk", "check_visual_tokens",
           "frame_keep_count", "frame_budgets", "segment_budgets", "adjusted_ratio"]
