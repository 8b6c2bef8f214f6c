"""Tiny checkpoint folders: a random model of a built-in family with a real processor and chat template, saved the way
a Hugging Face checkpoint is (no downloads). `tango-plugin tiny MODEL_TYPE OUTPUT_DIR` writes one; the docs' commands
(lmms-eval, qwen-vl-utils, `run`, `profile`, vLLM) run on such folders, and so do the tests.

`head_dim=32` gives the language model 32-wide attention heads (2 heads of a 64-wide model; vLLM's CPU attention
backend takes head sizes from 32 up), with M-RoPE sections that sum to head_dim / 2 for the Qwen families.
"""

from __future__ import annotations

import json
import os
from typing import Optional

#: families `save_tiny_checkpoint` can write (the ones with a Hugging Face processor class)
CHECKPOINT_MODEL_TYPES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")

#: a Qwen chat template that takes string and list contents (video, image and text parts)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: the same for LLaVA-OneVision's `<video>` / `<image>` tokens
LLAVA_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>").replace(
    "<|vision_start|><|image_pad|><|vision_end|>", "<image>")

#: M-RoPE sections per text head size (they sum to head_dim / 2)
_MROPE_SECTIONS = {16: [2, 3, 3], 32: [4, 6, 6], 64: [8, 12, 12]}


