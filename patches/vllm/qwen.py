"""Tango subclasses of vLLM's Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (model and multimodal processor).

Imported by vLLM's model registry when it loads one of these architectures (`register()` names the classes lazily);
it imports vLLM at module level. Without an enabled `tango` section every method is the parent's: the model runs as
stock vLLM.

With Tango on:

- the processor gives each video `video_token_count(T, L, r)` placeholders (T temporal patches, L merged tokens per
  patch). Qwen3-VL writes each patch's time as text between the patches' tokens; the count of each patch is only
  known after the decision, so, like vLLM's own pruning, the placeholders of the whole video (timestamps, vision
  start / end tokens and all K video tokens) are laid out once and replaced as one span, which the model fills with
  the real per-patch layout: each patch's timestamp text followed by the tokens kept from that patch;
- the model runs the vision tower once with the saliency capture and prunes each video with the configured
  strategy. Kept tokens keep the M-RoPE positions they have without pruning and the text after a media item starts
  where it would without pruning, as in the transformers adapters. The text positions are final when the request
  is added (`get_mrope_input_positions`: every media item advances the position as its unpruned form would); a
  media item's own rows are marked there and filled in by `recompute_mrope_positions` from the relative positions
  each embedding row carries (`common.encode_positions`), when the rows are computed. vLLM calls that recompute
  only on its pruning path, which the model switches on in its worker by setting its multimodal config's
  `video_pruning_rate` (read there only by this model; the processor in the front end counts with Tango's rule).
  Every media item, images included, carries its positions this way while Tango is on.

Why not vLLM's own recompute (`video_prune.evs.recompute_mrope_positions`): it finds a media item by searching for
`<|vision_start|>` tokens, which for Qwen3-VL with transformers >= 5.10 (an outer `<|vision_start|>` around the
per-frame ones) puts the item at a negative offset and fails, and it recomputes the text after an item only when the
item's rows are computed (not when they come from the prefix cache).
"""

from __future__ import annotations

import dataclasses
from typing import List

import torch
from tango_plugin.model_zoo.qwen_vl import engine_frame_times
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.model_executor.models.utils import _merge_multimodal_embeddings
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import (
    MultiModalFeatureSpec,
    MultiModalFieldConfig,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    PlaceholderRange,
)
from vllm.multimodal.processing import PromptReplacement

from .common import TangoModelMixin, TangoProcessorMixin, VideoFields, decode_positions, encode_positions, warn_once
from .settings import strip_knobs, video_token_count
from .vision import qwen_slice_scores, run_with_scores, tp_size_of

# ============================================================================================== processors


