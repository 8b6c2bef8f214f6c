"""A tiny random InternVL3 (`InternVLForConditionalGeneration`, `model_type == "internvl"`) and its inputs.

Importing this module registers the recipe with `tiny_models.register_tiny_model`, so `build_model("internvl", tok)`
and `video_inputs(model, tok, ...)` work on it like on the built-in families (and the adapter matrix runs on it).

The inputs follow `InternVLProcessor`'s layout: a video of n frames is
`"\\n".join(f"Frame{i + 1}: <img>" + "<IMG_CONTEXT>" * tokens_per_tile + "</img>")`, one tile per frame, and its
frames go into `pixel_values` next to the images' tiles, in prompt order; a still image is
`<img>` + its tile's placeholders + `</img>` (one tile: the image is the tile's native size, so the processor's
`crop_to_patches` makes no crops). The model sees image-context tokens only, so nothing it reads says which tiles are
video frames. The tiny model carries its tokenizer as `model.tango_tokenizer`, from which the adapter infers the frames
from the exact `FrameN: ` text (model_zoo/internvl.py). The inputs do not carry the per-call channel
`tango_video_frames`: the stock model's `generate` refuses unknown keywords, and the adapter matrix runs the stock
model on the same inputs.

The tiny tokenizer (`build_tokenizer("qwen")`) has no InternVL special tokens: `<img>` / `</img>` are its
`<|vision_start|>` / `<|vision_end|>` and `<IMG_CONTEXT>` is `<|image_pad|>`. InternVL's config has no video token;
the tiny config sets `video_token_id` to the image token id so that helpers counting video placeholders by it work
(the adapter never reads it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import tiny_models
from .tiny_models import ImageSpec, VideoSpec, synthetic_frames, training_labels

MODEL_TYPE = "internvl"
IMAGE_START, IMAGE_END, IMAGE_TOKEN = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
#: the tile side in pixels of the tiny tower (8 x 8 patches of 14 px, 4 x 4 tokens after the 0.5 pixel shuffle)
TILE = 112


def build(tok, seed: int = 0, dtype: torch.dtype = torch.float32, text_overrides: Optional[dict] = None, **overrides):
    """A tiny random `InternVLForConditionalGeneration` (eval mode, SDPA, `eos_token_id=None`), like `build_model`:
    a 2-layer Qwen2 LLM of width 64 and a 2-layer InternViT tower (112 px tiles, patch 14, CLS token dropped by the
    "default" select strategy, 0.5 pixel shuffle: 16 tokens per tile)."""
    import transformers as tf

    torch.manual_seed(seed)
    tid = tok.convert_tokens_to_ids
    text = dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, bos_token_id=tid("<|im_start|>"),
                eos_token_id=tid("<|im_end|>"), pad_token_id=tok.pad_token_id)
    text.update(text_overrides or {})
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  image_size=[TILE, TILE], patch_size=[14, 14])
    vision.update(overrides)
    cfg = tf.InternVLConfig(text_config=text, vision_config=vision, image_token_id=tid(IMAGE_TOKEN),
                            downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default")
    cfg.video_token_id = cfg.image_token_id  # see the module docstring
    cfg._attn_implementation = "sdpa"
    model = tf.InternVLForConditionalGeneration(cfg).to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    # the adapter infers the video frames from the "FrameN: " text with it (no per-call channel: the stock model's
    # generate refuses unknown keywords, and the adapter matrix compares against the stock model on the same inputs)
    model.tango_tokenizer = tok
    model.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are predictable
    return model


def tokens_per_tile(model) -> int:
    vc = model.config.vision_config
    side = _int(vc.image_size) // _int(vc.patch_size)
    return int(side * side * model.config.downsample_ratio ** 2)


def _int(v) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def inputs(model, tok, media: Sequence[Sequence], prompts: Sequence[str], padding_side: Optional[str] = None,
           labels: bool = False, dtype: Optional[torch.dtype] = None, answers: Optional[Sequence[str]] = None) -> dict:
    """`video_inputs` for InternVL: the same arguments and keys, in `InternVLProcessor`'s layout (module docstring),
    plus `tango_video_frames`."""
    cfg = model.config
    dtype = dtype or model.dtype
    n_tok = tokens_per_tile(model)
    media = [[m] if isinstance(m, (VideoSpec, ImageSpec)) else list(m) for m in media]
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"answers has {len(answers)} entries for {len(prompts)} prompts; give one per sample")
    texts, tiles, frames_channel = [], [], []
    group = IMAGE_START + IMAGE_TOKEN * n_tok + IMAGE_END
    for s, (sample, prompt) in enumerate(zip(media, prompts)):
        parts = ["<|im_start|>user\n"]
        for m in sample:
            if m.size not in (None, TILE):
                raise ValueError(f"the tiny InternVL takes {TILE} px tiles; got size={m.size}")
            if isinstance(m, VideoSpec):
                tiles.append(synthetic_frames(m, TILE, m.frames))
                parts.append("\n".join(f"Frame{i + 1}: " + group for i in range(m.frames)) + "\n")
                frames_channel.append(m.frames)
            else:
                tiles.append(synthetic_frames(m, TILE, 1))
                parts.append(group + "\n")
                frames_channel.append(0)
        parts.append(prompt + "<|im_end|>\n<|im_start|>assistant\n")
        if answers is not None:
            parts.append(answers[s] + "<|im_end|>")
        texts.append("".join(parts))
    out = tiny_models.tokenize_padded(tok, texts, padding_side)
    ids = out["input_ids"]
    if tiles:
        out["pixel_values"] = torch.cat(tiles).to(dtype)
    if labels:
        out["labels"] = training_labels(tok, ids, out["attention_mask"], ids == cfg.image_token_id, answers)
    return out


tiny_models.register_tiny_model(MODEL_TYPE, build, layout="llava_onevision", inputs=inputs)

__all__ = ["build", "inputs", "tokens_per_tile", "MODEL_TYPE", "TILE"]
