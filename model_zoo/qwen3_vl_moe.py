"""Adapter for Hugging Face Qwen3-VL MoE (`Qwen3VLMoeForConditionalGeneration`, `model_type == "qwen3_vl_moe"`).

Qwen3-VL MoE shares Qwen3-VL's vision tower (deepstack features, per-slice timestamps in the prompt text), its
placeholder layout and its 3-D M-RoPE `get_rope_index`; only the language model's MLPs are mixtures of experts,
which the splice never touches (routing is per token, so a pruned sequence routes each kept token as before).
The adapter is therefore `Qwen3VLAdapter` under another model type, written against the public adapter API
(docs/adapters.md): everything model-specific (saliency hook on `visual.blocks[-1].attn`, deepstack pruning with
the same indices, frame times from `fps=` / `video_timestamps=`) is inherited.
"""

from __future__ import annotations

from tango_plugin.model_zoo.qwen_vl import Qwen3VLAdapter


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL MoE (e.g. Qwen3-VL-30B-A3B): Qwen3-VL's vision side, a mixture-of-experts language model.

    `output_router_logits` passes through to the model unchanged; the router sees the shortened sequence.
    """

    preset_name = "qwen3-vl"


__all__ = ["Qwen3VLMoeAdapter"]
