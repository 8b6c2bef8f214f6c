"""A tiny random GLM-4.1V (`Glm4vForConditionalGeneration`, `model_type == "glm4v"`) and its inputs.

Importing this module registers the recipe with `tiny_models.register_tiny_model`, so `build_model("glm4v", tok)` and
`video_inputs(model, tok, ...)` work on it like on the built-in families (and the adapter matrix runs on it).

The inputs follow `Glm4vProcessor`'s layout, not Qwen's:

- a video is `<|begin_of_video|>` + per temporal patch `<|begin_of_image|>` + the patch's placeholder tokens +
  `<|end_of_image|>` + its time as text (`int(seconds)`) + `<|end_of_video|>`; the placeholders are the **image**
  token id (GLM writes video frames with the image token), and only `mm_token_type_ids` (text 0, image 1, video 2)
  says which placeholders are video;
- a still image is `<|begin_of_image|>` + its placeholders + `<|end_of_image|>`.

The tiny tokenizer (`build_tokenizer("qwen")`) has no GLM special tokens, so `<|begin_of_image|>` /
`<|end_of_image|>` are its `<|vision_start|>` / `<|vision_end|>` and the image token is `<|image_pad|>`; the video
brackets, which the model never reads, are plain text. `mm_token_type_ids` are what the processor's
`create_mm_token_type_ids` returns for this layout (2 inside a video, 1 for an image). The synthetic frames are
sampled at 2 fps (GLM's video processor default), so temporal patch t starts at frame 2t, second t.

One deliberate difference from the released checkpoints: `video_token_id` is set to the image token id. A real
GLM-4.1V config has a separate `<|video|>` id that never occurs in processed `input_ids`, and transformers 5.24's own
`Glm4vForConditionalGeneration._expand_multimodal_outputs` (beam search, `num_return_sequences`) and chunked prefill
look video placeholders up by `config.video_token_id`, so the stock model fails on a video with beams ("torch.cat():
expected a non-empty list of Tensors"). Aliasing the ids lets the stock reference of the matrix run; the adapter
never reads `video_token_id`. `build(..., checkpoint_ids=True)` keeps the ids distinct, as released.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch

from . import tiny_models
from .tiny_models import ImageSpec, VideoSpec, qwen_patches, synthetic_frames, training_labels

MODEL_TYPE = "glm4v"
#: GLM's video processor samples 2 frames per second by default; the tiny videos are taken as sampled at that rate
FPS = 2.0
#: frame side in patches when a spec gives no size (as `tiny_models.video_token_count` assumes): 8 x 8 patches,
#: 4 x 4 tokens per frame after the 2 x 2 merge
NATIVE_PATCHES = 8
IMAGE_START, IMAGE_END, IMAGE_TOKEN = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
VIDEO_START, VIDEO_END = "<|begin_of_video|>", "<|end_of_video|>"


def build(tok, seed: int = 0, dtype: torch.dtype = torch.float32, text_overrides: Optional[dict] = None,
          checkpoint_ids: bool = False, **overrides):
    """A tiny random `Glm4vForConditionalGeneration` (eval mode, SDPA, `eos_token_id=None`), like `build_model`.

    A 2-layer GLM-4 LLM of width 64 (head_dim 32 with GLM's partial rotary factor 0.5, M-RoPE sections [2, 3, 3]) and
    a 2-layer GLM-4V vision tower (patch 14, 2 x 2 merge by a strided conv, temporal patch 2, 112 px position grid).

    Args:
        checkpoint_ids: keep `video_token_id` distinct from `image_token_id` (as in the released checkpoints; see the
            module docstring for what the stock model then cannot do).
        overrides: extra keys for the vision config.
    """
    import transformers as tf

    torch.manual_seed(seed)
    tid = tok.convert_tokens_to_ids
    text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, bos_token_id=tid("<|im_start|>"), eos_token_id=tid("<|im_end|>"),
                pad_token_id=tok.pad_token_id, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                                "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    text.update(text_overrides or {})
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=text["hidden_size"],
                  patch_size=14, image_size=112, spatial_merge_size=2, temporal_patch_size=2)
    vision.update(overrides)
    image = tid(IMAGE_TOKEN)
    cfg = tf.Glm4vConfig(text_config=text, vision_config=vision, image_token_id=image,
                         video_token_id=tid("<|video_pad|>") if checkpoint_ids else image,
                         image_start_token_id=tid(IMAGE_START), image_end_token_id=tid(IMAGE_END))
    cfg._attn_implementation = "sdpa"
    model = tf.Glm4vForConditionalGeneration(cfg).to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are predictable
    return model


def inputs(model, tok, media: Sequence[Sequence], prompts: Sequence[str], padding_side: Optional[str] = None,
           labels: bool = False, dtype: Optional[torch.dtype] = None, answers: Optional[Sequence[str]] = None) -> dict:
    """`video_inputs` for GLM-4V: the same arguments and keys, in `Glm4vProcessor`'s layout (module docstring)."""
    cfg = model.config
    vc = cfg.vision_config
    dtype = dtype or model.dtype
    media = [[m] if isinstance(m, (VideoSpec, ImageSpec)) else list(m) for m in media]
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"answers has {len(answers)} entries for {len(prompts)} prompts; give one per sample")
    texts, kinds, videos, images, grids_v, grids_i = [], [], [], [], [], []
    for s, (sample, prompt) in enumerate(zip(media, prompts)):
        parts, row_kinds = ["<|im_start|>user\n"], []
        for m in sample:
            size = m.size or NATIVE_PATCHES * vc.patch_size
            if isinstance(m, VideoSpec):
                patches, grid = qwen_patches(synthetic_frames(m, size, m.frames), vc.patch_size,
                                             vc.temporal_patch_size, vc.spatial_merge_size)
                videos.append(patches)
                grids_v.append(grid)
                per_frame = grid[1] * grid[2] // vc.spatial_merge_size**2
                parts.append(VIDEO_START)
                for t in range(grid[0]):  # the processor's replace_frame_token_id, one frame per temporal patch
                    seconds = t * vc.temporal_patch_size / FPS
                    parts.append(IMAGE_START + IMAGE_TOKEN * per_frame + IMAGE_END + str(int(seconds)))
                    row_kinds.append(2)
                parts.append(VIDEO_END)
            else:
                frame = synthetic_frames(m, size, 1)
                patches, grid = qwen_patches(frame.expand(vc.temporal_patch_size, -1, -1, -1), vc.patch_size,
                                             vc.temporal_patch_size, vc.spatial_merge_size)
                images.append(patches)
                grids_i.append(grid)
                parts.append(IMAGE_START + IMAGE_TOKEN * (grid[0] * grid[1] * grid[2] // vc.spatial_merge_size**2)
                             + IMAGE_END)
                row_kinds.append(1)
        parts.append(prompt + "<|im_end|>\n<|im_start|>assistant\n")
        if answers is not None:
            parts.append(answers[s] + "<|im_end|>")
        texts.append("".join(parts))
        kinds.append(row_kinds)
    out = tiny_models.tokenize_padded(tok, texts, padding_side)
    ids = out["input_ids"]
    # mm_token_type_ids: each run of image-token placeholders is one frame (2) or one image (1), in prompt order
    placeholder = ids == cfg.image_token_id
    starts = placeholder & ~torch.nn.functional.pad(placeholder, (1, 0))[:, :-1]
    run = starts.long().cumsum(-1) - 1
    types = torch.zeros_like(ids)
    for b, row_kinds in enumerate(kinds):
        if row_kinds:
            types[b] = torch.where(placeholder[b], torch.tensor(row_kinds)[run[b].clamp(min=0)], 0)
    out["mm_token_type_ids"] = types
    if videos:
        out["pixel_values_videos"] = torch.cat(videos).to(dtype)
        out["video_grid_thw"] = torch.tensor(grids_v)
    if images:
        out["pixel_values"] = torch.cat(images).to(dtype)
        out["image_grid_thw"] = torch.tensor(grids_i)
    if labels:
        out["labels"] = training_labels(tok, ids, out["attention_mask"], placeholder, answers)
    return out


def _needs_inputs_hook(tok, **kwargs):
    raise RuntimeError("the tiny glm4v recipe needs tango_plugin.testing.tiny_models.register_tiny_model(..., "
                       "inputs=): GLM-4V's processor layout (video frames behind the image token id) is unlike the "
                       "built-in layouts, so video_inputs must call tiny_glm4v.inputs for it")


if "inputs" in inspect.signature(tiny_models.register_tiny_model).parameters:
    tiny_models.register_tiny_model(MODEL_TYPE, build, layout="qwen3_vl", inputs=inputs)
else:  # a tiny_models without the input-builder hook: say so instead of building inputs in a layout GLM cannot read
    tiny_models.register_tiny_model(MODEL_TYPE, _needs_inputs_hook, layout="qwen3_vl")

__all__ = ["build", "inputs", "MODEL_TYPE", "FPS"]
