"""Adapter for Hugging Face `LlavaNextVideoForConditionalGeneration` (LLaVA-NeXT-Video, `model_type ==
"llava_next_video"`), written against the public adapter API (docs/adapters.md).

Video path of the model (transformers 5.x): every frame through the vision tower (CLIP) -> `vision_feature_layer`
(minus the CLS token with the "default" select strategy) -> `vision_resampler` (a `spatial_pool_stride` pooling,
average by default) -> projector; a video's placeholders are its frames' pooled tokens back to back, with no newline.
The adapter runs that path once, prunes the pooled tokens per frame and hands the kept ones back through
`mm_encoder_outputs["video"]`. Positions stay contiguous 1-D RoPE positions (the shortened prompt is numbered
0..n-1, as LLaVA-OV's are).

Saliency ("global_query" / "attention_received", docs/algorithm.md §1.3): a pre-hook on the feature layer's
attention recomputes q and k with its own projections; the per-patch scores (CLS dropped like the features) are
average-pooled on the same `spatial_pool_stride` grid as the features.

Images (LLaVA-NeXT anyres) pass through unpruned. Frame times: `fps=` / `video_timestamps=` (per call:
`tango_video_timestamps=`); without them frame t is at t seconds.
"""

from __future__ import annotations

import math
from typing import Any, List, Tuple

import torch
import torch.nn.functional as F

from tango_plugin.integration.adapter import CallInputs, EncodedMedia, Replacement, TokenGrid
from tango_plugin.integration.splice import VideoSpliceAdapter

from .vision_towers import HFLlavaTower, add_qk_saliency_hooks


class LlavaNextVideoAdapter(HFLlavaTower, VideoSpliceAdapter):
    """Tango for `LlavaNextVideoForConditionalGeneration`: prunes each frame's pooled tokens; images unchanged."""

    encoder_flag_names = ()  # the unpatched forward hands its encoder no output flags
    saliency_sources = ("global_query", "attention_received")
    video_kwargs = ("pixel_values_videos",)
    image_kwargs = ("pixel_values", "image_sizes")
    supports_image_pruning = False

    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    # ------------------------------------------------------------------------------------------- model layout
    def validate(self) -> None:
        super().validate()
        layer = self._tower_layers()[self._layer_index(self.model.config.vision_feature_layer)]
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "head_dim")):
            raise ValueError(f"{type(self).__name__}: the feature layer has no self_attn.q_proj / k_proj")

    # ------------------------------------------------------------------------------------------- encoding
    def _pool_scores(self, patch: torch.Tensor) -> torch.Tensor:
        """(N, P) per-patch scores -> (N, L) on the pooled grid (average over each stride x stride cell)."""
        n, p = patch.shape
        side = math.isqrt(p)
        stride = self.model.config.spatial_pool_stride
        return F.avg_pool2d(patch.float().reshape(n, 1, side, side), stride, stride).flatten(1)

    def encode_videos(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        pv = inputs["pixel_values_videos"]
        num_videos, frames = pv.shape[:2]
        feature_layer, strategy = self._feature_args(inputs)
        source = self.saliency_source_name()
        store: dict = {}

        with self.hooks.transient("saliency") as cap:
            if need_saliency:
                add_qk_saliency_hooks(cap, self._tower_layers()[self._layer_index(feature_layer)].self_attn, store,
                                      source)
            out = self.inner.get_video_features(pixel_values_videos=pv, vision_feature_layer=feature_layer,
                                                vision_feature_select_strategy=strategy, return_dict=True,
                                                **self.encoder_flags(inputs))
        pooled = out.pooler_output  # (videos, frames * L, D)
        feats = pooled.reshape(num_videos, frames, -1, pooled.shape[-1])
        L = feats.shape[2]
        side = math.isqrt(L)
        grid_hw = (side, side) if side * side == L else (1, L)
        sal = None
        if need_saliency:
            patch = store["patch"][:, 1:] if strategy == "default" else store["patch"]
            sal = self._pool_scores(patch).reshape(num_videos, frames, -1)
        videos = []
        for v in range(num_videos):
            times = self.video_timestamps(v, frames, inputs)
            if times is None and need_saliency:
                self.warn_missing_timestamps()
            grid = TokenGrid(features=feats[v], saliency=None if sal is None else sal[v], grid_hw=grid_hw,
                             timestamps=times,
                             frame_embeddings=feats[v].float().mean(1) if self.config.segmentation == "fastvid"
                             else None)
            videos.append(EncodedMedia(grids=[grid], num_placeholders=frames * L))
        return videos, out, cap.seconds


    def encoder_outputs(self, raw: Any, videos: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # forward flattens each entry and concatenates them in placeholder order. One (1, D) entry per kept token
        # (as for LLaVA-OV): generate's expansion for beams / num_return_sequences then keeps each row's tokens.
        return BaseModelOutputWithPooling(pooler_output=torch.cat([r.features for r in replacements])[:, None])


__all__ = ["LlavaNextVideoAdapter"]
