"""Tango subclass of vLLM's LLaVA-OneVision (model and multimodal processor); LLaVA-Video-style checkpoints of the same
class with `tango_pool_mode="average"`.

vLLM has no pruning for this family. Positions are 1-D here, so pruning only has to size the placeholders: a video
gets `video_token_count(T, L, r)` kept tokens plus its one newline token (outside the budget, as in the transformers
adapter and the paper's code), and the model returns exactly those rows. The saliency is the `global_query` score of
the SigLIP feature layer's own q / k, pooled to the token grid the same way as the features (docs/algorithm.md
§1.2-§1.3), with the preset's attention-sink positions on the 14 x 14 (13 x 13 for LLaVA-Video) grid.

`tango_pool_mode="average"` (LLaVA-Video) pools each frame with a 2 x 2 average (13 x 13 tokens on a 384-pixel
tower) instead of vLLM's bilinear resize (14 x 14), in the count and in the model.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

from .common import TangoModelMixin, TangoProcessorMixin, VideoFields, warn_once
from .settings import strip_knobs, video_token_count
from .vision import frame_scores, run_with_scores, tp_size_of

ARCHITECTURE = "LlavaOnevisionForConditionalGeneration"


def _grid_side(hf_config, pool_mode: str) -> int:
    side = hf_config.vision_config.image_size // hf_config.vision_config.patch_size
    return math.ceil(side / 2) if pool_mode == "bilinear" else side // 2


class TangoLlavaOnevisionProcessor(TangoProcessorMixin, LlavaOnevisionMultiModalProcessor):
    tango_architecture = ARCHITECTURE

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = list(super()._get_prompt_updates(mm_items, strip_knobs(hf_processor_mm_kwargs), out_mm_kwargs))
        settings = self.tango_settings()
        if settings is None:
            return updates
        hf_config = self.info.get_hf_config()
        side = _grid_side(hf_config, settings.pool_mode)

        def replacement(item_idx: int):
            out_item = out_mm_kwargs["video"][item_idx]
            ratio = self.tango_ratio_of(out_item)
            if ratio is None:
                ratio = settings.config.retention_ratio
            frames = mm_items["video"].get_num_frames(item_idx)
            return [hf_config.video_token_index] * (video_token_count(frames, side * side, ratio) + 1)  # + newline

        return [u if u.modality != "video" else PromptReplacement(modality="video", target=u.target,
                                                                   replacement=replacement) for u in updates]


@MULTIMODAL_REGISTRY.register_processor(TangoLlavaOnevisionProcessor, info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class TangoLlavaOnevisionForConditionalGeneration(TangoModelMixin, LlavaOnevisionForConditionalGeneration):
    tango_architecture = ARCHITECTURE

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        settings = self.tango_settings_from(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.tango = settings
        if settings is not None:
            self.tango_log_settings()

    def apply_pooling(self, image_features: torch.Tensor, stride: int = 2):
        if self.tango is None or self.tango.pool_mode == "bilinear":
            return super().apply_pooling(image_features, stride)
        n, patches, dim = image_features.shape
        side = math.isqrt(patches)
        grid = image_features.view(n, side, side, dim).permute(0, 3, 1, 2)
        return F.avg_pool2d(grid, stride).flatten(2).transpose(1, 2)

    def _process_video_pixels(self, inputs):
        if self.tango is None:
            return super()._process_video_pixels(inputs)
        raise AssertionError("tango: videos go through embed_multimodal")  # pragma: no cover

    def _tango_images(self, image_input) -> List[torch.Tensor]:
        return list(self._process_image_input(image_input))

    def _tango_videos(self, inputs, fields: VideoFields) -> List[torch.Tensor]:
        pixels = inputs["pixel_values_videos"]
        videos = list(pixels) if not isinstance(pixels, torch.Tensor) else list(pixels.unbind(0))
        frames = [int(v.shape[0]) for v in videos]
        layer = self.vision_tower.vision_model.encoder.layers[-1].self_attn
        source = self.tango_saliency_source()
        strategy = self.config.vision_feature_select_strategy

        def tower():
            return self.vision_tower(torch.cat(videos), feature_select_strategy=strategy)

        def scorer(q, k):
            return frame_scores(q, k, layer.num_heads_per_partition, source, tp_size_of(layer))

        patches, scores = run_with_scores(layer.attn, tower, scorer)
        if scores.shape[1] == patches.shape[1] + 1:  # "default" dropped the CLS token from the features
            scores = scores[:, 1:]
        feats = self.apply_pooling(self.multi_modal_projector(patches))
        saliency = self.apply_pooling(scores[..., None].float()).squeeze(-1)
        side = math.isqrt(feats.shape[1])
        preset_grid = 196 if self.tango.pool_mode == "bilinear" else 169
        out, start = [], 0
        for v, count in enumerate(frames):
            times, times_source = fields.frame_times(v), fields.source(v)
            if times is not None and times.numel() != count:
                warn_once("times-count", f"{times.numel()} frame times for a video of {count} frames; ST-RoPE "
                                         "uses the frame index")
                times, times_source = None, "none: frame index (frame times did not match the video)"
            video = feats[start:start + count]
            plan = self.tango_decide(video, saliency[start:start + count], (side, side), fields.ratio(v), times,
                                     times_source, preset_grid=preset_grid, extra_tokens=1)
            start += count
            kept = plan.features.to(video.device, video.dtype)
            out.append(torch.cat([kept, self.image_newline[None].to(kept.dtype)], dim=0))
        return out


__all__ = ["TangoLlavaOnevisionForConditionalGeneration"]
