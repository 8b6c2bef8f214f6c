"""Adapter for Hugging Face `LlavaOnevisionForConditionalGeneration` (LLaVA-OneVision, LLaVA-Video-style checkpoints).

Video path of the model (transformers 5.x): SigLIP tower -> feature layer -> projector -> `apply_pooling` (bilinear to
ceil(side / 2)) -> one `image_newline` per video. The adapter keeps that path and prunes the pooled tokens; the
newline stays outside the budget (docs/algorithm.md §4.6). Positions stay contiguous 1-D RoPE positions, as in the
reference.

Options (`tango_plugin.enable(model, cfg, **options)`):
    pool_mode: "bilinear" (default, what the HF model does) or "average" (LLaVA-Video: `avg_pool2d(2)`, floor).
    newline: "one_token" (default, one newline per video) or "grid" (LLaVA-Video: one newline after each row of a
        frame that kept at least one token).
    image_highres: with `prune_images=True`, "keep" (default: an image's high-res crops and their row newlines pass
        through) or "prune" (the stitched high-res grid is pruned too, as its own frame; see the class docstring).
    fps / video_timestamps: frame times for the temporal terms; without them frame t is at t seconds.

Image path (`prune_images=True`): `get_image_features` runs the tower on every anyres crop and `pack_image_features`
lays an image's placeholders out as the base crop's side x side grid (NOT pooled, no newline) followed by the tail:
the high-res crops stitched, unpadded (and bilinearly shrunk past `anyres_max_9`) with one newline after each row,
or, for an image without crops (`batch_num_images` > 1), a single newline. The base grid is pruned as one frame
(T=1, ceil(L * r) tokens); the tail is kept as the model packed it, or, with `image_highres="prune"`, its stitched
high-res grid is pruned as a second frame (scores laid out by the model's own `pack_image_features`).

Saliency sources: "global_query" (default; the feature layer's own q/k, docs/algorithm.md §1.3 applied to SigLIP,
pooled like the features, §1.2), "siglip_head" (the SigLIP attention-pooling head loaded from
`config.siglip_head_path`, the reference's signal, §1.1) and "attention_received". Images use the same hook,
unpooled, on the base crop (and on the high-res crops with `image_highres="prune"`).
"""

from __future__ import annotations

import math
import sys
from typing import Any, List, Tuple

import torch
import torch.nn.functional as F

from tango_plugin.engine.types import PrunePlan
from tango_plugin.integration.adapter import CallInputs, EncodedMedia, Replacement, TokenGrid
from tango_plugin.integration.hooks import TransientHooks
from tango_plugin.integration.splice import VideoSpliceAdapter

from .llava_onevision_options import HIGHRES_MODES, NEWLINE_MODES, POOL_MODES
from .siglip import load_siglip_head, siglip_head_scores
from .vision_towers import HFLlavaTower, add_qk_saliency_hooks