def _text_overrides(model_type: str, head_dim: Optional[int], text_overrides: Optional[dict]) -> dict:
    out: dict = {}
    if head_dim is not None:
        if head_dim not in _MROPE_SECTIONS:
            raise ValueError(f"head_dim={head_dim!r} is not allowed; expected one of {sorted(_MROPE_SECTIONS)}")
        hidden = (text_overrides or {}).get("hidden_size", 64)
        out.update(num_attention_heads=hidden // head_dim, num_key_value_heads=1, head_dim=head_dim)
        if model_type.startswith("qwen"):
            rope = {"rope_type": "default", "mrope_section": _MROPE_SECTIONS[head_dim], "rope_theta": 1e6}
            if model_type.startswith("qwen3"):
                rope["mrope_interleaved"] = True
            out["rope_parameters"] = rope
    out.update(text_overrides or {})
    return out


def _hub_layout(folder: str, model_type: str) -> None:
    """Rewrite the saved weights in the layout of the published checkpoints, which transformers reads (converting
    on load) and vLLM 0.32 expects. transformers 5.x saves two things otherwise: LLaVA-OV's SigLIP tower without
    its `vision_model.` level, and Qwen3-VL-MoE's stacked experts as (experts, out, in) instead of the published
    (experts, in, out)."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    out = {}
    for key, value in tensors.items():
        if model_type == "llava_onevision" and key.startswith("vision_tower.") \
                and not key.startswith("vision_tower.vision_model."):
            key = "vision_tower.vision_model." + key[len("vision_tower."):]
        if model_type == "qwen3_vl_moe" and key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            value = value.transpose(1, 2).contiguous()
        out[key] = value
    save_file(out, path, metadata={"format": "pt"})


def build_processor(model_type: str, tok, side: int = 112, chat_template: bool = True):
    """The real Hugging Face processor of the family for a tiny model: frames resized to `side` x `side` pixels
    (Qwen: at most `side * side` pixels per frame), the tokenizer `tok`, and a chat template."""
    import transformers as tf

    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        px = dict(min_pixels=56 * 56, max_pixels=side * side)
        cls = tf.Qwen2VLProcessor if model_type == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        return cls(image_processor=tf.Qwen2VLImageProcessor(**px), tokenizer=tok,
                   video_processor=tf.Qwen2VLVideoProcessor(**px, cap_pixels_per_frame=False),
                   chat_template=QWEN_CHAT_TEMPLATE if chat_template else None)
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        # Qwen3-VL's published processors normalise images with mean = std = 0.5, as its video processor does (the
        # Qwen2-VL image processor's class default is CLIP's); vLLM normalises videos with the image values
        half = [0.5, 0.5, 0.5]
        return tf.Qwen3VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32, max_pixels=side * side,
                                                     image_mean=half, image_std=half),
            tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE if chat_template else None,
            video_processor=tf.Qwen3VLVideoProcessor(
                size={"shortest_edge": 32 * 32 * 4, "longest_edge": side * side * 16}, cap_pixels_per_frame=False))
    if model_type == "llava_onevision":
        size = {"height": side, "width": side}
        return tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[side, side]]),
            tokenizer=tok, video_processor=tf.LlavaOnevisionVideoProcessor(size=size),
            num_image_tokens=(side // 14) ** 2, vision_feature_select_strategy="full",
            chat_template=LLAVA_CHAT_TEMPLATE if chat_template else None)
    raise ValueError(f"model_type={model_type!r} is not allowed; expected one of {list(CHECKPOINT_MODEL_TYPES)}")


def save_tiny_checkpoint(folder: str, model_type: str, *, seed: int = 0, side: int = 112,
                         head_dim: Optional[int] = None, chat_template: bool = True, with_processor: bool = True,
                         text_overrides: Optional[dict] = None, vision_overrides: Optional[dict] = None,
                         tango: Optional[dict] = None) -> str:
    """Write a tiny random checkpoint folder of `model_type` (weights, config, tokenizer, processor) and return it.

    Args:
        folder: the output folder (created; files in it are overwritten).
        model_type: one of `CHECKPOINT_MODEL_TYPES`.
        seed: seed of the random weights.
        side: frame side in pixels the processor resizes to (LLaVA-OV: also the vision tower's image size).
        head_dim: the language model's attention head size (None: the tiny default 16; 32 for vLLM's CPU backend).
        chat_template: save a chat template with the processor.
        with_processor: save the processor and tokenizer files (False: a bare model folder).
        text_overrides: extra keys for the language model's config.
        vision_overrides: extra keys for the vision tower's config (e.g. `out_hidden_size` to match a wider LLM).
        tango: a `tango` section (knobs, `tango_plugin.knobs`) to write into config.json: the config flag.

    Example:
        ```python
        >>> from tango_plugin.testing.checkpoints import save_tiny_checkpoint
        >>> folder = save_tiny_checkpoint("tiny-qwen2-vl", "qwen2_vl")
        ```
    """
    from .tiny_models import build_model, build_tokenizer

    if model_type not in CHECKPOINT_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not allowed; expected one of {list(CHECKPOINT_MODEL_TYPES)}")
    # LLaVA-OV's tower takes side x side images of 14-pixel patches; the Qwen processors resize within side * side
    unit = 14 if model_type == "llava_onevision" else 1
    if isinstance(side, bool) or not isinstance(side, int) or side < 56 or side % unit:
        raise ValueError(f"side={side!r} is not allowed for {model_type}; expected an integer >= 56"
                         + (" and a multiple of 14" if unit == 14 else ""))
    tok = build_tokenizer("llava" if model_type == "llava_onevision" else "qwen")
    if model_type == "qwen3_vl_moe":  # vLLM reads it; transformers 5.25 stopped writing it
        text_overrides = {"norm_topk_prob": True, **(text_overrides or {})}
    vision = {"image_size": side} if model_type == "llava_onevision" else {}
    vision.update(vision_overrides or {})
    model = build_model(model_type, tok, seed=seed, text_overrides=_text_overrides(model_type, head_dim,
                                                                                  text_overrides), **vision)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    if model_type in ("llava_onevision", "qwen3_vl_moe"):
        _hub_layout(folder, model_type)
    if with_processor:
        build_processor(model_type, tok, side=side, chat_template=chat_template).save_pretrained(folder)
    if tango is not None:
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["tango"] = dict(tango)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
    return str(folder)


__all__ = ["CHECKPOINT_MODEL_TYPES", "QWEN_CHAT_TEMPLATE", "LLAVA_CHAT_TEMPLATE", "build_processor",
           "save_tiny_checkpoint"]
