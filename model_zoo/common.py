"""Shared machinery of the Hugging Face video adapters: prune at prefill by shortening the sequence.

Flow of one patched `generate` / `forward` call that carries video pixels (ENV-NOTES section 2.3):

1. run the model's own `get_video_features` once, with a saliency hook on the last ViT attention layer;
2. per video, build `VisualTokens` and ask the configured strategy for a `PrunePlan`;
3. per batch row, keep every text / image token and only the kept video placeholders (each row keeps its own
   count), re-pad the rows, and gather `attention_mask`, `labels`, `mm_token_type_ids` and position ids with
   the same indices (Qwen: the kept tokens' original 3-D M-RoPE positions from the model's `get_rope_index`);
4. call the original method with the shortened `input_ids` and `mm_encoder_outputs` holding the kept features.

`generate` then returns the caller's prompt ids followed by the new tokens, as the unpruned model would. Decoding is
untouched: the KV cache just holds fewer tokens.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from tango_plugin.adapters import ModelAdapter
from tango_plugin.api import SampleReport
from tango_plugin.strategies import PrunePlan, VisualTokens, prune


@dataclass
class EncodedVideo:
    """One video as the adapter sees it after the vision tower.

    Args:
        features: (T, L, D) visual tokens in LLM space.
        saliency: (T, L) scores, or None when no strategy call needs them (retention 1.0).
        grid_hw: (H, W) of one frame's token grid.
        num_placeholders: placeholder tokens this video occupies in the unpruned `input_ids`.
        timestamps: (T,) seconds, or None (the engine then uses 0..T-1).
        frame_embeddings: (T, D') per-frame embedding for `segmentation="fastvid"`.
        extra: adapter data carried to `build_block` (newline embedding, deepstack features, ...).
    """

    features: torch.Tensor
    saliency: Optional[torch.Tensor]
    grid_hw: Tuple[int, int]
    num_placeholders: int
    timestamps: Optional[torch.Tensor] = None
    frame_embeddings: Optional[torch.Tensor] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Block:
    """What replaces one video's placeholders.

    Args:
        src: non-decreasing indices into the video's placeholder positions; an index may repeat (a newline token
            inserted after a kept token reuses that token's slot: every slot holds the same video token id).
        features: (len(src), D) features, in `src` order.
        kept: tokens the strategy kept (without newlines).
        extra: adapter data for `encoder_outputs` (e.g. pruned deepstack features).
    """

    src: torch.Tensor
    features: torch.Tensor
    kept: int
    extra: Dict[str, Any] = field(default_factory=dict)


def identity_plan(video: EncodedVideo) -> PrunePlan:
    """Keep everything, features untouched (retention 1.0: the splice path runs, the strategy does not)."""
    T, L, D = video.features.shape
    return PrunePlan(kept_indices=torch.arange(T * L, device=video.features.device),
                     features=video.features.reshape(T * L, D))


class VideoSpliceAdapter(ModelAdapter):
    """Base of adapters that prune video tokens before the LLM by shortening the input sequence.

    Subclasses provide `encode_videos`, `build_block`, `encoder_outputs` and, for M-RoPE models,
    `full_position_ids`. Options common to all: `fps` (frames per second of the sampled frames, for timestamps)
    and `video_timestamps` (a list of (T,) second tensors, one per video, or one tensor for all videos).
    """

    #: kwargs that describe the video pixels; removed before calling the original method
    video_kwargs: Tuple[str, ...] = ("pixel_values_videos",)
    #: kwargs that describe image pixels; removed before calling the original method when images are pruned
    image_kwargs: Tuple[str, ...] = ("pixel_values",)
    #: True when the adapter implements `encode_images` / `image_encoder_outputs` (`prune_images=True`)
    supports_image_pruning: bool = False
    #: True for M-RoPE models whose kept tokens must keep their original 3-D positions
    uses_3d_positions: bool = False
    #: preset name for the sink positions (SPEC 1.4)
    preset_name: str = ""
    #: tokens per frame of the grid the preset's sink positions were written for (None: any grid)
    preset_grid_tokens: Optional[int] = None

    options_help = {
        "fps": "frames per second of the sampled frames; timestamps = frame index / fps (default: frame index)",
        "video_timestamps": "(T,) seconds per video (a tensor, or a list with one tensor per video)",
    }

    # ------------------------------------------------------------------------------------------ to override
    @property
    def video_token_id(self) -> int:
        raise NotImplementedError

    def encode_videos(self, kw: dict, need_saliency: bool) -> Tuple[List[EncodedVideo], Any, float]:
        """Run the vision tower on the call's videos. Returns (videos, raw encoder output, hook seconds)."""
        raise NotImplementedError

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def encode_images(self, kw: dict, need_saliency: bool) -> Tuple[List[EncodedVideo], Any, float]:
        """Run the vision tower on the call's images, each one an `EncodedVideo` with T=1 (`prune_images=True`)."""
        raise NotImplementedError

    def image_encoder_outputs(self, raw: Any, images: List[EncodedVideo], blocks: List[Block]) -> Any:
        """The `mm_encoder_outputs["image"]` object the model's forward expects, holding the blocks' features."""
        raise NotImplementedError

    def build_block(self, video: EncodedVideo, plan: PrunePlan) -> Block:
        """Default: the kept tokens only (Qwen). LLaVA adds newline tokens."""
        return Block(src=plan.kept_indices, features=plan.features, kept=int(plan.kept_indices.numel()))

    def encoder_outputs(self, raw: Any, videos: List[EncodedVideo], blocks: List[Block]) -> Any:
        """The `mm_encoder_outputs["video"]` object the model's forward expects, holding the blocks' features."""
        raise NotImplementedError

    def full_position_ids(self, kw: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(3, B, L) positions of the unpruned sequence (M-RoPE models only)."""
        raise NotImplementedError

    def after_splice(self, positions: Optional[torch.Tensor], attention_mask: torch.Tensor) -> None:
        """Hook for model state that depends on the shortened sequence (Qwen: `rope_deltas`)."""

    # ------------------------------------------------------------------------------------------ shared logic
    @property
    def inner(self):
        """The `...Model` under the `...ForConditionalGeneration` head (towers, projector, language model)."""
        return self.model.model

    def pad_token_id(self) -> int:
        for cfg in (self.model.generation_config, getattr(self.model.config, "text_config", None), self.model.config):
            pid = getattr(cfg, "pad_token_id", None) if cfg is not None else None
            if isinstance(pid, int):
                return pid
        return 0

    def sink_positions(self, tokens_per_frame: int) -> Tuple[Tuple[int, ...], str]:
        """Sink positions for a frame of `tokens_per_frame` tokens, and a note when the preset was not applied."""
        explicit = self.config.sink_positions
        if explicit is not None:
            bad = [p for p in explicit if p >= tokens_per_frame]
            if bad:
                raise ValueError(f"sink_positions {bad} are outside the {tokens_per_frame}-token frame grid of this "
                                 f"input ({type(self).__name__})")
            return tuple(explicit), ""
        if not self.preset_name:
            return (), ""
        from tango_plugin.presets import get_preset

        preset = tuple(get_preset(self.preset_name).get("sink_positions") or ())
        if not preset:
            return (), ""
        if self.preset_grid_tokens is not None and tokens_per_frame != self.preset_grid_tokens:
            note = (f"preset sink positions of {self.preset_name!r} are for a {self.preset_grid_tokens}-token grid; "
                    f"this input has {tokens_per_frame} tokens per frame, so no sink positions were applied")
            self.state.warn_once("sinks-" + str(tokens_per_frame), note)
            return (), note
        return preset, ""

    def given_timestamps(self, index: int, kw: dict) -> Optional[torch.Tensor]:
        """The seconds given for video `index` (per call first, then the `video_timestamps` option), flat float64."""
        given = kw.get("tango_video_timestamps")
        if given is None:
            given = self.options.get("video_timestamps")
        if given is None:
            return None
        ts = given[index] if isinstance(given, (list, tuple)) else given
        return torch.as_tensor(ts, dtype=torch.float64).flatten()  # float64, as the paper interpolates frame times

    def user_timestamps(self, index: int, num_frames: int, kw: dict) -> Optional[torch.Tensor]:
        """One time per frame from the per-call `tango_video_timestamps`, the `video_timestamps` or `fps` options."""
        ts = self.given_timestamps(index, kw)
        if ts is not None:
            if ts.numel() != num_frames:
                raise ValueError(f"video_timestamps for video {index} has {ts.numel()} values; the video has "
                                 f"{num_frames} frames")
            return ts
        fps = self.options.get("fps")
        if fps is not None:
            return torch.arange(num_frames, dtype=torch.float64) / float(fps)
        return None

    def validate(self) -> None:
        super().validate()
        fps = self.options.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
            raise ValueError(f"fps={fps!r} must be a positive number")
        from tango_plugin.strategies import get_strategy

        get_strategy(self.config.strategy)  # unknown strategy -> ValueError now, not at the first call
        if self.config.intra_llm_layer is not None:
            self._validate_intra_llm()

    # ------------------------------------------------------------------------------------------ intra-LLM stage
    _intra = None  # IntraLLMStage while installed

    def text_layers(self):
        """The language model's decoder layers (the intra-LLM stage hooks them)."""
        return self.inner.language_model.layers

    def min_intra_llm_layer(self) -> int:
        """Smallest allowed `intra_llm_layer` (Qwen3-VL: its deepstack adds visual features after early layers)."""
        return 1

    def _validate_intra_llm(self) -> None:
        from .intra_llm import SUPPORTED_IMPLEMENTATIONS

        k, depth = self.config.intra_llm_layer, len(self.text_layers())
        low = self.min_intra_llm_layer()
        if not low <= k < depth:
            raise ValueError(f"intra_llm_layer={k} does not fit this model: its language model has {depth} decoder "
                             f"layers, so allowed values are {low}..{depth - 1} (layer K-1 scores, layers K.. see the "
                             "reduced sequence)")
        impl = self.model.config.get_text_config()._attn_implementation
        if impl not in SUPPORTED_IMPLEMENTATIONS:
            raise ValueError(f"intra_llm_layer needs the language model on one of {list(SUPPORTED_IMPLEMENTATIONS)} "
                             f"attention; this model uses {impl!r} (load it with attn_implementation='sdpa')")

    def install(self) -> None:
        if self.config.intra_llm_layer is None:
            return
        from .intra_llm import IntraLLMStage

        self._intra = IntraLLMStage(self.text_layers(), self.config.intra_llm_layer, self.config.intra_llm_ratio,
                                    on_reduced=self._record_intra_llm)
        self._intra.install()

    def close(self) -> None:
        if self._intra is not None:
            self._intra.remove()
            self._intra = None

    def _intra_applies(self, kw: dict) -> bool:
        """The stage caches a shorter sequence in layers K..: only a dynamic cache allows per-layer lengths."""
        impl = kw.get("cache_implementation") or getattr(self.model.generation_config, "cache_implementation", None)
        cache = kw.get("past_key_values", kw.get("cache"))
        if impl not in (None, "dynamic") or (cache is not None and type(cache).__name__ != "DynamicCache"):
            what = impl if impl not in (None, "dynamic") else type(cache).__name__
            self.state.warn_once("intra-cache", f"intra_llm_layer needs a dynamic cache (layers K.. cache fewer "
                                                f"tokens); this generate call uses {what!r} and runs without it")
            return False
        return True

    def _record_intra_llm(self, visual_after: List[int]) -> None:
        for report, count in zip(self.state.last, visual_after):
            report.intra_llm_tokens_after = count

    @staticmethod
    def _as_kwargs(original: Callable, args: tuple, kwargs: dict) -> dict:
        if not args:
            return dict(kwargs)
        names = [p.name for p in inspect.signature(original).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        kw = dict(zip(names, args))
        kw.update(kwargs)
        return kw

    _depth = 0  # > 0 while our own call of the original method runs (its inner forward calls pass through)

    def _call_original(self, original: Callable, kw: dict) -> Any:
        self._depth += 1
        try:
            return original(**kw)
        finally:
            self._depth -= 1

    def forward(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        if self._depth:
            return original(*args, **kwargs)
        kw = self._as_kwargs(original, args, kwargs)
        if not self._should_prune(kw):
            return self._pass_through(original, kw)
        if self._intra is not None:
            self.state.warn_once("intra-forward", "intra_llm_layer is applied in generate only (forward returns one "
                                                  "logit row per input token); this forward call runs without it")
        new_kw, _ = self._splice(kw, generating=False)
        return self._call_original(original, new_kw)

    def generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        kw = self._as_kwargs(original, args, kwargs)
        if kw.get("inputs") is not None and kw.get("input_ids") is None:
            kw["input_ids"] = kw.pop("inputs")
        if not self._should_prune(kw):
            return self._pass_through(original, kw)
        prompt = kw["input_ids"]
        new_kw, short_len = self._splice(kw, generating=True)
        if self._intra is not None and self._intra_applies(kw) and not self._intra.arm(self._video_spans(new_kw)):
            self.state.warn_once("intra-impl", "intra_llm_layer needs SDPA or eager attention in the language model; "
                                               "it was switched to another implementation after enable(), so this "
                                               "call runs without the intra-LLM stage")
        try:
            out = self._call_original(original, new_kw)
        finally:
            if self._intra is not None:
                self._intra.disarm()
        # Give back what the unpruned model returns: the caller's prompt followed by the new tokens, so that
        # `out[:, inputs.input_ids.shape[1]:]` still slices the answer.
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        full = torch.cat([prompt.to(seqs.device), seqs[:, short_len:]], dim=1)
        if isinstance(out, torch.Tensor):
            return full
        out.sequences = full
        return out

    def _pass_through(self, original: Callable, kw: dict) -> Any:
        """Call the original unchanged, and say in the report that this call pruned nothing."""
        kw.pop("tango_video_timestamps", None)
        ids = kw.get("input_ids")
        batch = ids.shape[0] if isinstance(ids, torch.Tensor) else 1
        has_video = any(kw.get(k) is not None for k in self.video_kwargs)
        note = "video passed through unpruned (see the warning)" if has_video else "no video in this call"
        self.state.last = [SampleReport(sample=b, note=note) for b in range(batch)]
        return self._call_original(original, kw)

    def _should_prune(self, kw: dict) -> bool:
        has_video = any(kw.get(k) is not None for k in self.video_kwargs)
        has_image = any(kw.get(k) is not None for k in self.image_kwargs)
        if self.config.prune_images and self.supports_image_pruning and has_image:
            has_video = True  # images are pruned as single-frame videos: the same splice path
        elif self.config.prune_images and has_image:
            self.state.warn_once("images", f"prune_images=True but {type(self).__name__} prunes videos only; "
                                           "images are passed to the model unpruned")
        if not has_video:
            if kw.get("mm_encoder_outputs") and (kw["mm_encoder_outputs"] or {}).get("video") is not None:
                self.state.warn_once("precomputed", "video features were passed precomputed (mm_encoder_outputs); "
                                                    "they carry no saliency, so this call is not pruned")
            return False
        if kw.get("input_ids") is None:
            self.state.warn_once("embeds", "video inputs came with inputs_embeds instead of input_ids; the video "
                                           "placeholders cannot be located, so this call is not pruned")
            return False
        if kw.get("cache") is not None and kw["cache"].get_seq_length() > 0:
            self.state.warn_once("cache", "video inputs came with a non-empty cache; only the prefill of a fresh "
                                          "sequence is pruned, so this call is not pruned")
            return False
        return True

    def _padding_side(self, mask: torch.Tensor, generating: bool) -> str:
        if bool((mask[:, 0] == 0).any()):
            return "left"
        if bool((mask[:, -1] == 0).any()):
            return "right"
        # No padding in the input: generation needs left padding, a plain forward keeps each row at position 0.
        return "left" if generating else "right"

    def _splice(self, kw: dict, generating: bool) -> Tuple[dict, int]:
        ids: torch.Tensor = kw["input_ids"]
        B, L = ids.shape
        mask_in = kw.get("attention_mask")
        mask = mask_in if mask_in is not None else torch.ones_like(ids)
        real = mask.bool()
        r = float(self.config.retention_ratio)
        need_saliency = r < 1.0

        # Media items: the videos, then (prune_images=True) each image as a single-frame video. Every item is
        # located by its own placeholder id, pruned by the strategy and spliced the same way.
        videos, raw, hook_seconds = ([], None, 0.0)
        if any(kw.get(k) is not None for k in self.video_kwargs):
            videos, raw, hook_seconds = self.encode_videos(kw, need_saliency)
        images, raw_img = [], None
        prune_images = (self.config.prune_images and self.supports_image_pruning
                        and any(kw.get(k) is not None for k in self.image_kwargs))
        if prune_images:
            images, raw_img, img_seconds = self.encode_images(kw, need_saliency)
            hook_seconds += img_seconds
        t_start = time.perf_counter()
        vid = (ids == self.video_token_id) & real
        pruned_slots = vid | ((ids == self.image_token_id) & real) if prune_images else vid
        items = videos + images
        is_image = [False] * len(videos) + [True] * len(images)
        counts = [v.num_placeholders for v in items]
        located = []
        for kind, token_id, group in (("video", self.video_token_id, videos), ("image", self.image_token_id, images)):
            if kind == "image" and not prune_images:
                continue
            rows, cols = ((ids == token_id) & real).nonzero(as_tuple=True)
            need = [v.num_placeholders for v in group]
            if sum(need) != rows.numel():
                raise ValueError(f"{kind.capitalize()} features and {kind} tokens do not match: the {kind}s need "
                                 f"{sum(need)} placeholder tokens ({need}), input_ids has {rows.numel()}")
            offset = 0
            for n in need:
                located.append((rows[offset:offset + n], cols[offset:offset + n]))
                offset += n

        row_of, positions, blocks, strat_seconds = [], [], [], []
        for i, (video, (r_i, p_i)) in enumerate(zip(items, located)):
            if bool((r_i != r_i[0]).any()):
                raise ValueError(f"the placeholder tokens of {'image' if is_image[i] else 'video'} {i} span several "
                                 "batch rows")
            row_of.append(int(r_i[0]))
            positions.append(p_i)
            t0 = time.perf_counter()
            if need_saliency:
                T, Lf, _ = video.features.shape
                sinks, note = self.sink_positions(Lf)
                if note:
                    video.extra.setdefault("notes", []).append(note)
                plan = prune(VisualTokens(features=video.features, saliency=video.saliency, grid_hw=video.grid_hw,
                                          timestamps=video.timestamps, frame_embeddings=video.frame_embeddings,
                                          sink_positions=sinks), self.config)
            else:
                plan = identity_plan(video)
            blocks.append(self.build_block(video, plan))
            strat_seconds.append(time.perf_counter() - t0)

        # Per row: all real non-video tokens plus the kept video slots, in original order.
        sources = []
        for b in range(B):
            parts = [(real[b] & ~pruned_slots[b]).nonzero(as_tuple=True)[0]]
            parts += [positions[i][blocks[i].src.to(positions[i].device)] for i in range(len(items))
                      if row_of[i] == b]
            sources.append(torch.sort(torch.cat(parts), stable=True).values)
        lengths = [int(s.numel()) for s in sources]
        Lmax = max(lengths)
        side = self._padding_side(mask, generating)

        def gather(t: Optional[torch.Tensor], pad_value: int) -> Optional[torch.Tensor]:
            if t is None:
                return None
            out = t.new_full((*t.shape[:-2], B, Lmax), pad_value)
            for b, s in enumerate(sources):
                sl = slice(Lmax - len(s), Lmax) if side == "left" else slice(0, len(s))
                out[..., b, sl] = t[..., b, s.to(t.device)]
            return out

        new = dict(kw)
        for k in self.video_kwargs:
            new.pop(k, None)
        if prune_images:
            for k in self.image_kwargs:
                new.pop(k, None)
        new.pop("tango_video_timestamps", None)
        new["input_ids"] = gather(ids, self.pad_token_id())
        new_mask = gather(mask, 0)
        if mask_in is None and len(set(lengths)) == 1:
            new.pop("attention_mask", None)  # as given: no mask
        else:
            new["attention_mask"] = new_mask
        if kw.get("labels") is not None:
            new["labels"] = gather(kw["labels"], -100)
        if kw.get("mm_token_type_ids") is not None:
            new["mm_token_type_ids"] = gather(kw["mm_token_type_ids"], 0)
        if kw.get("token_type_ids") is not None:
            new["token_type_ids"] = gather(kw["token_type_ids"], 0)

        pos = None
        if kw.get("position_ids") is not None:
            new["position_ids"] = pos = gather(kw["position_ids"], 0)
        elif self.uses_3d_positions:
            full = self.full_position_ids(kw, ids, mask)
            pos = gather(full, 0)
            if generating:
                # generate's own layout is [4, B, L]: row 0 = text positions of the (shortened) sequence, used for
                # the causal mask and continued by +1 per new token, like the unpruned path.
                text = (new_mask.long().cumsum(-1) - 1).masked_fill(new_mask == 0, 0)
                new["position_ids"] = torch.cat([text[None].to(pos.device), pos], dim=0)
            else:
                new["position_ids"] = pos
        if self.uses_3d_positions:
            self.after_splice(pos[-3:] if pos is not None and pos.dim() == 3 else None, new_mask)

        mm = dict(kw.get("mm_encoder_outputs") or {})
        if videos:
            mm["video"] = self.encoder_outputs(raw, videos, blocks[:len(videos)])
        if prune_images:
            mm["image"] = self.image_encoder_outputs(raw_img, images, blocks[len(videos):])
        if not generating and new.get("pixel_values") is not None and mm.get("image") is None:
            # forward refuses pixels next to mm_encoder_outputs, so encode the images here the way generate does
            # (generate encodes them itself before its first forward call).
            fn = self.inner.get_image_features
            names = [p for p in inspect.signature(fn).parameters if p != "kwargs" and p in new]
            mm["image"] = fn(**{p: new[p] for p in names}, return_dict=True)
            new.pop("pixel_values")
        new["mm_encoder_outputs"] = mm

        # Report: per row, what went in and what came out.
        splice_seconds = time.perf_counter() - t_start - sum(strat_seconds)
        shared = hook_seconds + splice_seconds
        reports = []
        source_name = self.saliency_source_name() if need_saliency else "none"
        for b in range(B):
            everything = [i for i in range(len(items)) if row_of[i] == b]
            mine = [i for i in everything if not is_image[i]]
            pics = [i for i in everything if is_image[i]]
            before = sum(counts[i] for i in mine)
            after = sum(int(blocks[i].src.numel()) for i in mine)
            notes = sorted({n for i in everything for n in items[i].extra.get("notes", [])})
            reports.append(SampleReport(
                sample=b, videos=len(mine), visual_tokens_before=before, visual_tokens_after=after,
                kept_by_strategy=sum(blocks[i].kept for i in mine),
                ratio_kept=(after / before) if before else 1.0, saliency_source=source_name if everything else "none",
                prune_seconds=sum(strat_seconds[i] for i in everything)
                + shared * len(everything) / max(1, len(items)),
                pruned=bool(everything) and need_saliency,
                note="; ".join(notes) if everything else "no video in this row",
                images=len(pics), image_tokens_before=sum(counts[i] for i in pics),
                image_tokens_after=sum(int(blocks[i].src.numel()) for i in pics)))
        self.state.record(reports)
        self._row_video_sizes = [[int(blocks[i].src.numel()) for i in range(len(items))
                                  if row_of[i] == b and not is_image[i]] for b in range(B)]
        return new, Lmax

    def _video_spans(self, new_kw: dict) -> List[List[torch.Tensor]]:
        """Per row, one tensor of positions per video in the shortened prompt (its block, newline tokens included)."""
        ids = new_kw["input_ids"]
        mask = new_kw.get("attention_mask")
        slots = ids == self.video_token_id
        if mask is not None:
            slots &= mask.bool()
        spans = []
        for b, sizes in enumerate(self._row_video_sizes):
            pos = slots[b].nonzero(as_tuple=True)[0]
            spans.append(list(torch.split(pos, sizes)) if sizes else [])
        return spans


__all__ = ["EncodedVideo", "Block", "VideoSpliceAdapter", "identity_plan"]
