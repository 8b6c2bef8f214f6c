"""Tiny random Video LLMs, an offline tokenizer and synthetic video inputs (tests, demo, benchmarks).

Everything here is built from configs with random weights, so it runs offline on a CPU in well under a second
per model. docs/adapters.md explains the recipes (testing an adapter); inputs are built by hand (no processor, no
torchvision) in exactly the layout the Hugging Face processors produce.

Example:
    ```python
    >>> from tango_plugin import testing as tiny
    >>> tok = tiny.build_tokenizer("qwen")
    >>> model = tiny.build_model("qwen2_vl", tok)
    >>> inputs = tiny.video_inputs(model, tok, [tiny.VideoSpec(frames=8)], prompts=["what happens?"])
    >>> out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    ```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
_CORPUS = [
    "what happens in this video?", "describe the scene in detail.", "a person walks a dog in the park.",
    "the cat sits on the mat and looks at the camera.", "user assistant system you are a helpful assistant.",
    "how many people are there? two people are talking.", "seconds frame time <0.5 seconds> <1.5 seconds>",
] * 20

MODEL_TYPES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: further families with tiny recipes here (adapters in model_zoo written through the public adapter API); they
#: lay out their inputs like one of the types above (`INPUT_LAYOUT`)
MORE_MODEL_TYPES = ("qwen3_vl_moe", "llava_next_video")
#: model_type -> the type whose processor layout its inputs follow
INPUT_LAYOUT = {"qwen3_vl_moe": "qwen3_vl", "llava_next_video": "llava_onevision"}
#: tiny recipes registered from outside (`register_tiny_model`): model_type -> builder
_RECIPES: dict = {}
#: input builders registered from outside (`register_tiny_model(..., inputs=)`): model_type -> builder
_INPUTS: dict = {}


def register_tiny_model(model_type: str, build, layout: str, inputs=None) -> None:
    """Let another package's model family use `build_model` / `video_inputs` (and so the project's adapter matrix).

    Args:
        model_type: the family's `config.model_type`.
        build: `build(tok, seed=..., dtype=..., text_overrides=..., **overrides)` returning the tiny model (eval mode,
            `generation_config.eos_token_id = None`), like `build_model`.
        layout: a type of `MODEL_TYPES` whose processor layout the family's inputs follow (e.g. "qwen2_vl"); with
            `inputs`, the closest one (it still picks the tokenizer style and the native frame size).
        inputs: optional `inputs(model, tok, media, prompts, padding_side=, labels=, dtype=, answers=)` returning the
            batch dict, for a family whose processor lays its inputs out unlike any of `MODEL_TYPES` (e.g. GLM-4V:
            video frames behind the image token id); `video_inputs` then calls it.
    """
    if layout not in MODEL_TYPES:
        raise ValueError(f"layout={layout!r}; expected one of {list(MODEL_TYPES)}")
    _RECIPES[model_type] = build
    INPUT_LAYOUT[model_type] = layout
    if inputs is not None:
        _INPUTS[model_type] = inputs


@functools.lru_cache(maxsize=None)
def _trained_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS, trainer)
    return tk.to_str()


def build_tokenizer(style: str = "qwen", padding_side: str = "left"):
    """A small byte-level BPE tokenizer trained on the fly (0.2 s), with the model family's special tokens.

    Args:
        style: "qwen" (video token `<|video_pad|>`) or "llava" (video token `<video>`).
        padding_side: side the tokenizer pads on ("left" for batched generation).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if style not in ("qwen", "llava"):
        raise ValueError(f"style={style!r}; expected 'qwen' or 'llava'")
    extra = ({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"} if style == "qwen"
             else {"image_token": "<image>", "video_token": "<video>"})
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_bpe()), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", extra_special_tokens=extra)
    tok.padding_side = padding_side
    return tok


def _tid(tok, text: str) -> int:
    return tok.convert_tokens_to_ids(text)


def _text_config(tok, **extra) -> dict:
    cfg = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, bos_token_id=_tid(tok, "<|im_start|>"), eos_token_id=_tid(tok, "<|im_end|>"),
               pad_token_id=tok.pad_token_id)
    cfg.update(extra)
    return cfg