class _QwenProcessorMixin(TangoProcessorMixin):
    def _tango_video_tokens(self, out_item, ratio: float) -> int:
        t, h, w = (int(x) for x in out_item["video_grid_thw"].data)
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return video_token_count(t, (h // merge) * (w // merge), ratio)


class _Qwen2ProcessorMixin(_QwenProcessorMixin):
    """Qwen2-VL / Qwen2.5-VL: a video's placeholders are one run of video tokens."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = list(super()._get_prompt_updates(mm_items, strip_knobs(hf_processor_mm_kwargs), out_mm_kwargs))
        if self.tango_settings() is None:
            return updates
        video_token = self.info.get_hf_config().video_token_id

        def replacement(item_idx: int):
            out_item = out_mm_kwargs["video"][item_idx]
            ratio = self.tango_ratio_of(out_item)
            if ratio is None:
                ratio = self.tango_settings().config.retention_ratio
            return [video_token] * self._tango_video_tokens(out_item, ratio)

        return [u if u.modality != "video" else PromptReplacement(modality="video", target=u.target,
                                                                   replacement=replacement) for u in updates]


class TangoQwen2VLProcessor(_Qwen2ProcessorMixin, Qwen2VLMultiModalProcessor):
    tango_architecture = "Qwen2VLForConditionalGeneration"


class TangoQwen2_5_VLProcessor(_Qwen2ProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    tango_architecture = "Qwen2_5_VLForConditionalGeneration"


class TangoQwen3VLProcessor(_QwenProcessorMixin, Qwen3VLMultiModalProcessor):
    """Qwen3-VL: the video's span (timestamps and vision start / end of every patch, all K tokens in the first
    patch) is replaced as a whole; the model writes the real per-patch layout into it."""

    tango_architecture = "Qwen3VLForConditionalGeneration"

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = list(super()._get_prompt_updates(mm_items, strip_knobs(hf_processor_mm_kwargs), out_mm_kwargs))
        if self.tango_settings() is None:
            return updates
        hf_config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()

        def replacement(item_idx: int):
            out_item = out_mm_kwargs["video"][item_idx]
            ratio = self.tango_ratio_of(out_item)
            if ratio is None:
                ratio = self.tango_settings().config.retention_ratio
            timestamps = out_item["timestamps"].data
            frames = len(timestamps)
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=[self._tango_video_tokens(out_item, ratio)] + [0] * (frames - 1),
                timestamps=timestamps, tokenizer=tokenizer, vision_start_token_id=hf_config.vision_start_token_id,
                vision_end_token_id=hf_config.vision_end_token_id, video_token_id=hf_config.video_token_id,
                select_token_id=False)

        return [u if u.modality != "video" else PromptReplacement(modality="video", target=u.target,
                                                                   replacement=replacement) for u in updates]


# ============================================================================================== models


def _enable_runner_pruning(vllm_config, settings) -> None:
    """Switch on vLLM's pruning path (the model runner calls `recompute_mrope_positions`) for this model in this
    worker. The rate itself is read by nothing of Tango's: the processor and the model use the tango settings."""
    mm = vllm_config.model_config.multimodal_config
    mm.video_pruning_rate = min(max(1.0 - settings.config.retention_ratio, 1e-6), 0.999999)


def _feature(modality: str, grid, length: int, second_per_grid=None, timestamps=None) -> MultiModalFeatureSpec:
    """A one-item feature spec at offset 0 (what vLLM's position functions read)."""
    field = MultiModalFieldConfig.batched(modality).field
    data = {f"{modality}_grid_thw": MultiModalFieldElem(data=torch.as_tensor(list(grid)), field=field)}
    if second_per_grid is not None:
        data["second_per_grid_ts"] = MultiModalFieldElem(data=torch.tensor(float(second_per_grid)), field=field)
    if timestamps is not None:
        data["timestamps"] = MultiModalFieldElem(data=list(timestamps), field=field)
    return MultiModalFeatureSpec(data=MultiModalKwargsItem(data), modality=modality, identifier="tango",
                                 mm_position=PlaceholderRange(offset=0, length=length))


def _item_info(feature) -> tuple:
    """(modality, (t, h, w), second_per_grid or None, timestamps or None) of a request's media feature."""
    data, modality = feature.data, feature.modality
    grid = tuple(int(x) for x in data[f"{modality}_grid_thw"].data.tolist())
    seconds = data.get("second_per_grid_ts") if hasattr(data, "get") else None
    stamps = data.get("timestamps") if hasattr(data, "get") else None
    return (modality, grid, None if seconds is None else float(seconds.data.reshape(-1)[0]),
            None if stamps is None else list(stamps.data))


class _QwenModelMixin(TangoModelMixin):
    """Shared by the Qwen families: the video path with saliency, the positions of every media row."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        settings = self.tango_settings_from(vllm_config)
        if settings is not None:
            _enable_runner_pruning(vllm_config, settings)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.tango = settings
        if settings is not None:
            # vLLM asks for `supports_multimodal_pruning` on the instance: only a Tango-enabled model has it
            self.supports_multimodal_pruning = True
            self.is_multimodal_pruning_enabled = True
            self.tango_log_settings()

    def get_encoder_cudagraph_config(self):
        config = super().get_encoder_cudagraph_config()
        if self.tango is None:
            return config
        # the saliency capture and the pruning run in embed_multimodal, which the encoder CUDA graph path bypasses
        return dataclasses.replace(config, modalities=[])

    # --------------------------------------------------------------------------------------------- positions
    def _tango_unpruned(self, modality: str, grid, second_per_grid, timestamps) -> tuple:
        """(positions (3, n), token ids (n,) or None) of one media item's unpruned placeholder span, relative to
        its first row, as vLLM's own `get_mrope_input_positions` lays them out."""
        t, h, w = grid
        merge = self.config.vision_config.spatial_merge_size
        count = t * (h // merge) * (w // merge)
        token = self.config.image_token_id if modality == "image" else self.config.video_token_id
        spec = _feature(modality, grid, count, second_per_grid)
        positions, _ = super(_QwenModelMixin, self).get_mrope_input_positions([token] * count, [spec])
        return torch.as_tensor(positions)[:, :count].long(), None

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """Positions of a request's prompt: text final, each media row marked (-1, -1 - row, -1 - base) until
        `recompute_mrope_positions` fills it; a media item advances the position as its unpruned form would."""
        if self.tango is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        n = len(input_tokens)
        positions = torch.empty(3, n, dtype=torch.long)
        cursor, done = 0, 0
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            offset, length = feature.mm_position.offset, feature.mm_position.length
            positions[:, done:offset] = torch.arange(cursor, cursor + offset - done)
            cursor += offset - done
            unpruned, _ = self._tango_unpruned(*_item_info(feature))
            rows = torch.arange(length)
            positions[0, offset:offset + length] = -1
            positions[1, offset:offset + length] = -1 - rows
            positions[2, offset:offset + length] = -1 - cursor
            cursor += int(unpruned.max()) + 1
            done = offset + length
        positions[:, done:] = torch.arange(cursor, cursor + n - done)
        cursor += n - done
        return positions, cursor - n

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """Fill the marked rows of the media in this prefill chunk from the positions their embeddings carry."""
        if self.tango is None:
            return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions,
                                                     num_computed_tokens)
        positions = mrope_positions.clone()
        embeddings, cursor = [], int(num_computed_tokens)
        for mm in multimodal_embeddings:
            embeddings.append(mm[:, :-6])
            if mm.shape[0] == 0:
                continue
            relative = decode_positions(mm[:, -6:]).to(positions.device)
            marked = (positions[0, cursor:] == -1).nonzero()
            if marked.numel() == 0:
                raise RuntimeError("tango: a media embedding arrived for a prompt with no unfilled media rows")
            start = cursor + int(marked[0])
            base = -1 - positions[2, start]
            positions[:, start:start + mm.shape[0]] = relative + base
            cursor = start + mm.shape[0]
        delta = int(positions.max()) + 1 - positions.shape[1]
        return embeddings, positions, delta

    # ------------------------------------------------------------------------------------------------ vision
    def _tango_videos(self, video_input, fields: VideoFields) -> List[torch.Tensor]:
        """One row block per video: its rows' features followed by their encoded relative positions."""
        grids = [tuple(int(x) for x in g) for g in video_input["video_grid_thw"].tolist()]
        merge = self.visual.spatial_merge_size
        tp = self.config.vision_config.temporal_patch_size
        note = ""
        if video_input["type"] == "video_embeds":
            embeds, scores = self._process_video_input(video_input), None
            note = "video given as embeddings: no attention signal, tokens ranked by position"
            warn_once("embeds", note)
        else:
            block = self.visual.blocks[-1].attn
            source = self.tango_saliency_source()
            data_parallel, self.use_data_parallel = self.use_data_parallel, False
            if data_parallel:
                warn_once("dp", "mm_encoder_tp_mode='data': the vision tower runs unsharded on every rank while "
                                "Tango prunes (the saliency needs the whole tower's attention); docs/vllm.md")
            try:
                embeds, scores = run_with_scores(
                    block.attn, lambda: self._process_video_input(video_input),
                    lambda q, k: qwen_slice_scores(q, k, grids, merge * merge, source, tp_size_of(block)))
            finally:
                self.use_data_parallel = data_parallel
        seconds, stamps = video_input.get("second_per_grid_ts"), video_input.get("timestamps")
        out = []
        for v, ((t, h, w), emb) in enumerate(zip(grids, embeds)):
            rows, cols = h // merge, w // merge
            saliency = None
            if scores is not None:
                saliency = self._tango_raster_order(scores[v].reshape(-1), t, h, w).reshape(t, rows * cols)
            times, source = fields.frame_times(v), fields.source(v)
            if times is not None:
                try:
                    times = engine_frame_times(self.tango.family, times, t, tp)
                except ValueError as err:
                    warn_once("times-count", f"{err}; ST-RoPE uses the temporal-patch index")
                    times, source = None, "none: frame index (frame times did not match the video)"
            feats = emb[:, :self.visual_dim_of()].reshape(t, rows * cols, -1)
            plan = self.tango_decide(feats, saliency, (rows, cols), fields.ratio(v), times, source,
                                     saliency_note=note)
            unpruned, ids = self._tango_unpruned(
                "video", (t, h, w), None if seconds is None else float(seconds[v].reshape(-1)[0]),
                None if stamps is None else stamps[v])
            out.append(self._tango_video_rows(emb, plan, unpruned, ids))
        return out

    def visual_dim_of(self) -> int:
        return self.config.text_config.hidden_size

    def _tango_raster_order(self, flat: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """Scores of one video in the tower's token order -> raster order (Qwen2.5-VL's towers run in windows)."""
        if not hasattr(self.visual, "get_window_index_thw"):
            return flat
        window_index, _ = self.visual.get_window_index_thw(t, h, w)
        return flat[torch.argsort(window_index.to(flat.device))]

    def _tango_video_rows(self, emb, plan, unpruned, ids) -> torch.Tensor:
        kept = plan.kept_indices.to(unpruned.device)
        feats = plan.features.to(emb.device, emb.dtype)
        return torch.cat([feats, encode_positions(unpruned[:, kept].t(), emb.dtype).to(emb.device)], dim=1)

    def _tango_images(self, image_input) -> List[torch.Tensor]:
        """Images pass through unpruned, with their relative positions."""
        out = []
        for emb, grid in zip(self._process_image_input(image_input), image_input["image_grid_thw"].tolist()):
            unpruned, _ = self._tango_unpruned("image", tuple(int(x) for x in grid), None, None)
            out.append(torch.cat([emb, encode_positions(unpruned.t(), emb.dtype).to(emb.device)], dim=1))
        return out


# Qwen2-VL has no pruning path in vLLM: the instance flags set above and this class's positions give it one.
@MULTIMODAL_REGISTRY.register_processor(TangoQwen2VLProcessor, info=Qwen2VLProcessingInfo,
                                        dummy_inputs=Qwen2VLDummyInputsBuilder)
class TangoQwen2VLForConditionalGeneration(_QwenModelMixin, Qwen2VLForConditionalGeneration):
    tango_architecture = "Qwen2VLForConditionalGeneration"


@MULTIMODAL_REGISTRY.register_processor(TangoQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class TangoQwen2_5_VLForConditionalGeneration(_QwenModelMixin, Qwen2_5_VLForConditionalGeneration):
    tango_architecture = "Qwen2_5_VLForConditionalGeneration"


class _Qwen3ModelMixin(_QwenModelMixin):
    """Qwen3-VL: a video's span interleaves each patch's timestamp text with its tokens, and the visual rows carry
    the deepstack features after the main ones (pruned with the same indices, not merged, as in the transformers
    adapter)."""

    def visual_dim_of(self) -> int:
        return self.visual_dim

    def _tango_unpruned(self, modality: str, grid, second_per_grid, timestamps) -> tuple:
        if modality == "image":
            return super()._tango_unpruned(modality, grid, second_per_grid, timestamps)
        t, h, w = grid
        merge = self.config.vision_config.spatial_merge_size
        span = Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=[(h // merge) * (w // merge)] * t, timestamps=timestamps, tokenizer=self._tokenizer,
            vision_start_token_id=self.config.vision_start_token_id,
            vision_end_token_id=self.config.vision_end_token_id, video_token_id=self.config.video_token_id).full
        spec = _feature("video", grid, len(span), timestamps=timestamps)
        positions, _ = Qwen3VLForConditionalGeneration._get_mrope_input_positions(span, [spec], self.config)
        return torch.as_tensor(positions)[:, :len(span)].long(), torch.tensor(span)

    def _tango_video_rows(self, emb, plan, unpruned, ids) -> torch.Tensor:
        """The span's rows: each patch's timestamp text and vision start / end (text embeddings) around the tokens
        kept from that patch, in order, with the deepstack features of the video rows (zeros on text rows)."""
        kept = plan.kept_indices.to("cpu")
        is_video = ids == self.config.video_token_id
        video_rows = is_video.nonzero().flatten()
        rows = torch.sort(torch.cat([(~is_video).nonzero().flatten(), video_rows[kept]])).values
        span_ids = ids[rows].to(emb.device)
        on_video = span_ids == self.config.video_token_id
        visual = torch.cat([plan.features.to(emb.device, emb.dtype), emb[kept.to(emb.device), self.visual_dim:]],
                           dim=1)
        text = self.get_language_model().embed_input_ids(span_ids)
        if self.use_deepstack:
            deepstack, main = self._compute_deepstack_embeds(inputs_embeds=text, multimodal_embeddings=[visual],
                                                             is_multimodal=on_video)
            merged = _merge_multimodal_embeddings(inputs_embeds=text, multimodal_embeddings=main,
                                                  is_multimodal=on_video)
            merged = torch.cat([merged, deepstack.permute(1, 0, 2).reshape(merged.shape[0], -1)], dim=-1)
        else:
            merged = _merge_multimodal_embeddings(inputs_embeds=text, multimodal_embeddings=[visual],
                                                  is_multimodal=on_video)
        return torch.cat([merged, encode_positions(unpruned[:, rows].t(), merged.dtype).to(merged.device)], dim=1)


@MULTIMODAL_REGISTRY.register_processor(TangoQwen3VLProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class TangoQwen3VLForConditionalGeneration(_Qwen3ModelMixin, Qwen3VLForConditionalGeneration):
    tango_architecture = "Qwen3VLForConditionalGeneration"


class TangoQwen3VLMoeProcessor(TangoQwen3VLProcessor):
    tango_architecture = "Qwen3VLMoeForConditionalGeneration"


@MULTIMODAL_REGISTRY.register_processor(TangoQwen3VLMoeProcessor, info=Qwen3VLMoeProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class TangoQwen3VLMoeForConditionalGeneration(_Qwen3ModelMixin, Qwen3VLMoeForConditionalGeneration):
    tango_architecture = "Qwen3VLMoeForConditionalGeneration"


__all__ = ["TangoQwen2VLForConditionalGeneration", "TangoQwen2_5_VLForConditionalGeneration",
           "TangoQwen3VLForConditionalGeneration", "TangoQwen3VLMoeForConditionalGeneration"]