class LlavaOnevisionAdapter(HFLlavaTower, VideoSpliceAdapter):
    """Tango for `LlavaOnevisionForConditionalGeneration`: video inputs, and still images with `prune_images=True`.

    With `prune_images=True` each image's base-resolution grid (the first anyres crop, side x side tokens, not pooled)
    is pruned as one frame by the configured strategy and saliency hook, and the rest of the image's placeholders
    (the unpadded high-res crops with their row newlines, or the single newline of a crop-less image) reach the LLM
    unchanged. The high-res part is left alone because its rows end in newline tokens at fixed places and may have
    been unpadded and resized, so it is not a grid of the crops' own tokens; the base grid is. Preset sink positions
    are written for the pooled video grid, so on an image grid of another size they are skipped with a note. The
    `pool_mode` / `newline` options apply to videos only: images keep the model's own layout.

    `image_highres="prune"` also prunes the high-res part, as a second frame with its own ceil(L * r) budget: its
    grid is the stitched (unpadded, possibly resized) crops without the newlines, scored by the same hook on every
    crop and laid out by the model's own `pack_image_features`; a newline follows each row that kept a token, and no
    sink positions apply there (they name places in one crop's grid). Each crop's scores are a softmax over that
    crop only, so scores of different crops compare only as well as the crops' attention spreads do; that is why it
    is opt-in.
    """

    encoder_flag_names = ()  # the unpatched forward hands its encoder no output flags
    saliency_sources = ("global_query", "siglip_head", "attention_received")
    image_kwargs = ("pixel_values", "image_sizes", "batch_num_images")
    supports_image_pruning = True
    options_help = {
        **VideoSpliceAdapter.options_help,
        "pool_mode": "'bilinear' (HF LLaVA-OV, default) or 'average' (LLaVA-Video: avg_pool2d 2, floor)",
        "newline": "'one_token' (one newline per video, default) or 'grid' (one after each row that kept a token)",
        "image_highres": "prune_images: 'keep' (default; high-res crops pass through) or 'prune' (pruned as a frame)",
    }

    def __init__(self, model, config, state=None, **options) -> None:
        super().__init__(model, config, state, **options)
        self.pool_mode = self.options.get("pool_mode", "bilinear")
        self.newline = self.options.get("newline", "one_token")
        self.image_highres = self.options.get("image_highres", "keep")
        self._head = None

    # ------------------------------------------------------------------------------------------- settings
    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    @property
    def preset_name(self) -> str:  # type: ignore[override]
        return "llava-video" if self.pool_mode == "average" else "llava-onevision"

    @property
    def preset_grid_tokens(self) -> int:  # type: ignore[override]
        return 169 if self.pool_mode == "average" else 196  # the 13 x 13 / 14 x 14 grids of the 384 px models

    def grid_side(self) -> int:
        side = self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size
        return math.ceil(side / 2) if self.pool_mode == "bilinear" else side // 2

    def validate(self) -> None:
        super().validate()
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode={self.pool_mode!r} is not supported; allowed: {list(POOL_MODES)}")
        if self.newline not in NEWLINE_MODES:
            raise ValueError(f"newline={self.newline!r} is not supported; allowed: {list(NEWLINE_MODES)}")
        if self.image_highres not in HIGHRES_MODES:
            raise ValueError(f"image_highres={self.image_highres!r} is not supported; allowed: {list(HIGHRES_MODES)}")
        self._layer_index(self.model.config.vision_feature_layer)
        tokens = self.grid_side() ** 2
        if self.config.sink_positions is not None:
            self.sink_positions(tokens)  # explicit positions outside the grid -> ValueError now
        if self.saliency_source_name() == "siglip_head":
            path = self.config.siglip_head_path
            if not path:
                raise ValueError("saliency_source='siglip_head' needs siglip_head_path: a local SigLIP checkpoint "
                                 "folder with the attention-pooling head (the HF LLaVA-OV checkpoints do not contain "
                                 "it); or use saliency_source='global_query'")
            post_ln, head = load_siglip_head(path)
            width = self.model.config.vision_config.hidden_size
            if post_ln.normalized_shape[0] != width:
                raise ValueError(f"siglip_head_path={path!r}: head width {post_ln.normalized_shape[0]} does not match "
                                 f"the model's vision tower width {width}")
            self._head = (post_ln, head)

    def close(self) -> None:
        super().close()
        self._head = None

    # ------------------------------------------------------------------------------------------- encoding
    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, C) patch grid -> (N, L, C) pooled exactly like the features."""
        if self.pool_mode == "bilinear":
            return self.inner.apply_pooling(x)
        N, P, C = x.shape
        side = int(math.isqrt(P))
        g = x.transpose(1, 2).reshape(N, C, side, side)
        return F.avg_pool2d(g, 2).flatten(2).transpose(1, 2)

    def _saliency_hooks(self, cap: TransientHooks, feature_layer, store: dict, rows=None) -> None:
        """Hooks on the feature layer that put (crops, patches) scores in `store["patch"]` (and, for the SigLIP head,
        per-crop embeddings in `store["frame"]`); `rows` picks the crops to score (None: all)."""
        layer = self._tower_layers()[self._layer_index(feature_layer)]
        source = self.saliency_source_name()
        if source == "siglip_head":
            post_ln, head = self._head

            def head_hook(mod, args, output):
                out = output[0] if isinstance(output, tuple) else output
                if rows is not None:
                    out = out[rows.to(out.device)]
                store["patch"], store["frame"] = siglip_head_scores(post_ln, head, out)

            cap.post_hook(layer, head_hook)
            return

        add_qk_saliency_hooks(cap, layer.self_attn, store, source, rows)

    def _crops_per_image(self, inputs: CallInputs) -> List[int]:
        """Crops `get_image_features` feeds the tower per image (the base crop first), computed the way it does."""
        sizes = inputs["image_sizes"]
        per_sample = inputs.get("batch_num_images")
        patching = [True] * len(sizes) if per_sample is None else [int(n) == 1 for n in per_sample
                                                                    for _ in range(int(n))]
        count = sys.modules[type(self.inner).__module__].image_size_to_num_patches
        cfg = self.model.config
        return [count(image_size=size, grid_pinpoints=cfg.image_grid_pinpoints,
                      patch_size=cfg.vision_config.image_size) if patch else 1
                for size, patch in zip(sizes, patching)]

    def encode_images(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        pv = inputs["pixel_values"]
        feature_layer, strategy = self._feature_args(inputs)
        crops = self._crops_per_image(inputs)
        # the tower sees each image's crops back to back, base crop first (a 5-D input loses its padding crops)
        base_rows = [sum(crops[:i]) for i in range(len(crops))]
        highres = self.image_highres == "prune"
        aspect = inputs.get("vision_aspect_ratio") or self.model.config.vision_aspect_ratio
        store: dict = {}
        with self.hooks.transient("saliency") as cap:
            if need_saliency:
                self._saliency_hooks(cap, feature_layer, store, rows=None if highres else torch.tensor(base_rows))
            extra = {}
            if inputs.get("vision_aspect_ratio") is not None:
                # generate hands the caller's value to get_image_features (a plain forward drops it): honour it
                extra["vision_aspect_ratio"] = inputs["vision_aspect_ratio"]
            if inputs.get("batch_num_images") is not None:
                extra["batch_num_images"] = inputs["batch_num_images"]
            out = self.inner.get_image_features(pixel_values=pv, image_sizes=inputs["image_sizes"],
                                                vision_feature_layer=feature_layer,
                                                vision_feature_select_strategy=strategy, return_dict=True, **extra,
                                                **self.encoder_flags(inputs))
        packed = list(out.pooler_output)  # per image: base grid, then the tail (high-res rows + newlines)
        base_len = out.last_hidden_state.shape[1] - (1 if strategy == "default" else 0)
        side = math.isqrt(base_len)
        grid = (side, side) if side * side == base_len else (1, base_len)
        sal = None
        if need_saliency:
            sal = store["patch"][:, 1:] if strategy == "default" else store["patch"]
        images = []
        for i, feats in enumerate(packed):
            base = feats[:base_len][None]
            row = base_rows[i] if highres else i  # the base crop's row in the scored crops
            frame_emb = None
            if need_saliency and self.config.segmentation == "fastvid":
                frame_emb = store["frame"][row:row + 1] if "frame" in store else base.float().mean(1)
            grids = [TokenGrid(features=base, saliency=None if sal is None else sal[row:row + 1], grid_hw=grid,
                               frame_embeddings=frame_emb)]
            tail = feats[base_len:]
            if highres and need_saliency and crops[i] > 1:
                # the crops' scores laid out exactly like the features (stitched, unpadded, resized), no newlines
                per_crop = sal[base_rows[i]:base_rows[i] + crops[i], :, None]
                laid, _ = self.inner.pack_image_features([per_crop], inputs["image_sizes"][i:i + 1],
                                                         image_newline=None, vision_aspect_ratio=aspect)
                grids.append(self._highres_grid(tail, laid[0][base_len:, 0]))
            images.append(EncodedMedia(grids=grids, num_placeholders=int(feats.shape[0]), extra={"image_tail": tail}))
        return images, out, cap.seconds

    def image_encoder_outputs(self, raw: Any, images: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # forward concatenates the per-image tensors in order, as it does with pack_image_features' list
        return BaseModelOutputWithPooling(pooler_output=[r.features for r in replacements])

    def encode_videos(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        pv = inputs["pixel_values_videos"]
        num_videos, frames = pv.shape[:2]
        feature_layer, strategy = self._feature_args(inputs)
        store: dict = {}

        with self.hooks.transient("saliency") as cap:
            if need_saliency:
                self._saliency_hooks(cap, feature_layer, store)
            if self.pool_mode == "average":
                cap.post_hook(self.inner.multi_modal_projector, lambda m, a, o: store.__setitem__("proj", o))
            out = self.inner.get_video_features(pixel_values_videos=pv, vision_feature_layer=feature_layer,
                                                vision_feature_select_strategy=strategy, return_dict=True,
                                                **self.encoder_flags(inputs))
        pooled = out.pooler_output  # (videos, frames * L_model + 1, D), the newline last
        placeholders = pooled.shape[1]
        if self.pool_mode == "bilinear":
            feats = pooled[:, :-1].reshape(num_videos, frames, -1, pooled.shape[-1])
        else:
            feats = self._pool(store["proj"]).reshape(num_videos, frames, -1, pooled.shape[-1])
        newline = self.inner.image_newline.to(feats.device, feats.dtype)
        sal = None
        if need_saliency:
            patch = store["patch"]
            if strategy == "default":
                patch = patch[:, 1:]
            sal = self._pool(patch[..., None]).squeeze(-1).reshape(num_videos, frames, -1)
        side = int(math.isqrt(feats.shape[2]))
        videos = []
        for v in range(num_videos):
            frame_emb = None
            if need_saliency and self.config.segmentation == "fastvid":
                frame_emb = (store["frame"].reshape(num_videos, frames, -1)[v] if "frame" in store
                             else feats[v].float().mean(1))
            times = self.video_timestamps(v, frames, inputs)
            if times is None and need_saliency:
                self.warn_missing_timestamps()
            grid = TokenGrid(features=feats[v], saliency=None if sal is None else sal[v], grid_hw=(side, side),
                             timestamps=times, frame_embeddings=frame_emb)
            videos.append(EncodedMedia(grids=[grid], num_placeholders=placeholders, extra={"newline": newline}))
        return videos, out, cap.seconds

    # ------------------------------------------------------------------------------------------- splicing
    def _highres_grid(self, tail: torch.Tensor, saliency: torch.Tensor) -> TokenGrid:
        """The stitched high-res tokens of an image as one frame (`image_highres="prune"`): the tail is rows x
        (cols + 1) placeholders, every row ending in a newline; no sink positions apply there."""
        n = saliency.numel()
        rows = tail.shape[0] - n
        cols = n // rows
        tokens = tail.reshape(rows, cols + 1, -1)[:, :cols].reshape(1, n, -1)
        emb = tokens.float().mean(1) if self.config.segmentation == "fastvid" else None
        return TokenGrid(features=tokens, saliency=saliency[None].to(tokens.device), grid_hw=(rows, cols),
                         frame_embeddings=emb, apply_sinks=False)

    def build_replacement(self, media: EncodedMedia, plans: List[PrunePlan]) -> Replacement:
        video, plan = media.grids[0], plans[0]
        T, L, D = video.features.shape
        kept = plan.kept_indices.to(video.features.device)
        feats = plan.features.to(video.features.dtype)
        if "image_tail" in media.extra:
            # an image: the kept base tokens, then every tail placeholder (high-res rows and newlines) as packed
            tail = media.extra["image_tail"].to(feats.device, feats.dtype)
            if len(plans) > 1:
                return self._highres_replacement(media, plans[1], kept, feats, tail)
            src = torch.cat([kept, torch.arange(T * L, media.num_placeholders, device=kept.device)])
            return Replacement(src=src, features=torch.cat([feats, tail]), kept=int(kept.numel()))
        nl = media.extra["newline"][None]
        if self.newline == "one_token":
            # the newline takes the video's last placeholder slot, after every kept token
            src = torch.cat([kept, kept.new_tensor([media.num_placeholders - 1])])
            return Replacement(src=src, features=torch.cat([feats, nl]), kept=int(kept.numel()))
        # grid: a newline after the last kept token of every (frame, row) that kept something
        row = kept // video.grid_hw[1]
        last = torch.ones_like(kept, dtype=torch.bool)
        last[:-1] = row[1:] != row[:-1]
        reps = 1 + last.long()
        src = torch.repeat_interleave(kept, reps)
        order = torch.repeat_interleave(torch.arange(kept.numel(), device=kept.device), reps)
        is_nl = torch.zeros_like(src, dtype=torch.bool)
        is_nl[1:] = order[1:] == order[:-1]
        table = torch.cat([feats, nl])
        rows = torch.where(is_nl, torch.full_like(order, kept.numel()), order)
        return Replacement(src=src, features=table[rows], kept=int(kept.numel()))

    def _highres_replacement(self, image: EncodedMedia, plan: PrunePlan, kept: torch.Tensor, feats: torch.Tensor,
                             tail: torch.Tensor) -> Replacement:
        """Base tokens kept by the first plan, then the high-res grid as its plan kept it, a newline after each row
        that kept a token (`image_highres="prune"`)."""
        rows, cols = image.grids[1].grid_hw
        hr = plan.kept_indices.to(tail.device)
        row = hr // cols
        last = torch.ones_like(hr, dtype=torch.bool)
        last[:-1] = row[1:] != row[:-1]
        # placeholder slots: kept (r, c) at r * (cols + 1) + c, its row's newline at r * (cols + 1) + cols
        slot = row * (cols + 1) + hr % cols
        nl_slot = row[last] * (cols + 1) + cols
        order = torch.argsort(torch.cat([slot, nl_slot]))
        hr_src = torch.cat([slot, nl_slot])[order]
        hr_feats = torch.cat([plan.features.to(feats.dtype),
                              image.extra["image_tail"][cols].to(feats)[None].expand(nl_slot.numel(), -1)])[order]
        base_len = image.features.shape[1]
        return Replacement(src=torch.cat([kept, base_len + hr_src]), features=torch.cat([feats, hr_feats]),
                           kept=int(kept.numel() + hr.numel()))

    def encoder_outputs(self, raw: Any, videos: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # forward flattens (videos, tokens, D) to (tokens, D). The replacements have different lengths, so each kept
        # token is its own (1, D) entry: generate's expansion for beams / num_return_sequences groups entries by the
        # placeholder count of each batch row, which this layout always matches (rows [a, a, b, b] get
        # [A, A, B, B]); a single (1, all, D) entry would be repeated as a whole ([A, B, A, B]).
        return BaseModelOutputWithPooling(pooler_output=torch.cat([r.features for r in replacements])[:, None])


__all__ = ["LlavaOnevisionAdapter", "load_siglip_head"]
