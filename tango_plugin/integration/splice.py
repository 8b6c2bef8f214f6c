"""The splice pipeline shared by the Hugging Face video adapters: prune at prefill by shortening the sequence.

One patched `generate` / `forward` call that carries video pixels runs five named stages over one `SpliceCall`
(docs/architecture.md, "One prefill"):

1. `encode`: the model's own `get_video_features` (and, with `prune_images=True`, `get_image_features`) runs once,
   with transient saliency hooks on the vision tower; each video / image becomes an `EncodedMedia` of one or more
   `TokenGrid`s, and is matched to its placeholder tokens in `input_ids` (`MediaItem`);
2. `plan`: every grid goes through `run_strategy` (the only place a strategy is called) and the adapter turns the
   plans into a `Replacement` for the item's placeholders;
3. `layout`: per batch row, every text / image token plus the kept media slots, in order; the padding side;
   where each video ends up in the shortened row;
4. `rewrite`: `input_ids`, `attention_mask`, `labels`, `mm_token_type_ids`, position ids (M-RoPE: the kept tokens'
   original 3-D positions from the model's `get_rope_index`) gathered with the same indices, and
   `mm_encoder_outputs` holding the kept features;
5. `report`: one `SampleReport` per row into the handle's state.

`generate` then returns the caller's prompt ids followed by the new tokens, as the unpruned model would. Decoding is
untouched: the KV cache just holds fewer tokens.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..engine.types import PrunePlan, VisualTokens
from ..strategies import run_strategy
from .adapter import CallInputs, EncodedMedia, Replacement, TokenGrid, VideoSpliceContract
from .generation import Continuation, cache_of, continuation_of, continued_inputs, give_back, lengths_as_given
from .intra_llm import IntraLLMLifecycle, dynamic_cache_or_warn
from .report import PlanRecord, SampleReport
from .threads import serial


@dataclass
class MediaItem:
    """One video or image of the call, from encoding to its replacement.

    Args:
        kind: "video" or "image".
        index: position among the call's items of that kind.
        row: batch row holding its placeholders.
        slots: (num_placeholders,) positions of its placeholders in that row of the unpruned `input_ids`.
        media: the encoded item.
        plans: one `PrunePlan` per grid (stage `plan`).
        replacement: what replaces its placeholders (stage `plan`).
        notes: facts for the report (e.g. sink positions not applied).
        strategy_seconds: time of its strategy calls and replacement.
    """

    kind: str
    index: int
    row: int
    slots: torch.Tensor
    media: EncodedMedia
    plans: List[PrunePlan] = field(default_factory=list)
    replacement: Optional[Replacement] = None
    notes: List[str] = field(default_factory=list)
    strategy_seconds: float = 0.0


@dataclass
class SpliceCall:
    """The one result object the stages fill in, for one patched call.

    Args:
        inputs: the call's inputs (`CallInputs`: the model's keyword arguments, positional ones named, and the
            per-call frame times).
        generating: True for `generate` (left padding, generate's position-id layout).
        need_saliency: retention < 1 (at 1.0 the splice runs without the strategy: exact pass-through).
        prune_images: still images are pruned too on this call.
        items: videos, then images (stage `encode`).
        raw: the encoder outputs by kind ("video", "image"), as the model returned them.
        hook_seconds: time spent in the saliency hooks.
        sources: per row, the kept positions of the unpruned row in output order (stage `layout`).
        owners: per row, the item index (or -1 for text) of each entry of `sources`.
        padding_side: "left" or "right", the side rows are re-padded on.
        length: the shortened, re-padded prompt length.
        video_spans: per row, one tensor per video of its positions in the shortened row (newlines included).
        new_kw: the keyword arguments for the original method (stage `rewrite`).
    """

    inputs: CallInputs
    generating: bool
    need_saliency: bool
    prune_images: bool = False
    items: List[MediaItem] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict)
    hook_seconds: float = 0.0
    started: float = 0.0
    sources: List[torch.Tensor] = field(default_factory=list)
    owners: List[torch.Tensor] = field(default_factory=list)
    padding_side: str = "left"
    length: int = 0
    video_spans: List[List[torch.Tensor]] = field(default_factory=list)
    new_kw: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.inputs.input_ids.shape[0]


def _kept_rows(call: SpliceCall, t: Optional[torch.Tensor], pad_value: int) -> Optional[torch.Tensor]:
    """(..., B, L) -> (..., B, call.length): each row's kept positions (`call.sources`) in order, re-padded on
    `call.padding_side` with `pad_value`."""
    if t is None:
        return None
    B, length = len(call.sources), call.length
    out = t.new_full((*t.shape[:-2], B, length), pad_value)
    for b, s in enumerate(call.sources):
        sl = slice(length - len(s), length) if call.padding_side == "left" else slice(0, len(s))
        out[..., b, sl] = t[..., b, s.to(t.device)]
    return out


class VideoSpliceAdapter(IntraLLMLifecycle, VideoSpliceContract):
    """Base of adapters that prune video tokens before the LLM by shortening the input sequence: the five stages
    and the patched `forward` / `generate` around the family knowledge of `VideoSpliceContract` (adapter.py)."""

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

    def validate(self) -> None:
        super().validate()
        self.validate_intra_llm()

    # ------------------------------------------------------------------------------------------ intra-LLM stage
    def text_layers(self):
        return self.inner.language_model.layers

    def text_attention(self) -> Optional[str]:
        return self.model.config.get_text_config()._attn_implementation

    def install(self) -> None:
        self.install_intra_llm()

    def close(self) -> None:
        self.close_intra_llm()

    # ------------------------------------------------------------------------------------------ patched methods
    @staticmethod
    def _as_kwargs(original: Callable, args: tuple, kwargs: dict) -> dict:
        if not args:
            return dict(kwargs)
        names = [p.name for p in inspect.signature(original).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        kw = dict(zip(names, args))
        kw.update(kwargs)
        return kw

    def forward(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        if self._depth:
            return original(*args, **kwargs)
        kw = self._as_kwargs(original, args, kwargs)
        inputs = CallInputs(kw)
        if self.model.training and self._has(inputs, self.video_kwargs[:1]):
            self._check_trainable_call(inputs)
        if not self._should_prune(inputs):
            return self._pass_through(original, inputs)
        if self._intra is not None:
            self.state.warn_once("intra-forward", "intra_llm_layer is applied in generate only (forward returns one "
                                                  "logit row per input token); this forward call runs without it")
        call = self.splice(inputs, generating=False)
        return self._restore_encoder_outputs(self._call_original(original, call.new_kw), call)

    #: where the unpatched model's output puts each kind's encoder output (InternVL: video frames are images)
    encoder_output_fields = {"video": "video_outputs", "image": "image_outputs"}

    #: the call's flags the unpatched forward hands to its own encoder call (the LLaVA-style families hand none:
    #: their towers always return their hidden states)
    encoder_flag_names: Tuple[str, ...] = ("output_hidden_states", "output_attentions")

    def encoder_flags(self, inputs: CallInputs) -> dict:
        """The call's flags of `encoder_flag_names`, for the encoder call the splice makes."""
        return {k: inputs[k] for k in self.encoder_flag_names if inputs.get(k) is not None}

    def _restore_encoder_outputs(self, out: Any, call: SpliceCall) -> Any:
        """The model output's `video_outputs` / `image_outputs` as the unpatched forward returns them.

        The original ran on `mm_encoder_outputs` holding only the kept features (in the layout the model needs to
        splice them, e.g. one entry per token for LLaVA-OV), so its encoder outputs lack the tower's hidden states
        and attentions and may sit under another key (GLM-4.1V). What the caller gets instead: the encoder's own
        output of this call (its `last_hidden_state`, `hidden_states`, `attentions`: the tower saw every frame),
        with `pooler_output` the kept features per video / image (a tuple, one entry each), or exactly the
        encoder's output when nothing was pruned (retention 1.0). docs/usage.md, "Generate modes".
        """
        targets = {kind: self.encoder_output_fields[kind] for kind in ("video", "image") if kind in call.raw}
        for name in ("video_outputs", "image_outputs"):
            if hasattr(out, name) and name not in targets.values() and getattr(out, name, None) is not None:
                setattr(out, name, None)  # the video's features travelled under the other key (GLM-4.1V)
        for kind, name in targets.items():
            if not hasattr(out, name):
                continue
            raw = call.raw[kind]
            items = [it for it in call.items if it.kind == kind]
            pruned = any(it.replacement.features.shape[0] != it.media.num_placeholders for it in items)
            if not pruned:
                setattr(out, name, raw)
                continue
            restored = type(raw)(**{k: v for k, v in raw.items()})
            restored.pooler_output = tuple(it.replacement.features for it in items)
            if getattr(raw, "deepstack_features", None) is not None:
                restored.deepstack_features = [tuple(it.replacement.extra["deepstack"][layer] for it in items)
                                               for layer in range(len(items[0].replacement.extra["deepstack"]))]
            setattr(out, name, restored)
        return out

    def _check_trainable_call(self, inputs: CallInputs) -> None:
        """Refuse what a training forward (the model in `train()` mode) cannot do exactly (docs/training.md)."""
        if self._intra is not None:
            raise ValueError(
                f"intra_llm_layer={self.config.intra_llm_layer} applies in generate only, so a training forward "
                "would train on a sequence that inference never shows the model; enable Tango for training with "
                "cfg.replace(intra_llm_layer=None) (the pre-LLM pruning stays on) and the stage for inference only")
        cache = inputs.cache
        if cache is not None and (not hasattr(cache, "get_seq_length") or cache.get_seq_length() > 0):
            raise ValueError(
                "past_key_values holds a cache in a training forward (the model is in train() mode): the cached "
                "prefix was laid out by an earlier call and cannot be pruned again; train without a cache "
                "(past_key_values=None, use_cache=False), or call model.eval() for inference")

    def generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        if self._intra is not None:
            # the intra-LLM stage holds one call's reduction in its hooks: one generate at a time
            with serial(self._intra):
                return self._generate(original, args, kwargs)
        return self._generate(original, args, kwargs)

    def _generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        kw = self._as_kwargs(original, args, kwargs)
        if kw.get("inputs") is not None and kw.get("input_ids") is None:
            kw["input_ids"] = kw.pop("inputs")
        previous = continuation_of(kw)
        if previous is not None:
            return self._continue(original, kw, previous)
        inputs = CallInputs(kw)
        if not self._should_prune(inputs):
            return self._pass_through(original, inputs)
        prompt = inputs.input_ids
        lengths_as_given(kw, prompt.shape[1])  # max_length counts the caller's prompt, not the pruned one
        inputs = CallInputs(kw)
        # generate runs under no_grad; the splice must too, so the features handed to it carry no autograd history
        # (assisted decoding deep-copies them) and the vision tower's activations are freed at once
        with torch.no_grad():
            call = self.splice(inputs, generating=True)
        intra = self._intra is not None and dynamic_cache_or_warn(self.model, self.state, inputs)
        if intra and not self._intra.arm(call.video_spans):
            intra = False
            self.state.warn_once("intra-impl", "intra_llm_layer needs SDPA or eager attention in the language model; "
                                               "it was switched to another implementation after enable(), so this "
                                               "call runs without the intra-LLM stage")
        try:
            out = self._call_original(original, call.new_kw)
        finally:
            if self._intra is not None:
                self._intra.disarm()
        return give_back(out, prompt, call.length, call.new_kw.get("attention_mask"),
                         call.new_kw.get("mm_token_type_ids"), cache_of(call.new_kw), intra)

    def _continue(self, original: Callable, kw: dict, previous: Continuation) -> Any:
        """A `generate` continuing from the cache of a pruned one (generation.continued_inputs)."""
        ids = kw.get("input_ids")
        pruned_images = self.image_kwargs if self.config.prune_images and self.supports_image_pruning else ()
        brings_media = self._has(kw, self.video_kwargs[:1]) or self._prunes_images(kw)
        kw = continued_inputs(kw, previous, brings_media, self.video_kwargs + pruned_images)
        lengths_as_given(kw, ids.shape[1])
        self.state.last = [SampleReport(sample=b, note="continued from a pruned cache") for b in range(ids.shape[0])]
        out = self._call_original(original, kw)
        return give_back(out, ids, kw["input_ids"].shape[1], kw.get("attention_mask"), kw.get("mm_token_type_ids"),
                         cache_of(kw), False)

    def _pass_through(self, original: Callable, inputs: CallInputs) -> Any:
        """Call the original unchanged, and say in the report that this call pruned nothing."""
        ids = inputs.input_ids
        batch = ids.shape[0] if isinstance(ids, torch.Tensor) else 1
        note = "video passed through unpruned (see the warning)" if self._has(inputs, self.video_kwargs[:1]) \
            else "no video in this call"
        self.state.last = [SampleReport(sample=b, note=note) for b in range(batch)]
        return self._call_original(original, inputs.model_kwargs())

    @staticmethod
    def _has(inputs: Mapping, names: Tuple[str, ...]) -> bool:
        return any(inputs.get(k) is not None for k in names)

    def _prunes_images(self, inputs: CallInputs) -> bool:
        # the pixels: a grid or sizes alone (kept by a caller continuing from a cache) bring no image to prune
        return bool(self.config.prune_images and self.supports_image_pruning
                    and self._has(inputs, self.image_kwargs[:1]))

    def _should_prune(self, inputs: CallInputs) -> bool:
        # the pixels: a grid alone (e.g. while decoding) is no video
        has_video = self._has(inputs, self.video_kwargs[:1])
        if self._prunes_images(inputs):
            has_video = True  # images are pruned as single-frame videos: the same splice path
        elif self.config.prune_images and self._has(inputs, self.image_kwargs[:1]):
            self.state.warn_once("images", f"prune_images=True but {type(self).__name__} prunes videos only; "
                                           "images are passed to the model unpruned")
        if not has_video:
            if inputs.get("mm_encoder_outputs") and (inputs["mm_encoder_outputs"] or {}).get("video") is not None:
                self.state.warn_once("precomputed", "video features were passed precomputed (mm_encoder_outputs); "
                                                    "they carry no saliency, so this call is not pruned")
            return False
        if inputs.input_ids is None:
            self.state.warn_once("embeds", "video inputs came with inputs_embeds instead of input_ids; the video "
                                           "placeholders cannot be located, so this call is not pruned")
            return False
        cache = inputs.cache
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            self.state.warn_once("cache", "video inputs came with a non-empty cache; only the prefill of a fresh "
                                          "sequence is pruned, so this call is not pruned")
            return False
        return True

    # ------------------------------------------------------------------------------------------ the pipeline
    def splice(self, inputs: CallInputs, generating: bool) -> SpliceCall:
        """Run the five stages on one call and return the filled-in `SpliceCall` (`new_kw` is what to call with)."""
        call = SpliceCall(inputs=inputs, generating=generating, need_saliency=float(self.config.retention_ratio) < 1.0,
                          prune_images=self._prunes_images(inputs))
        self._stage_encode(call)
        self._stage_plan(call)
        self._stage_layout(call)
        self._stage_rewrite(call)
        self._stage_report(call)
        return call

    def _stage_encode(self, call: SpliceCall) -> None:
        """Stage 1: run the towers with the saliency hooks, then match every item to its placeholder tokens."""
        inputs = call.inputs
        groups = []
        if self._has(inputs, self.video_kwargs):
            videos, call.raw["video"], seconds = self.encode_videos(inputs, call.need_saliency)
            call.hook_seconds += seconds
            groups.append(("video", videos))
        if call.prune_images:
            images, call.raw["image"], seconds = self.encode_images(inputs, call.need_saliency)
            call.hook_seconds += seconds
            groups.append(("image", images))
        call.started = time.perf_counter()
        real = self._mask(inputs).bool()
        for kind, group in groups:
            rows, cols = (self.placeholder_mask(inputs, kind) & real).nonzero(as_tuple=True)
            need = [m.num_placeholders for m in group]
            if sum(need) != rows.numel():
                raise ValueError(f"{kind.capitalize()} features and {kind} tokens do not match: the {kind}s need "
                                 f"{sum(need)} placeholder tokens ({need}), input_ids has {rows.numel()}")
            offset = 0
            for i, (media, n) in enumerate(zip(group, need)):
                r = rows[offset:offset + n]
                if bool((r != r[0]).any()):
                    raise ValueError(f"the placeholder tokens of {kind} {i} span several batch rows")
                call.items.append(MediaItem(kind=kind, index=i, row=int(r[0]), slots=cols[offset:offset + n],
                                            media=media))
                offset += n

    def _stage_plan(self, call: SpliceCall) -> None:
        """Stage 2: one strategy call per grid (the only call site), then the item's replacement."""
        for item in call.items:
            t0 = time.perf_counter()
            for part, grid in enumerate(item.media.grids):
                if not call.need_saliency:
                    item.plans.append(PrunePlan.keep_all(grid.features))
                    continue
                sinks, note = self.sink_positions(grid.features.shape[1]) if grid.apply_sinks else ((), "")
                if note:
                    item.notes.append(note)
                tokens = VisualTokens(features=grid.features, saliency=grid.saliency, grid_hw=grid.grid_hw,
                                      timestamps=grid.timestamps, frame_embeddings=grid.frame_embeddings,
                                      sink_positions=sinks)
                plan = run_strategy(tokens, self.config)
                item.plans.append(plan)
                self.state.observe(PlanRecord(call=self.state.calls, kind=item.kind, index=item.index, row=item.row,
                                              part=part, tokens=tokens, plan=plan))
            item.replacement = self.build_replacement(item.media, item.plans)
            item.strategy_seconds = time.perf_counter() - t0

    def _stage_layout(self, call: SpliceCall) -> None:
        """Stage 3: per row, the unpruned positions that stay (in order) and where each video lands."""
        ids = call.inputs["input_ids"]
        real = self._mask(call.inputs).bool()
        # only the kinds that were encoded: a stray placeholder id of another kind stays, as the model keeps it
        replaced = torch.zeros_like(real)
        for kind in ("video", "image"):
            if kind in call.raw:
                replaced |= self.placeholder_mask(call.inputs, kind) & real
        padding = self._padding_columns(ids, real)
        for b in range(ids.shape[0]):
            # every column stays but the replaced placeholders and the padding (re-padded below); a masked column
            # that is not padding (a zero inside the prompt) stays with its mask, so retention 1.0 is exactly the
            # unpatched call whatever the mask
            text = (~replaced[b] & ~padding[b]).nonzero(as_tuple=True)[0]
            parts, owners = [text], [torch.full_like(text, -1)]
            for i, item in enumerate(call.items):
                if item.row == b:
                    pos = item.slots[item.replacement.src.to(item.slots.device)]
                    parts.append(pos)
                    owners.append(torch.full_like(pos, i))
            order = torch.sort(torch.cat(parts), stable=True)
            call.sources.append(order.values)
            call.owners.append(torch.cat(owners)[order.indices])
        call.length = max(int(s.numel()) for s in call.sources)
        call.padding_side = self._padding_side(self._mask(call.inputs), call.generating)
        for b, owner in enumerate(call.owners):
            offset = call.length - owner.numel() if call.padding_side == "left" else 0
            call.video_spans.append([(owner == i).nonzero(as_tuple=True)[0] + offset
                                     for i, item in enumerate(call.items) if item.row == b and item.kind == "video"])

    def _stage_rewrite(self, call: SpliceCall) -> None:
        """Stage 4: the shortened keyword arguments for the original method."""
        inputs = call.inputs
        mask = self._mask(inputs)
        new = inputs.model_kwargs()
        for k in self.video_kwargs + (self.image_kwargs if call.prune_images else ()):
            new.pop(k, None)
        new["input_ids"] = _kept_rows(call, inputs["input_ids"], self.pad_token_id())
        new_mask = _kept_rows(call, mask, 0)
        if inputs.get("attention_mask") is None and len({int(s.numel()) for s in call.sources}) == 1:
            new.pop("attention_mask", None)  # as given: no mask
        else:
            new["attention_mask"] = new_mask
        for name, pad in (("labels", -100), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
            if inputs.get(name) is not None:
                new[name] = _kept_rows(call, inputs[name], pad)
        if inputs.get("inputs_embeds") is not None:  # given next to input_ids: shortened the same way
            new["inputs_embeds"] = _kept_rows(call, inputs["inputs_embeds"].permute(2, 0, 1), 0).permute(1, 2, 0)
        self._rewrite_positions(call, new, mask, new_mask)
        new["mm_encoder_outputs"] = self._kept_encoder_outputs(call, new)
        call.new_kw = new

    def _rewrite_positions(self, call: SpliceCall, new: dict, mask: torch.Tensor, new_mask: torch.Tensor) -> None:
        """Position ids of the shortened rows: the given ones gathered, or (M-RoPE) the unpruned sequence's 3-D
        positions from the model's own rule gathered, so kept tokens keep their original positions."""
        inputs = call.inputs
        pos = None
        if inputs.get("position_ids") is not None:
            new["position_ids"] = pos = _kept_rows(call, inputs["position_ids"], 0)
        elif self.uses_3d_positions:
            pos = _kept_rows(call, self.full_position_ids(inputs, inputs["input_ids"], mask), 0)
            if call.generating:
                # generate's own layout is [4, B, L]: row 0 = text positions of the (shortened) sequence, used for
                # the causal mask and continued by +1 per new token, like the unpruned path.
                text = (new_mask.long().cumsum(-1) - 1).masked_fill(new_mask == 0, 0)
                new["position_ids"] = torch.cat([text[None].to(pos.device), pos], dim=0)
            else:
                new["position_ids"] = pos
        if self.uses_3d_positions:
            self.after_splice(pos[-3:] if pos is not None and pos.dim() == 3 else None, new_mask)

    def _kept_encoder_outputs(self, call: SpliceCall, new: dict) -> dict:
        """`mm_encoder_outputs` holding the kept features (in the layout the model splices them in)."""
        mm = dict(call.inputs.get("mm_encoder_outputs") or {})
        for kind, encode in (("video", self.encoder_outputs), ("image", self.image_encoder_outputs)):
            items = [it for it in call.items if it.kind == kind]
            if kind in call.raw:
                mm[kind] = encode(call.raw[kind], [it.media for it in items], [it.replacement for it in items])
        if not call.generating and new.get("pixel_values") is not None and mm.get("image") is None:
            # forward refuses pixels next to mm_encoder_outputs, so encode the images here the way generate does
            # (generate encodes them itself before its first forward call).
            fn = self.inner.get_image_features
            names = [p for p in inspect.signature(fn).parameters if p != "kwargs" and p in new]
            mm["image"] = fn(**{p: new[p] for p in names}, return_dict=True)
            new.pop("pixel_values")
        return mm

    def _stage_report(self, call: SpliceCall) -> None:
        """Stage 5: per row, what went in and what came out."""
        strategy_seconds = sum(it.strategy_seconds for it in call.items)
        splice = time.perf_counter() - call.started - strategy_seconds
        shared = call.hook_seconds + splice
        source = self.saliency_source_name() if call.need_saliency else "none"
        reports = []
        for b in range(call.batch_size):
            mine = [it for it in call.items if it.row == b]
            videos = [it for it in mine if it.kind == "video"]
            images = [it for it in mine if it.kind == "image"]
            before = sum(it.media.num_placeholders for it in videos)
            after = sum(int(it.replacement.src.numel()) for it in videos)
            notes = sorted({n for it in mine for n in it.notes})
            reports.append(SampleReport(
                sample=b, videos=len(videos), video_indices=[it.index for it in videos],
                visual_tokens_before=before, visual_tokens_after=after,
                kept_by_strategy=sum(it.replacement.kept for it in videos),
                ratio_kept=(after / before) if before else 1.0, saliency_source=source if mine else "none",
                prune_seconds=sum(it.strategy_seconds for it in mine) + shared * len(mine) / max(1, len(call.items)),
                saliency_seconds=call.hook_seconds * len(mine) / max(1, len(call.items)),
                strategy_seconds=sum(it.strategy_seconds for it in mine),
                splice_seconds=splice * len(mine) / max(1, len(call.items)),
                pruned=bool(mine) and call.need_saliency,
                note="; ".join(notes) if mine else "no video in this row",
                images=len(images), image_tokens_before=sum(it.media.num_placeholders for it in images),
                image_tokens_after=sum(int(it.replacement.src.numel()) for it in images),
                video_timestamps=[None if it.media.timestamps is None else it.media.timestamps.tolist()
                                  for it in videos],
                timestamps_source=self.timestamps_source(call.inputs) if videos else ""))
        self.state.record(reports)
        self.state.layout = {"padding_side": call.padding_side, "length": call.length,
                             "kept_positions": [s.clone() for s in call.sources]}

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _mask(inputs: CallInputs) -> torch.Tensor:
        mask = inputs.get("attention_mask")
        return mask if mask is not None else torch.ones_like(inputs["input_ids"])

    def _padding_columns(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, L) True on the padding: masked pad-token columns before a row's first or after its last attended
        column (what a tokenizer adds); masked columns elsewhere, or of other token ids, are the caller's."""
        idx = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        big = ids.shape[1]
        first = torch.where(real, idx, big).amin(dim=1, keepdim=True)
        last = torch.where(real, idx, -1).amax(dim=1, keepdim=True)
        return ~real & (ids == self.pad_token_id()) & ((idx < first) | (idx > last))

    @staticmethod
    def _padding_side(mask: torch.Tensor, generating: bool) -> str:
        if bool((mask[:, 0] == 0).any()):
            return "left"
        if bool((mask[:, -1] == 0).any()):
            return "right"
        # No padding in the input: generation needs left padding, a plain forward keeps each row at position 0.
        return "left" if generating else "right"


__all__ = ["TokenGrid", "EncodedMedia", "Replacement", "MediaItem", "SpliceCall", "VideoSpliceAdapter"]
