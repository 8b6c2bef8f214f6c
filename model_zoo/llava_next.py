"""Adapter for the models of LLaVA-NeXT's own `llava` package (`LlavaQwenForCausalLM`, `config.model_type ==
"llava_qwen"`): the code the paper's LLaVA-OneVision and LLaVA-Video numbers come from.

`llava` is not the Hugging Face LLaVA-OV class (that one is `llava_onevision.py`): it runs on transformers 4.x, takes
one `IMAGE_TOKEN_INDEX` (-200) per image or video in `input_ids` and builds the LLM's `inputs_embeds` itself in
`LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`, which both `forward` and `generate` call:

    frames of every image / video, concatenated -> encode_images (SigLIP tower, its last layer removed, + projector)
    -> per video: get_2dPool (config.mm_spatial_pool_mode, stride 2) -> (T, L, D)
    -> newline layout (config.mm_newline_position): "one_token" flattens and appends one image_newline,
       "grid" (add_token_per_grid) appends one after every row of every frame
    -> the features replace the video's single placeholder, the rows are re-padded.

Since every video occupies exactly one placeholder, pruning is only a matter of handing llava a shorter feature
sequence. The adapter wraps four methods of the model instance (through the handle's `HookRegistry`, so they come off
with `handle.remove()`), and they act only inside a wrapped `prepare_inputs_labels_for_multimodal` call that has
videos:

* `encode_images`: the saliency hook on the tower's last remaining layer, for that one call (a transient hook);
* `get_2dPool`: runs llava's own pooling, pools the scores with the same call (the model's own operator, so scores
  and features stay on the same grid, docs/algorithm.md §1.2), runs the strategy (`run_strategy`) and returns the
  kept tokens as a (1, K, D) "video" (llava then flattens it and, in one-token mode, appends its newline);
* `add_token_per_grid` (grid mode): the kept tokens with a newline after each (frame, row) that kept a token;
* `prepare_inputs_labels_for_multimodal`: sets up the call and writes the report rows.

The layout is llava's own choice, read from the model config at every call exactly as llava reads it:
`mm_spatial_pool_mode` "bilinear" (LLaVA-OV: ceil(27/2) = 14 x 14) or "average" (LLaVA-Video: floor, 13 x 13), and
`mm_newline_position` "one_token" / "grid" / "no_token" with `mm_patch_merge_type` ("spatial_unpad" appends the
one-token newline, "flat" none). The sink preset follows the pooling: `llava-video` for "average", else
`llava-onevision`. Refused at `enable` (`ValueError`): `mm_newline_position="frame"`, `add_faster_video=True`, pool
modes other than those two, and a tower other than llava's SigLIP. A config changed to such a mode after `enable` is
not pruned: a warning and the report say why.

The intra-LLM stage (`intra_llm_layer=K`, `intra_llm_ratio`; docs/algorithm.md §6) runs in `generate`, on the Qwen2
decoder layers of llava's LLM (`model.get_model().layers`), with the same hooks as the transformers adapters
(`integration.intra_llm.IntraLLMStage`; SDPA or eager attention). llava builds the LLM's `inputs_embeds` itself, so
each video's span in them is laid out here from llava's own rules: each row's text tokens (its `attention_mask`) with
every placeholder replaced by the tokens inserted for it (the kept tokens and newlines), re-padded on
`config.tokenizer_padding_side`, truncated at `config.tokenizer_model_max_length`. A call that also has still images
(whose token counts llava decides elsewhere), a plain `forward`, and a cache other than a dynamic one run without the
stage, with a one-time warning.

Options (`tango_plugin.enable(model, cfg, **options)`): `fps` (frames per second of the sampled frames) and
`video_timestamps` (seconds of each frame: one tensor for all videos, or a list with one per video); per call,
`tango_video_timestamps=` passed to `generate` / `forward` (popped before llava sees the arguments) wins. Without
any of them the engine uses the frame index as time and a one-time warning says so.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from tango_plugin.engine.types import VisualTokens
from tango_plugin.integration.adapter import ModelAdapter
from tango_plugin.integration.hooks import TransientHooks, first_arg
from tango_plugin.integration.intra_llm import IntraLLMLifecycle, IntraLLMStage, dynamic_cache_or_warn
from tango_plugin.integration.report import PlanRecord, SampleReport
from tango_plugin.integration.threads import per_thread, serial
from tango_plugin.strategies import run_strategy

from .siglip import load_siglip_head, siglip_head_scores
from .vision_towers import add_qk_saliency_hooks

#: llava.constants.IMAGE_TOKEN_INDEX: the one placeholder of each image / video in `input_ids`
IMAGE_TOKEN_INDEX = -200
POOL_MODES = ("bilinear", "average")
NEWLINE_POSITIONS = ("one_token", "grid", "no_token")
#: sink preset and the tokens per frame it was written for, per pool mode (docs/algorithm.md §1.4)
PRESETS = {"bilinear": ("llava-onevision", 196), "average": ("llava-video", 169)}

MISSING_TIMES_NOTE = ("no frame times for this video: ST-RoPE uses the frame index 0..T-1 as time; pass "
                      "tango_video_timestamps= (seconds of each sampled frame: frame index / video fps) to "
                      "generate / forward, or fps= / video_timestamps= to tango.enable")


def video_layout(config: Any) -> Tuple[str, str]:
    """(pool mode, newline layout) that llava's `prepare_inputs_labels_for_multimodal` applies to a video, read from
    the model config as llava reads it; the newline layout is "one_token" (one newline per video), "grid" (one after
    each row of each frame) or "none". `ValueError` for a layout the adapter does not prune."""
    if getattr(config, "add_faster_video", False):
        raise ValueError("add_faster_video=True (LLaVA-Video's slow-fast frame layout) is not supported by the Tango "
                         "llava adapter; set model.config.add_faster_video = False")
    pool = getattr(config, "mm_spatial_pool_mode", None)
    if pool not in POOL_MODES:
        raise ValueError(f"mm_spatial_pool_mode={pool!r} is not supported by the Tango llava adapter; supported: "
                         f"{list(POOL_MODES)} (bilinear: LLaVA-OneVision, average: LLaVA-Video)")
    merge = getattr(config, "mm_patch_merge_type", "flat")
    position = getattr(config, "mm_newline_position", "one_token")
    if merge == "flat":
        return pool, "none"  # llava flattens video features without any newline
    if not str(merge).startswith("spatial"):
        raise ValueError(f"mm_patch_merge_type={merge!r} is not supported (llava itself accepts 'flat' and "
                         "'spatial*')")
    if position not in NEWLINE_POSITIONS:
        raise ValueError(f"mm_newline_position={position!r} is not supported by the Tango llava adapter; supported: "
                         f"{list(NEWLINE_POSITIONS)} (one_token: LLaVA-OneVision, grid: LLaVA-Video)")
    if position == "grid":
        return pool, "grid"
    if position == "one_token" and "unpad" in merge:
        return pool, "one_token"
    return pool, "none"


@dataclass
class _Video:
    """One video of a `prepare_inputs_labels_for_multimodal` call."""

    index: int  # among the call's videos
    image_index: int  # among the call's images (llava's `images` list)
    start: int  # first row of its frames in the concatenation `encode_images` gets
    frames: int
    row: int  # batch row whose placeholder it replaces
    before: int = 0
    after: int = 0
    kept: int = 0
    done: bool = False
    note: str = ""
    seconds: float = 0.0
    times: Optional[List[float]] = None  # the seconds ST-RoPE used for each frame (None: the frame index)


@dataclass
class _Call:
    """State of one wrapped `prepare_inputs_labels_for_multimodal` call with videos."""

    videos: List[_Video]
    batch: int
    pool: str
    newline: str
    need_saliency: bool
    timestamps: Any
    store: Dict[str, torch.Tensor] = field(default_factory=dict)
    encoded: bool = False
    next_video: int = 0
    hook_seconds: float = 0.0
    #: grid mode: id(pooled tensor) -> (that tensor, the kept tokens with their newlines)
    pending: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class LlavaIntraLLMStage(IntraLLMStage):
    """The intra-LLM stage on llava's Qwen2 decoder (transformers 4.x, whose attention registry has no
    `get_interface`): the scoring layer calls the model's own SDPA / eager function by name."""

    def real_attention(self, module) -> Callable:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = sys.modules[type(module).__module__].eager_attention_forward
        if self._implementation == "eager":
            return eager
        get = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)
        return get(self._implementation, eager) if get is not None else ALL_ATTENTION_FUNCTIONS[self._implementation]


