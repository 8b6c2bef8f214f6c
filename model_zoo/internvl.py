"""Adapter for Hugging Face InternVL3.x (`InternVLForConditionalGeneration`, `model_type == "internvl"`).

Written against the public adapter API (docs/adapters.md). What InternVL does differently:

- **Videos are image tiles.** `InternVLProcessor` merges every video frame into `pixel_values` as one tile, in prompt
  order next to the images' tiles, and writes per frame `Frame{i}: <img>` + `image_seq_length` `<IMG_CONTEXT>` +
  `</img>` (frames joined by a newline). The model sees image-context tokens only. An *image group* here is one run
  of `<IMG_CONTEXT>` tokens (one `<img>` ... `</img>`): an image (any number of tiles) or one video frame (exactly one
  tile). The adapter is told which groups are frames per call, `tango_video_frames=[...]` (one entry per visual item
  of the call in prompt order, row after row: 0 for an image, n for a video of its next n groups; a list without
  zeros whose sum is the number of groups means every group is a frame), or infers it from the prompt text when
  `tokenizer=` (a tokenizer or processor) is given to `enable` (or the model carries one as `model.tango_tokenizer`,
  as the tiny test recipe does; the per-call channel wins over both): a group is the first frame of a video when the
  text before its `<img>` ends with exactly `Frame1: `, frame k when the text between the previous frame's `</img>` and
  its `<img>` is exactly `\\nFrame{k}: `, and it is one tile long. Without either, nothing is pruned (a one-time
  warning).
- **One encoder-output entry.** Forward scatters `mm_encoder_outputs["image"].pooler_output` into every image-context
  token; the adapter hands it one `(N, 1, D)` tensor: each row's kept video tokens and its unpruned image tokens in
  placeholder order (one token per entry, so generate's beam expansion keeps each row's tokens).
- **Frames**: one tile = one frame, its token grid after the pixel shuffle (448 px / patch 14 / 0.5: 16 x 16).
  Positions are plain 1-D (Qwen2 LLM): the shortened prompt is numbered 0..n-1.
- **Saliency** ("global_query", "attention_received"): a pre-hook on the attention of the vision layer that outputs
  the selected feature (`vision_feature_layer`) recomputes q, k (`q_proj` / `k_proj` with `q_norm` / `k_norm`) on the
  frame tiles only; CLS dropped like the features, per-patch scores averaged over each pixel-shuffle block.
- **Frame times**: `tango_video_timestamps=` per call, `video_timestamps=` / `fps=` at enable (one-time warning
  without them). Images pass through unpruned.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

import torch
import torch.nn.functional as F

from tango_plugin.engine.saliency import score
from tango_plugin.integration.adapter import CallInputs, EncodedMedia, Replacement, TokenGrid
from tango_plugin.integration.hooks import first_arg
from tango_plugin.integration.splice import SpliceCall, VideoSpliceAdapter
from tango_plugin.integration.threads import per_thread

FRAMES_KW = "tango_video_frames"


def _int(v) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


class InternVLAdapter(VideoSpliceAdapter):
    """InternVL3.x (e.g. `OpenGVLab/InternVL3-1B-hf`). See the module docstring."""

    encoder_flag_names = ()  # the unpatched forward hands its encoder no output flags
    saliency_sources = ("global_query", "attention_received")
    video_kwargs = ("pixel_values",)
    image_kwargs = ("pixel_values",)
    supports_image_pruning = False
    options_help = {**VideoSpliceAdapter.options_help,
                    "tokenizer": "a tokenizer (or processor) to infer video frames from the 'FrameN: ' prompt text"}
    missing_timestamps_note = ("no video timestamps: InternVL's processor passes video frames as image tiles without "
                               "times; ST-RoPE uses the frame index 0..T-1 as time; pass fps= or video_timestamps= "
                               "to tango.enable, or tango_video_timestamps= to generate / forward")
    _frames_given = per_thread(None)  # this call's tango_video_frames (per thread: integration/threads.py)
    encoder_output_fields = {"video": "image_outputs", "image": "image_outputs"}  # frames are image tiles

    @classmethod
    def projector_modules(cls, model):
        return [model.model.multi_modal_projector]

    @property
    def video_token_id(self) -> int:
        return self.model.config.image_token_id

    def validate(self) -> None:
        super().validate()
        layers = self._layers()
        attn = getattr(layers[-1], "attention", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "num_heads", "head_dim")):
            raise ValueError(f"{type(self).__name__}: the vision layers have no attention.q_proj / k_proj")
        tok = self.options.get("tokenizer")
        if tok is not None and not hasattr(getattr(tok, "tokenizer", tok), "decode"):
            raise ValueError("tokenizer= must be a tokenizer or a processor with .tokenizer (it decodes the prompt "
                             "text to find the 'FrameN: ' video frames)")

    def _layers(self):
        return self.inner.vision_tower.encoder.layer

    def tokens_per_tile(self) -> int:
        cfg = self.model.config
        side = _int(cfg.vision_config.image_size) // _int(cfg.vision_config.patch_size)
        return int(round(side * cfg.downsample_ratio)) ** 2

    # ------------------------------------------------------------------------------------------- the call channel
    def forward(self, original, args, kwargs):
        if self._depth:
            return original(*args, **kwargs)
        kwargs = dict(kwargs)
        self._frames_given = kwargs.pop(FRAMES_KW, None)
        try:
            return super().forward(original, args, kwargs)
        finally:
            self._frames_given = None

    def generate(self, original, args, kwargs):
        kwargs = dict(kwargs)
        self._frames_given = kwargs.pop(FRAMES_KW, None)
        try:
            return super().generate(original, args, kwargs)
        finally:
            self._frames_given = None

    # ------------------------------------------------------------------------------------------- image groups
    def _groups(self, inputs: CallInputs) -> List[Tuple[int, int, int]]:
        """(row, start, end) of every run of image-context tokens, row after row."""
        ids = inputs["input_ids"]
        ph = (ids == self.model.config.image_token_id) & self._mask(inputs).bool()
        out = []
        for b in range(ids.shape[0]):
            pos = ph[b].nonzero(as_tuple=True)[0].tolist()
            start = prev = None
            for p in pos:
                if start is None:
                    start = prev = p
                elif p == prev + 1:
                    prev = p
                else:
                    out.append((b, start, prev + 1))
                    start = prev = p
            if start is not None:
                out.append((b, start, prev + 1))
        return out

    def _videos(self, inputs: CallInputs) -> List[List[int]]:
        """Group indices of each video's frames, in order (empty: no video in the call)."""
        groups = self._groups(inputs)
        n_tok = self.tokens_per_tile()
        given = self._frames_given
        if given is not None:
            if isinstance(given, torch.Tensor):
                given = given.tolist()
            if not isinstance(given, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                               and n >= 0 for n in given):
                raise ValueError(f"{FRAMES_KW} must be a list of non-negative ints (per visual item in prompt order: "
                                 f"0 for an image, n for a video of n frames); got {given!r}")
            items = list(given)
            if 0 not in items and sum(items) == len(groups):
                pass  # only videos
            elif sum(max(n, 1) for n in items) != len(groups):
                raise ValueError(f"{FRAMES_KW}={items} describes {sum(max(n, 1) for n in items)} image groups "
                                 f"(0: one image, n: n frames), but input_ids has {len(groups)} runs of image-context "
                                 "tokens")
            videos, g = [], 0
            for n in items:
                if n == 0:
                    g += 1
                    continue
                frames = list(range(g, g + n))
                for f in frames:
                    b, s, e = groups[f]
                    if e - s != n_tok:
                        raise ValueError(f"{FRAMES_KW}: image group {f} is a video frame but holds {e - s} "
                                         f"tokens; a frame is one tile ({n_tok} tokens)")
                if len({groups[f][0] for f in frames}) != 1:
                    raise ValueError(f"{FRAMES_KW}: the frames of video {len(videos)} span several batch rows")
                videos.append(frames)
                g += n
            return videos
        tok = self.options.get("tokenizer")
        if tok is None:
            tok = getattr(self.model, "tango_tokenizer", None)  # attached to the model (the tiny recipe does)
        if tok is None:
            if groups:
                self.state.warn_once("internvl-frames", "InternVL passes video frames as image tiles: pass "
                                     f"{FRAMES_KW}=[...] to generate / forward, or tokenizer= to tango.enable, to say "
                                     "which image groups are video frames; this call is not pruned")
            return []
        tok = getattr(tok, "tokenizer", tok)
        ids = inputs["input_ids"]
        real = self._mask(inputs).bool()
        videos, current, prev_end = [], None, {}
        for g, (b, s, e) in enumerate(groups):
            lo = prev_end.get(b)
            if lo is None:
                first_real = int(real[b].nonzero()[0])
                text = tok.decode(ids[b, first_real:s - 1].tolist())
            else:
                text = tok.decode(ids[b, lo + 1:s - 1].tolist())
            prev_end[b] = e
            one_tile = e - s == n_tok
            m = re.fullmatch(r"\nFrame(\d+): ", text) if current is not None else None
            if m and one_tile and groups[current[-1]][0] == b and int(m.group(1)) == len(current) + 1:
                current.append(g)
                continue
            if current is not None:
                videos.append(current)
                current = None
            if one_tile and text.endswith("Frame1: ") and not re.search(r"\dFrame1: $", text):
                current = [g]
        if current is not None:
            videos.append(current)
        return videos

    def _should_prune(self, inputs: CallInputs) -> bool:
        if not super()._should_prune(inputs):
            return False
        return bool(self._videos(inputs))

    def placeholder_mask(self, inputs: CallInputs, kind: str) -> torch.Tensor:
        ids = inputs["input_ids"]
        groups = self._groups(inputs)
        video = torch.zeros_like(ids, dtype=torch.bool)
        for frames in self._videos(inputs):
            for f in frames:
                b, s, e = groups[f]
                video[b, s:e] = True
        if kind == "video":
            return video
        return (ids == self.model.config.image_token_id) & ~video

    # ------------------------------------------------------------------------------------------- encoding
    def encode_videos(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        cfg = self.model.config
        groups = self._groups(inputs)
        videos_g = self._videos(inputs)
        # tile index of every group: groups are in pixel_values order; a group holds (length / tokens per tile) tiles
        n_tok = self.tokens_per_tile()
        first_tile, t = [], 0
        for b, s, e in groups:
            first_tile.append(t)
            t += (e - s) // n_tok
        frame_tiles = [[first_tile[g] for g in frames] for frames in videos_g]
        rows = torch.tensor([i for tiles in frame_tiles for i in tiles], dtype=torch.long)
        layer = inputs.get("vision_feature_layer")
        layer = cfg.vision_feature_layer if layer is None else layer
        strategy = inputs.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy
        n = len(self._layers())
        fl = layer[-1] if isinstance(layer, (list, tuple)) else layer
        hs_index = fl if fl >= 0 else n + 1 + fl
        if not 1 <= hs_index <= n:
            raise ValueError(f"vision_feature_layer={layer} selects the patch embeddings; the saliency needs an "
                             "attention layer")
        source = self.saliency_source_name()
        store: dict = {}

        def hook(mod, args, kwargs):
            hs = first_arg(args, kwargs, "hidden_states")[rows.to(first_arg(args, kwargs, "hidden_states").device)]
            m, p, _ = hs.shape
            q = mod.q_norm(mod.q_proj(hs)).reshape(m, p, mod.num_heads, mod.head_dim).transpose(1, 2)
            k = mod.k_norm(mod.k_proj(hs)).reshape(m, p, mod.num_heads, mod.head_dim).transpose(1, 2)
            store["patch"] = score(source, q, k)

        with self.hooks.transient("saliency") as cap:
            if need_saliency:
                cap.pre_hook(self._layers()[hs_index - 1].attention, hook)
            out = self.inner.get_image_features(pixel_values=inputs["pixel_values"], vision_feature_layer=layer,
                                                vision_feature_select_strategy=strategy, return_dict=True,
                                                **self.encoder_flags(inputs))
        feats_all = out.pooler_output  # (tiles, tokens per tile, D)
        L = feats_all.shape[1]
        side = int(round(L ** 0.5))
        sal = None
        if need_saliency:
            patch = store["patch"][:, 1:] if strategy == "default" else store["patch"]
            ps = int(round(patch.shape[1] ** 0.5))
            block = ps // side
            sal = F.avg_pool2d(patch.float().reshape(-1, 1, ps, ps), block, block).flatten(1)
        media, off = [], 0
        for v, tiles in enumerate(frame_tiles):
            feats = feats_all[torch.tensor(tiles, device=feats_all.device)]
            ts = self.video_timestamps(v, len(tiles), inputs)
            if ts is None and need_saliency:
                self.warn_missing_timestamps()
            scores = None if sal is None else sal[off:off + len(tiles)]
            off += len(tiles)
            grid = TokenGrid(features=feats, saliency=scores, grid_hw=(side, side), timestamps=ts,
                             frame_embeddings=feats.float().mean(1) if self.config.segmentation == "fastvid" else None)
            media.append(EncodedMedia(grids=[grid], num_placeholders=len(tiles) * L))
        return media, out, cap.seconds


    def encoder_outputs(self, raw: Any, videos: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        return replacements  # merged with the image tokens in `splice`

    def splice(self, inputs: CallInputs, generating: bool) -> SpliceCall:
        """The shared pipeline, then one `mm_encoder_outputs["image"]` entry for every image-context token left."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        call = super().splice(inputs, generating)
        mm = call.new_kw["mm_encoder_outputs"]
        mm.pop("video", None)
        ids = inputs["input_ids"]
        img = self.model.config.image_token_id
        flat = call.raw["video"].pooler_output.reshape(-1, call.raw["video"].pooler_output.shape[-1])
        ph = ids == img
        index = ph.flatten().long().cumsum(0).view_as(ids) - 1  # the model scatters features in this order
        pieces = []
        for b, src in enumerate(call.sources):
            src = src.to(ids.device)
            pos = src[ph[b, src]]
            rows = flat[index[b, pos].to(flat.device)].clone()
            for item in call.items:
                if item.row == b:
                    kept = item.slots[item.replacement.src.to(item.slots.device)].to(pos.device)
                    rows[torch.searchsorted(pos, kept).to(rows.device)] = item.replacement.features.to(rows)
            pieces.append(rows)
        merged = torch.cat(pieces)
        mm["image"] = BaseModelOutputWithPooling(pooler_output=merged[:, None])
        return call


__all__ = ["InternVLAdapter", "FRAMES_KW"]
