"""A tiny random `tango_example_vl` model for tests; importing this module registers it with
`tango_plugin.testing` (`build_model("tango_example_vl", tok)`, inputs laid out as for Qwen2-VL), so the adapter
matrix of tango_plugin's own tests covers this family too."""

from __future__ import annotations

from typing import Optional

import torch

from tango_plugin.testing import tiny_models

from . import MODEL_TYPE


def build_tiny_model(tok, seed: int = 0, dtype: torch.dtype = torch.float32, text_overrides: Optional[dict] = None,
                     **overrides):
    """tango_plugin.testing's tiny Qwen2-VL recipe with this family's config and model classes (same weights)."""
    from .modeling import ExampleVLConfig, ExampleVLForConditionalGeneration

    base = tiny_models.build_model("qwen2_vl", tok, seed=seed, dtype=dtype, text_overrides=text_overrides,
                                   **overrides)
    cfg = ExampleVLConfig(**{k: v for k, v in base.config.to_dict().items() if k != "model_type"})
    cfg._attn_implementation = "sdpa"
    model = ExampleVLForConditionalGeneration(cfg).to(dtype).eval()
    model.load_state_dict(base.state_dict())
    model.generation_config.pad_token_id = base.generation_config.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


tiny_models.register_tiny_model(MODEL_TYPE, build_tiny_model, layout="qwen2_vl")

__all__ = ["build_tiny_model"]