_PREPARE_ARGS = ("input_ids", "position_ids", "attention_mask", "past_key_values", "labels", "images", "modalities",
                 "image_sizes")


class LlavaNextAdapter(IntraLLMLifecycle, ModelAdapter):
    """Tango for LLaVA-NeXT `llava` models (`LlavaQwenForCausalLM`): video inputs in LLaVA-OV and LLaVA-Video layout.

    Still images (modality "image") pass through unchanged. See the module docstring for the seam and the options.
    """

    stage_class = LlavaIntraLLMStage

    # one call's state, per thread (integration/threads.py)
    _call = per_thread(None)
    _given_times = per_thread(None)
    _generating = per_thread(False)  # the top-level call is a generate (the only one that arms the intra-LLM stage)
    _intra_ok = per_thread(False)  # that generate's cache allows the stage

    saliency_sources = ("global_query", "siglip_head", "attention_received")
    media_kwargs = ("images",)
    options_help = {
        "fps": "frames per second of the sampled frames; timestamps = frame index / fps (default: frame index)",
        "video_timestamps": "(T,) seconds per video (a tensor, or a list with one tensor per video)",
    }

    @classmethod
    def language_model_modules(cls, model):
        # `llava` keeps the vision tower, the projector and the resampler inside the LLM's own module
        inner = model.get_model()
        vision = [getattr(inner, name, None) for name in ("vision_tower", "mm_projector", "vision_resampler")]
        return [inner], [m for m in vision if m is not None]

    @classmethod
    def projector_modules(cls, model):
        return [model.get_model().mm_projector]

    def __init__(self, model, config, state=None, hooks=None, **options) -> None:
        super().__init__(model, config, state, hooks, **options)
        self._head = None

    # ------------------------------------------------------------------------------------------- settings
    def _tower(self):
        get = getattr(self.model, "get_vision_tower", None)
        return get() if callable(get) else None

    def _tower_layers(self):
        tower = self._tower()
        vision = getattr(getattr(tower, "vision_tower", None), "vision_model", None)
        layers = getattr(getattr(vision, "encoder", None), "layers", None)
        if layers is None or len(layers) == 0:
            raise ValueError(f"{type(self).__name__}: the vision tower {type(tower).__name__} is not llava's loaded "
                             "SigLIP tower (vision_tower.vision_model.encoder.layers); only SigLipVisionTower is "
                             "supported (load the model with llava's load_pretrained_model, or call "
                             "model.get_vision_tower().load_model() when it was built with delay_load)")
        return layers

    def grid_tokens(self, pool: str) -> int:
        """Tokens per frame of llava's pooled video grid (stride 2, as `prepare_inputs_labels_for_multimodal` calls
        `get_2dPool`)."""
        side = self._tower().num_patches_per_side
        side = math.ceil(side / 2) if pool == "bilinear" else side // 2
        return side * side

    def validate(self) -> None:
        super().validate()
        for name in ("prepare_inputs_labels_for_multimodal", "encode_images", "get_2dPool", "add_token_per_grid"):
            if not callable(getattr(self.model, name, None)):
                raise ValueError(f"{type(self.model).__name__} has no {name}(); this adapter needs a LLaVA-NeXT "
                                 "`llava` model (LlavaMetaForCausalLM)")
        pool, _ = video_layout(self.model.config)
        layers = self._tower_layers()
        self.validate_intra_llm()
        if self.config.sink_positions is not None:
            self.sink_positions(self.grid_tokens(pool), PRESETS[pool])  # explicit ones off the grid -> ValueError
        if self.saliency_source_name() == "siglip_head":
            path = self.config.siglip_head_path
            if not path:
                raise ValueError("saliency_source='siglip_head' needs siglip_head_path: a local SigLIP checkpoint "
                                 "folder with the attention-pooling head (llava's loader deletes the tower's last "
                                 "layer and head, so the head is loaded a second time from the full checkpoint, e.g. "
                                 "google/siglip-so400m-patch14-384); or use saliency_source='global_query'")
            post_ln, head = load_siglip_head(path)
            width = layers[-1].self_attn.q_proj.in_features
            if post_ln.normalized_shape[0] != width:
                raise ValueError(f"siglip_head_path={path!r}: head width {post_ln.normalized_shape[0]} does not match "
                                 f"the model's vision tower width {width}")
            self._head = (post_ln, head)

    def text_layers(self):
        return self.model.get_model().layers

    def text_attention(self) -> Optional[str]:
        return getattr(self.model.config, "_attn_implementation", None)

    def install(self) -> None:
        for name, route in (("prepare_inputs_labels_for_multimodal", self._prepare),
                            ("encode_images", self._encode_images), ("get_2dPool", self._get_2d_pool),
                            ("add_token_per_grid", self._add_token_per_grid)):
            self.hooks.wrap_method(f"llava:{name}", self.model, name, route)
        self.install_intra_llm()

    def close(self) -> None:
        self._head = None
        self._call = None
        self.close_intra_llm()

    # ------------------------------------------------------------------------------------------- forward / generate
    def forward(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        return self._route(original, args, kwargs, "input_ids")

    def generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        if self._depth or self._intra is None:
            return self._route(original, args, kwargs, "inputs")
        with serial(self._intra):  # the intra-LLM stage holds one call's reduction: one such generate at a time
            return self._generate_with_stage(original, args, kwargs)

    def _generate_with_stage(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        self._generating, self._intra_ok = True, dynamic_cache_or_warn(self.model, self.state, kwargs)
        try:
            return self._route(original, args, kwargs, "inputs")
        finally:
            self._generating = self._intra_ok = False
            if self._intra is not None:
                self._intra.disarm()

    def _route(self, original: Callable, args: tuple, kwargs: dict, ids_name: str) -> Any:
        """Take `tango_video_timestamps` out of the call (llava would refuse it) and keep it for the prepare call
        this forward / generate makes; a top-level call starts with a "no video" report."""
        kwargs = dict(kwargs)
        given = kwargs.pop("tango_video_timestamps", None)
        outer, top = self._given_times, self._depth == 0
        if given is not None or top:
            self._given_times = given
        if top:
            try:
                bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
            except TypeError:
                bound = {}
            ids = bound.get(ids_name, kwargs.get("input_ids"))
            batch = ids.shape[0] if isinstance(ids, torch.Tensor) and ids.dim() == 2 else 1
            self.state.last = [SampleReport(sample=b, note="no video in this call") for b in range(batch)]
        self._depth += 1
        try:
            return original(*args, **kwargs)
        finally:
            self._depth -= 1
            self._given_times = outer

    # ------------------------------------------------------------------------------------------- the llava seam
    @staticmethod
    def _bind(args: tuple, kwargs: dict) -> dict:
        bound = dict(zip(_PREPARE_ARGS, args))
        bound.update(kwargs)
        return bound

    @staticmethod
    def _frames(image: torch.Tensor) -> int:
        """Rows `image` adds to the concatenation llava's prepare builds (a 3-D image is one frame)."""
        return int(image.shape[0]) if image.ndim == 4 else 1

    @staticmethod
    def _image_rows(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], count: int) -> List[int]:
        """Batch row of each image, as llava's prepare assigns them: each placeholder of a row takes the next image,
        and a row without a placeholder also takes one (llava's own bookkeeping)."""
        rows: List[int] = []
        for b in range(input_ids.shape[0]):
            ids = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
            rows += [b] * max(1, int((ids == IMAGE_TOKEN_INDEX).sum()))
        return (rows + [rows[-1] if rows else 0] * count)[:count]

    def _prepare(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        bound = self._bind(args, kwargs)
        images, ids = bound.get("images"), bound.get("input_ids")
        if (self._call is not None or images is None or not isinstance(ids, torch.Tensor) or ids.dim() != 2
                or ids.shape[1] == 1 or not (isinstance(images, list) or images.ndim == 5)):
            return original(*args, **kwargs)  # decoding, text only, still images only, or a nested call
        modalities = bound.get("modalities", ["image"])
        modalities = [modalities] if isinstance(modalities, str) else list(modalities)
        images = list(images)
        rows = self._image_rows(ids, bound.get("attention_mask"), len(images))
        videos, start = [], 0
        for i, image in enumerate(images):
            n = self._frames(image)
            if i < len(modalities) and modalities[i] == "video":
                videos.append(_Video(index=len(videos), image_index=i, start=start, frames=n, row=rows[i]))
            start += n
        batch = ids.shape[0]
        if getattr(self.config, "prune_images", False) and len(videos) < len(images):
            self.state.warn_once("images", f"prune_images=True but {type(self).__name__} prunes videos only; "
                                           "images are passed to the model unpruned")
        if not videos:
            self.state.last = [SampleReport(sample=b, note="no video in this call") for b in range(batch)]
            return original(*args, **kwargs)
        try:
            pool, newline = video_layout(self.model.config)
        except ValueError as exc:
            note = f"video passed through unpruned: {exc}"
            self.state.warn_once("layout", note)
            self.state.last = [SampleReport(sample=b, videos=sum(v.row == b for v in videos), note=note,
                                            video_indices=[i for i, v in enumerate(videos) if v.row == b])
                               for b in range(batch)]
            return original(*args, **kwargs)
        call = _Call(videos=videos, batch=batch, pool=pool, newline=newline,
                     need_saliency=float(self.config.retention_ratio) < 1.0, timestamps=self._given_times)
        self._call = call
        try:
            out = original(*args, **kwargs)
        finally:
            self._call = None
        self._report(call)
        if self._intra is not None:
            if not self._generating:
                self.state.warn_once("intra-forward", "intra_llm_layer is applied in generate only (forward returns "
                                                      "one logit row per input token); this forward call runs "
                                                      "without it")
            elif self._intra_ok:
                self._arm_intra(call, bound, len(images), out)
        return out

    def _arm_intra(self, call: _Call, bound: dict, count: int, out: Any) -> None:
        """Arm the intra-LLM stage for the prefill that follows, with each video's span in llava's `inputs_embeds`."""
        embeds = out[4] if isinstance(out, tuple) and len(out) > 4 else None
        spans = self._video_spans(call, bound, count, embeds)
        if spans is None:
            return
        if not self._intra.arm(spans):
            self.state.warn_once("intra-impl", "intra_llm_layer needs SDPA or eager attention in the language model; "
                                               "it was switched to another implementation after enable(), so this "
                                               "call runs without the intra-LLM stage")

    def _video_spans(self, call: _Call, bound: dict, count: int, embeds: Any) -> Optional[List[List[torch.Tensor]]]:
        """Per row, one tensor per video of its positions in `embeds` (llava's padded `inputs_embeds`), laid out by
        llava's rules (module docstring); None (with a one-time warning) when the layout cannot be known."""
        if len(call.videos) < count:
            self.state.warn_once("intra-images", "intra_llm_layer: a call with still images next to its videos runs "
                                                 "without the intra-LLM stage (llava decides the images' token "
                                                 "counts elsewhere)")
            return None
        ids, mask = bound["input_ids"], bound.get("attention_mask")
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or any(v.before == 0 for v in call.videos):
            self.state.warn_once("intra-layout", "intra_llm_layer: llava's inputs_embeds of this call are not laid "
                                                 "out as expected, so it runs without the intra-LLM stage")
            return None
        limit = getattr(self.model.config, "tokenizer_model_max_length", None)
        left = getattr(self.model.config, "tokenizer_padding_side", "right") == "left"
        width = int(embeds.shape[1])
        per_row: List[List[Tuple[int, int]]] = []
        lengths: List[int] = []
        queue = list(call.videos)
        for b in range(ids.shape[0]):
            row = ids[b] if mask is None else ids[b][mask[b].bool()]
            holes = (row == IMAGE_TOKEN_INDEX).nonzero(as_tuple=True)[0].tolist()
            pos, spans = 0, []
            if not holes:  # llava takes an image for this row and inserts none of its tokens
                queue = queue[1:]
            for j, hole in enumerate(holes):
                text = hole - (holes[j - 1] + 1 if j else 0)
                pos += text
                video = queue.pop(0) if queue else None
                size = video.after if video is not None else 0
                spans.append((pos, size))
                pos += size
            pos += int(row.numel()) - (holes[-1] + 1 if holes else 0)
            lengths.append(pos if limit is None else min(pos, int(limit)))
            per_row.append(spans)
        if max(lengths, default=0) != width:
            self.state.warn_once("intra-layout", "intra_llm_layer: llava's inputs_embeds of this call are not laid "
                                                 "out as expected, so it runs without the intra-LLM stage")
            return None
        result = []
        for spans, length in zip(per_row, lengths):
            offset = width - length if left else 0
            result.append([torch.arange(offset + start, offset + min(start + size, length), device=embeds.device)
                           for start, size in spans if min(start + size, length) > start])
        return result

    def _encode_images(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        call = self._call
        if call is None or not call.need_saliency or call.encoded:
            return original(*args, **kwargs)
        call.encoded = True
        with self.hooks.transient("saliency") as cap:
            self._saliency_hooks(cap, call.store)
            out = original(*args, **kwargs)
        call.hook_seconds += cap.seconds
        return out

    def _saliency_hooks(self, cap: TransientHooks, store: dict) -> None:
        """Hooks on the tower's last remaining layer (whose output llava uses) that put (frames, patches) scores in
        `store["patch"]` (and, for the SigLIP head, per-frame embeddings in `store["frame"]`)."""
        layer = self._tower_layers()[-1]
        source = self.saliency_source_name()
        if source == "siglip_head":
            post_ln, head = self._head

            def head_hook(mod, args, output):
                out = output[0] if isinstance(output, tuple) else output
                store["patch"], store["frame"] = siglip_head_scores(post_ln, head, out)

            cap.post_hook(layer, head_hook)
            return

        add_qk_saliency_hooks(cap, layer.self_attn, store, source)

    def _get_2d_pool(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        out = original(*args, **kwargs)
        call = self._call
        if call is None or call.next_video >= len(call.videos):
            return out
        video = call.videos[call.next_video]
        call.next_video += 1
        t0 = time.perf_counter()
        feats_in = first_arg(args, kwargs, "image_feature")
        T, L, D = out.shape
        rows = int(math.isqrt(L))
        newlines = {"one_token": 1, "grid": T * rows, "none": 0}[call.newline]
        video.before = video.after = T * L + newlines
        video.kept = T * L
        if feats_in is None or feats_in.shape[0] != video.frames or rows * rows != L:
            video.note = (f"video {video.index} passed through unpruned: its pooled features "
                          f"{tuple(out.shape)} do not match the {video.frames} frames given")
            self.state.warn_once("mismatch", video.note)
            return out
        if not call.need_saliency:
            return out  # retention 1.0: llava's own tokens, untouched
        patch = call.store.get("patch")
        if patch is None or patch.shape[0] < video.start + T:
            video.note = f"video {video.index} passed through unpruned: the saliency hook saw no frames for it"
            self.state.warn_once("no-saliency", video.note)
            return out
        # the scores go through llava's own pooling call, so they land on exactly the features' grid
        patch = patch[video.start:video.start + T].to(out.device)
        saliency = original(patch[..., None]).squeeze(-1).float()
        sinks, note = self.sink_positions(L, PRESETS[call.pool])
        times = self.frame_times(video.index, T, call.timestamps)
        video.times = None if times is None else [float(x) for x in times]
        if times is None:
            self.state.warn_once("timestamps", MISSING_TIMES_NOTE)
            note = "; ".join(n for n in (note, "no frame times given (frame index used as time)") if n)
        frame_emb = None
        if self.config.segmentation == "fastvid":
            frame = call.store.get("frame")
            frame_emb = frame[video.start:video.start + T] if frame is not None else out.float().mean(1)
        tokens = VisualTokens(features=out, saliency=saliency, grid_hw=(rows, rows), timestamps=times,
                              frame_embeddings=frame_emb, sink_positions=sinks)
        plan = run_strategy(tokens, self.config)
        self.state.observe(PlanRecord(call=self.state.calls, kind="video", index=video.index, row=video.row, part=0,
                                      tokens=tokens, plan=plan))
        kept = plan.kept_indices.to(out.device)
        feats = plan.features.to(out.device, out.dtype)
        video.kept, video.done, video.note = int(kept.numel()), True, note
        if call.newline == "grid":
            seq = self._grid_layout(kept, feats, rows)
            call.pending[id(out)] = (out, seq)
            video.after = int(seq.shape[0])
            result = out
        else:
            video.after = video.kept + newlines
            result = feats[None]  # one (1, K, D) "frame": llava flattens it (and appends its one newline)
        video.seconds = time.perf_counter() - t0
        return result

    def _grid_layout(self, kept: torch.Tensor, feats: torch.Tensor, cols: int) -> torch.Tensor:
        """The kept tokens in order with the model's newline after the last kept token of every (frame, row)."""
        newline = self.model.get_model().image_newline.to(feats.device, feats.dtype)
        row = kept // cols
        last = torch.ones_like(kept, dtype=torch.bool)
        last[:-1] = row[1:] != row[:-1]
        order = torch.repeat_interleave(torch.arange(kept.numel(), device=kept.device), 1 + last.long())
        is_newline = torch.zeros_like(order, dtype=torch.bool)
        is_newline[1:] = order[1:] == order[:-1]
        table = torch.cat([feats, newline[None]])
        return table[torch.where(is_newline, torch.full_like(order, kept.numel()), order)]

    def _add_token_per_grid(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        call = self._call
        feats = first_arg(args, kwargs, "image_feature")
        if call is not None and id(feats) in call.pending and call.pending[id(feats)][0] is feats:
            return call.pending.pop(id(feats))[1]
        return original(*args, **kwargs)

    # ------------------------------------------------------------------------------------------- report
    def _report(self, call: _Call) -> None:
        shared = call.hook_seconds
        source = self.saliency_source_name() if call.need_saliency else "none"
        rows = []
        for b in range(call.batch):
            mine = [v for v in call.videos if v.row == b]
            before = sum(v.before for v in mine)
            after = sum(v.after for v in mine)
            notes = sorted({v.note for v in mine if v.note})
            if any(v.before == 0 for v in mine):  # get_2dPool never ran for it (llava took another path)
                notes.append("a video was not pooled by get_2dPool, so it was not pruned")
            rows.append(SampleReport(
                sample=b, videos=len(mine), video_indices=[i for i, v in enumerate(call.videos) if v.row == b],
                visual_tokens_before=before, visual_tokens_after=after,
                kept_by_strategy=sum(v.kept for v in mine), ratio_kept=(after / before) if before else 1.0,
                saliency_source=source if mine else "none",
                prune_seconds=sum(v.seconds for v in mine) + shared * len(mine) / max(1, len(call.videos)),
                pruned=bool(mine) and call.need_saliency and all(v.done for v in mine),
                note="; ".join(notes) if mine else "no video in this row",
                video_timestamps=[v.times for v in mine],
                timestamps_source=self.timestamps_source_of(call.timestamps)))
        if call.need_saliency and any(v.before == 0 for v in call.videos):
            self.state.warn_once("not-pooled", "a video of this call never reached get_2dPool, so it was not pruned")
        self.state.record(rows)


__all__ = ["LlavaNextAdapter", "LlavaIntraLLMStage", "video_layout", "load_siglip_head", "IMAGE_TOKEN_INDEX"]