def build_model(model_type: str, tok, seed: int = 0, dtype: torch.dtype = torch.float32,
                text_overrides: Optional[dict] = None, **overrides):
    """A tiny random `...ForConditionalGeneration` of the given `model_type`, in eval mode, SDPA attention.

    Args:
        model_type: one of `MODEL_TYPES`.
        tok: a tokenizer from `build_tokenizer` (its special-token ids are written into the config).
        seed: torch seed of the random init (same seed, same weights).
        text_overrides: extra keys for the language model's config (e.g. `num_hidden_layers`).
        overrides: extra keys for the vision config (e.g. `image_size` for LLaVA-OV).
    """
    import transformers as tf

    if model_type in _RECIPES:
        return _RECIPES[model_type](tok, seed=seed, dtype=dtype, text_overrides=text_overrides, **overrides)
    torch.manual_seed(seed)
    text_overrides = text_overrides or {}
    if model_type == "llava_onevision":
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=112, patch_size=14, vision_use_head=False)
        vision.update(overrides)
        cfg = tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(**vision),
            text_config=tf.Qwen2Config(**_text_config(tok, **text_overrides)),
            image_token_index=_tid(tok, "<image>"), video_token_index=_tid(tok, "<video>"), vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_grid_pinpoints=[[vision["image_size"]] * 2])
        cls = tf.LlavaOnevisionForConditionalGeneration
    elif model_type == "llava_next_video":
        # CLIP tower (CLS token dropped by the "default" select strategy), 2 x 2 average pooling of each frame
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=112, patch_size=14, projection_dim=64)
        vision.update(overrides)
        cfg = tf.LlavaNextVideoConfig(
            vision_config=tf.CLIPVisionConfig(**vision),
            text_config=tf.LlamaConfig(**_text_config(tok, **text_overrides)),
            image_token_index=_tid(tok, "<image>"), video_token_index=_tid(tok, "<video>"), vision_feature_layer=-1,
            vision_feature_select_strategy="default", image_grid_pinpoints=[[vision["image_size"]] * 2],
            spatial_pool_mode="average", spatial_pool_stride=2)
        cls = tf.LlavaNextVideoForConditionalGeneration
    else:
        ids = dict(image_token_id=_tid(tok, "<|image_pad|>"), video_token_id=_tid(tok, "<|video_pad|>"),
                   vision_start_token_id=_tid(tok, "<|vision_start|>"),
                   vision_end_token_id=_tid(tok, "<|vision_end|>"))
        rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}
        if model_type == "qwen2_vl":
            vision = dict(depth=2, embed_dim=64, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2)
            text = _text_config(tok, **{"rope_parameters": rope, **text_overrides})
            cfg_cls, cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration
        elif model_type == "qwen2_5_vl":
            vision = dict(depth=2, hidden_size=64, out_hidden_size=64, intermediate_size=128, num_heads=4,
                          window_size=56, fullatt_block_indexes=[1], patch_size=14, tokens_per_second=2)
            text = _text_config(tok, **{"rope_parameters": rope, **text_overrides})
            cfg_cls, cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
        elif model_type == "qwen3_vl":
            vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                          patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
            qwen3_text = {"head_dim": 16, "rope_parameters": dict(rope, mrope_interleaved=True)}
            text = _text_config(tok, **{**qwen3_text, **text_overrides})
            cfg_cls, cls = tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration
        elif model_type == "qwen3_vl_moe":
            vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                          patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
            moe_text = {"head_dim": 16, "rope_parameters": dict(rope, mrope_interleaved=True), "num_experts": 4,
                        "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}
            text = _text_config(tok, **{**moe_text, **text_overrides})
            cfg_cls, cls = tf.Qwen3VLMoeConfig, tf.Qwen3VLMoeForConditionalGeneration
        else:
            raise ValueError(f"unknown tiny model_type {model_type!r}; known: {list(MODEL_TYPES + MORE_MODEL_TYPES)}")
        vision.update(overrides)
        cfg = cfg_cls(text_config=text, vision_config=vision, **ids)
    cfg._attn_implementation = "sdpa"
    model = cls(cfg).to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are predictable
    return model


@dataclass
class VideoSpec:
    """A synthetic video: `frames` random frames of `size` x `size` pixels (None: the model's native size)."""

    frames: int = 8
    size: Optional[int] = None
    seed: int = 0
    second_per_grid: Optional[float] = None  # Qwen2.5-VL: seconds per temporal patch
    #: (frames, 3, size, size) pixels in [-1, 1] to use instead of the random pattern (e.g. a generated scene)
    pixels: Optional[torch.Tensor] = None


@dataclass
class ImageSpec:
    """A synthetic still image (`size` x `size` pixels; None: the model's native size)."""

    size: Optional[int] = None
    seed: int = 100


def mrope_section(head_dim: int) -> List[int]:
    """M-RoPE sections (t, h, w) summing to head_dim / 2, in Qwen2-VL's 2:3:3 proportion."""
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [half - 2 * h, h, h]


def build_sized_model(model_type: str, tok, *, text: Optional[dict] = None, vision: Optional[dict] = None,
                      seed: int = 0, dtype: torch.dtype = torch.float32):
    """`build_model` at other sizes (e.g. the 0.5B-shaped models of `tango-plugin profile`): `text` keys of the
    language model's config (`hidden_size`, `num_attention_heads`, `num_key_value_heads`, layers ...), `vision`
    keys of the vision config. Keeps the model consistent where a size implies more than one key: the Qwen M-RoPE
    sections follow the new head size, and the Qwen vision merger writes features of the LLM's width. A size that
    cannot make a valid model is a ValueError naming the keys."""
    text, vision = dict(text or {}), dict(vision or {})
    qwen = model_type.startswith("qwen")
    sections = None
    if text:
        hidden, heads = text.get("hidden_size", 64), text.get("num_attention_heads", 4)
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        kv = text.get("num_key_value_heads", 2)
        if heads % kv:
            raise ValueError(f"num_attention_heads {heads} is not divisible by num_key_value_heads {kv}")
        if qwen:
            head_dim = hidden // heads
            rope = {"rope_type": "default", "mrope_section": mrope_section(head_dim), "rope_theta": 1e6}
            if model_type.startswith("qwen3"):
                text.update(head_dim=head_dim, rope_parameters=dict(rope, mrope_interleaved=True))
            else:  # build_model writes Qwen2(.5)-VL's rope_parameters itself: the sections are set after building
                sections = rope["mrope_section"]
            vision.setdefault("hidden_size" if model_type == "qwen2_vl" else "out_hidden_size", hidden)
    try:
        model = build_model(model_type, tok, seed=seed, dtype=dtype, text_overrides=text or None, **vision)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{model_type}: these sizes do not make a valid model ({exc})") from exc
    if sections is not None:
        # the rotary embeddings read the sections at init: give them and the config sections that fit head_dim
        text_config = model.config.get_text_config()
        text_config.rope_parameters = dict(text_config.rope_parameters, mrope_section=list(sections))
        for m in model.modules():
            if isinstance(getattr(m, "mrope_section", None), list):
                m.mrope_section = list(sections)
    return model


def synthetic_frames(spec, size: int, n: int) -> torch.Tensor:
    given = getattr(spec, "pixels", None)
    if given is not None:
        if tuple(given.shape) != (n, 3, size, size):
            raise ValueError(f"VideoSpec.pixels has shape {tuple(given.shape)}; expected {(n, 3, size, size)}")
        return given
    g = torch.Generator().manual_seed(spec.seed)
    # Smooth frames (a random low-res pattern upsampled, drifting in time) so that neighbouring frames are similar,
    # as in real video; pure noise would make every token dynamic.
    base = torch.rand(3, 4, 4, generator=g)
    drift = torch.rand(n, 3, 4, 4, generator=g) * 0.3
    low = base[None] + drift.cumsum(0)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


def qwen_patches(frames: torch.Tensor, patch: int, tp: int = 2, ms: int = 2):
    F, C, H, W = frames.shape
    if F % tp:
        frames = torch.cat([frames, frames[-1:].expand(tp - F % tp, -1, -1, -1)])
        F = frames.shape[0]
    gt, gh, gw = F // tp, H // patch, W // patch
    x = frames.reshape(gt, tp, C, gh // ms, ms, patch, gw // ms, ms, patch).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, C * tp * patch * patch), [gt, gh, gw]


def video_token_count(model, spec) -> int:
    """Placeholder tokens the processor would put in the prompt for this video (or image)."""
    cfg = model.config
    if cfg.model_type == "llava_onevision":
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        return spec.frames * (-(-side // 2)) ** 2 + 1
    if cfg.model_type == "llava_next_video":  # pooled frames back to back, no newline
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        return spec.frames * (side // cfg.spatial_pool_stride) ** 2
    vc = cfg.vision_config
    size = spec.size or _native_size(model)
    frames = getattr(spec, "frames", 1)
    gt = -(-frames // vc.temporal_patch_size)
    return gt * (size // vc.patch_size) ** 2 // vc.spatial_merge_size**2


def _native_size(model) -> int:
    cfg = model.config
    if INPUT_LAYOUT.get(cfg.model_type, cfg.model_type) == "llava_onevision":
        return cfg.vision_config.image_size
    return 8 * cfg.vision_config.patch_size


def video_inputs(model, tok, media: Sequence[Sequence], prompts: Sequence[str], padding_side: Optional[str] = None,
                 labels: bool = False, dtype: Optional[torch.dtype] = None,
                 answers: Optional[Sequence[str]] = None) -> dict:
    """A batch of chat prompts, each with its own videos / images, laid out the way the HF processor does.

    Args:
        model: a model from `build_model` (or any model of those classes).
        tok: the matching tokenizer.
        media: per sample, a list of `VideoSpec` / `ImageSpec` (empty: a text-only request). A bare spec is taken
            as a one-item list.
        prompts: per sample, the question text.
        padding_side: "left" / "right" (default: the tokenizer's).
        labels: also return `labels` (the input ids, visual and pad tokens set to -100; with `answers`, only the
            answer tokens are labelled).
        answers: per sample, the assistant's answer, appended after the prompt with an end-of-turn token (the
            training layout).
        dtype: dtype of the pixel tensors (default: the model's).

    Returns:
        dict of model inputs: `input_ids`, `attention_mask`, pixel tensors, grids and, for Qwen, `mm_token_type_ids`
        (and `second_per_grid_ts` for Qwen2.5-VL).
    """
    cfg = model.config
    if cfg.model_type in _INPUTS:
        return _INPUTS[cfg.model_type](model, tok, media, prompts, padding_side=padding_side, labels=labels,
                                       dtype=dtype, answers=answers)
    mt = INPUT_LAYOUT.get(cfg.model_type, cfg.model_type)
    dtype = dtype or model.dtype
    media = [[m] if isinstance(m, (VideoSpec, ImageSpec)) else list(m) for m in media]
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"answers has {len(answers)} entries for {len(prompts)} prompts; give one per sample")
    texts, videos, images, grids_v, grids_i, spg = [], [], [], [], [], []
    for sample, prompt in zip(media, prompts):
        parts = ["<|im_start|>user\n"]
        for m in sample:
            size = m.size or _native_size(model)
            if isinstance(m, VideoSpec):
                frames = synthetic_frames(m, size, m.frames)
                if mt == "llava_onevision":
                    videos.append(frames)
                    parts.append("<video>" * video_token_count(model, m))
                else:
                    vc = cfg.vision_config
                    patches, grid = qwen_patches(frames, vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
                    videos.append(patches)
                    grids_v.append(grid)
                    spg.append(m.second_per_grid if m.second_per_grid is not None else 1.0)
                    per_slice = grid[1] * grid[2] // vc.spatial_merge_size**2
                    if mt == "qwen3_vl":
                        # Qwen3-VL's processor puts a timestamp and its own vision_start/end around every slice.
                        for t in range(grid[0]):
                            parts.append(f"<{t + 0.5:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_slice
                                         + "<|vision_end|>")
                    else:
                        parts.append("<|vision_start|>" + "<|video_pad|>" * (grid[0] * per_slice) + "<|vision_end|>")
            else:
                frame = synthetic_frames(m, size, 1)
                if mt == "llava_onevision":
                    images.append(frame)
                    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
                    # anyres with one 112 px pinpoint: base tile + one crop tile, unpadded, newline per row
                    parts.append("<image>" * _llava_image_tokens(model, side))
                else:
                    vc = cfg.vision_config
                    patches, grid = qwen_patches(frame.expand(vc.temporal_patch_size, -1, -1, -1), vc.patch_size,
                                                  vc.temporal_patch_size, vc.spatial_merge_size)
                    images.append(patches)
                    grids_i.append(grid)
                    parts.append("<|vision_start|>" + "<|image_pad|>" * (grid[0] * grid[1] * grid[2] // 4)
                                 + "<|vision_end|>")
        parts.append(prompt + "<|im_end|>\n<|im_start|>assistant\n")
        if answers is not None:
            parts.append(answers[len(texts)] + "<|im_end|>")
        texts.append("".join(parts))
    out = tokenize_padded(tok, texts, padding_side)
    if mt == "llava_onevision":
        if videos:
            out["pixel_values_videos"] = torch.stack(videos).to(dtype)
        if images:
            s = cfg.vision_config.image_size
            # (N, 2 tiles, C, H, W): the anyres base tile plus one crop of the single 112 px pinpoint
            out["pixel_values"] = torch.stack([torch.cat([im, im]) for im in images]).to(dtype)
            out["image_sizes"] = torch.tensor([[s, s]] * len(images))
    else:
        if videos:
            out["pixel_values_videos"] = torch.cat(videos).to(dtype)
            out["video_grid_thw"] = torch.tensor(grids_v)
            if mt == "qwen2_5_vl":
                out["second_per_grid_ts"] = torch.tensor(spg)
        if images:
            out["pixel_values"] = torch.cat(images).to(dtype)
            out["image_grid_thw"] = torch.tensor(grids_i)
        ids = out["input_ids"]
        out["mm_token_type_ids"] = ((ids == cfg.image_token_id).int() + 2 * (ids == cfg.video_token_id).int())
    if labels:
        visual_ids = [v for k in ("image_token_id", "video_token_id", "image_token_index", "video_token_index")
                      if (v := getattr(cfg, k, None)) is not None]
        ids = out["input_ids"]
        out["labels"] = training_labels(tok, ids, out["attention_mask"], torch.isin(ids, torch.tensor(visual_ids)),
                                        answers)
    return out


def tokenize_padded(tok, texts: Sequence[str], padding_side: Optional[str] = None) -> dict:
    """`tok(texts)` padded to one length on `padding_side` (default: the tokenizer's own), the tokenizer left as it
    was: {"input_ids", "attention_mask"}."""
    old = tok.padding_side
    tok.padding_side = padding_side or old
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def training_labels(tok, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual: torch.Tensor,
                    answers: Optional[Sequence[str]] = None) -> torch.Tensor:
    """`labels` for `input_ids`: -100 at the visual placeholders (`visual`, a (B, L) mask) and padding; with
    `answers`, -100 everywhere but each row's answer and its end-of-turn token (the last real tokens of the row)."""
    lab = input_ids.clone()
    lab[visual] = -100
    lab[attention_mask == 0] = -100
    if answers is not None:
        for b, answer in enumerate(answers):
            n = len(tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
            real = torch.nonzero(attention_mask[b]).flatten()
            keep = torch.zeros_like(lab[b], dtype=torch.bool)
            keep[real[-n:]] = True
            lab[b][~keep] = -100
    return lab


def _llava_image_tokens(model, side: int) -> int:
    """Image placeholder count of LLaVA-OV's anyres packing for a native-size image and one pinpoint: the base tile
    (side x side, not pooled) plus the crop, unpadded, with a newline after each of its rows."""
    return side * side + side * (side + 1)


def media_token_counts(model, media: Sequence) -> List[int]:
    """Video placeholder tokens per sample for a `media` list as given to `video_inputs`."""
    media = [[m] if isinstance(m, (VideoSpec, ImageSpec)) else list(m) for m in media]
    return [sum(video_token_count(model, m) for m in s if isinstance(m, VideoSpec)) for s in media]


__all__ = ["build_tokenizer", "build_model", "build_sized_model", "mrope_section", "video_inputs", "VideoSpec",
           "ImageSpec", "video_token_count",
           "synthetic_frames", "qwen_patches",
           "media_token_counts", "MODEL_TYPES", "MORE_MODEL_TYPES", "INPUT_LAYOUT", "register_tiny_model", "SPECIALS"]
