"""What the LLaVA-style families share about their CLIP / SigLIP vision towers: where the encoder layers are, which
layer a `vision_feature_layer` selects, and the q/k saliency hook on that layer (docs/algorithm.md §1.3)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

from tango_plugin.engine.saliency import score
from tango_plugin.integration.adapter import CallInputs
from tango_plugin.integration.hooks import TransientHooks, first_arg


def add_qk_saliency_hooks(cap: TransientHooks, attn: Any, store: dict, source: str,
                          rows: Optional[torch.Tensor] = None) -> None:
    """Hooks (on `cap`) that put the (crops, patches) scores of `source`, from a tower layer's `self_attn` q / k, in
    `store["patch"]`; `rows` picks the crops to score (None: all).

    Every crop: the q / k are the tower's own, taken from its `q_proj` / `k_proj` outputs (the attention calls each
    once), so they are not projected a second time. A few crops (`rows`): a pre-hook projects those rows only."""
    if rows is None:
        def take(name: str) -> Callable:
            def hook(mod, args, output):
                store[name] = output
                if "q" in store and "k" in store:
                    store["patch"] = score(source, _heads(store.pop("q"), attn.head_dim),
                                           _heads(store.pop("k"), attn.head_dim))

            return hook

        cap.post_hook(attn.q_proj, take("q"))
        cap.post_hook(attn.k_proj, take("k"))
        return

    def hook(mod, args, kwargs):
        hs = first_arg(args, kwargs, "hidden_states")
        store["patch"] = score(source, *project_qk(mod, hs[rows.to(hs.device)]))

    cap.pre_hook(attn, hook)


def project_qk(attn: Any, hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q, k) of a CLIP / SigLIP attention layer for `hidden_states` (n, p, D), each (n, heads, p, head_dim), from
    the layer's own projections."""
    return _heads(attn.q_proj(hidden_states), attn.head_dim), _heads(attn.k_proj(hidden_states), attn.head_dim)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A projection's output (n, p, heads * head_dim) as (n, heads, p, head_dim) (a view)."""
    n, p, _ = x.shape
    return x.view(n, p, -1, head_dim).transpose(1, 2)


class HFLlavaTower:
    """Mixin for adapters of Hugging Face LLaVA-style models (`self.inner.vision_tower`, `vision_feature_layer` and
    `vision_feature_select_strategy` in the model config or the call)."""

    @classmethod
    def projector_modules(cls, model):
        return [model.model.multi_modal_projector]

    def _tower_layers(self):
        tower = self.inner.vision_tower
        enc = getattr(tower, "encoder", None) or getattr(getattr(tower, "vision_model", None), "encoder", None)
        if enc is None or not hasattr(enc, "layers"):
            raise ValueError(f"{type(self).__name__}: the vision tower {type(tower).__name__} has no encoder.layers")
        return enc.layers

    def _layer_index(self, feature_layer) -> int:
        """Index in `encoder.layers` of the layer that outputs the selected feature (hidden_states[i]: layer i-1)."""
        if isinstance(feature_layer, (list, tuple)):
            feature_layer = feature_layer[-1]
        n = len(self._tower_layers())
        hs_index = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        if not 1 <= hs_index <= n:
            raise ValueError(f"vision_feature_layer={feature_layer} selects the patch embeddings; the saliency needs "
                             "an attention layer")
        return hs_index - 1

    def _feature_args(self, inputs: CallInputs) -> Tuple[Any, str]:
        cfg = self.model.config
        feature_layer = inputs.get("vision_feature_layer")
        feature_layer = cfg.vision_feature_layer if feature_layer is None else feature_layer
        return feature_layer, inputs.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy


__all__ = ["add_qk_saliency_hooks", "project_qk", "HFLlavaTower"]
