"""Adapter for Hugging Face GLM-4.1V-Thinking (`Glm4vForConditionalGeneration`, `model_type == "glm4v"`).

Written against the public adapter API (docs/adapters.md): `VideoSpliceAdapter` and its hooks, `TokenGrid`,
`EncodedMedia`, `Replacement`, and the Qwen-VL tower's saliency hook (`qwen_vl.add_frame_qk_saliency_hooks`: the same
vision-tower layout). What GLM-4V does differently from Qwen-VL:

- **Placeholders.** `Glm4vProcessor` writes every video frame as `<|begin_of_image|>` + image-token placeholders +
  `<|end_of_image|>` + its time as text, so video placeholders carry the *image* token id and only
  `mm_token_type_ids` (text 0, image 1, video 2) tells them from image placeholders. The adapter finds its
  placeholders with the `placeholder_mask` hook (`mm_token_type_ids == 2`, resp. 1, on image-token positions).
- **Features handed back.** The model's forward scatters image and video features into the same image-token
  positions (`get_placeholder_mask` returns one mask twice), so it cannot take an `image` and a `video` entry in
  one call; generate's beam / `num_return_sequences` expansion and chunked prefill also count video placeholders by
  `config.video_token_id`, which never occurs in the ids. The adapter therefore hands the model one
  `mm_encoder_outputs["image"]` entry per batch row holding all of the row's kept video features and its image
  features in placeholder order (images it does not prune are encoded by the adapter for that). A pruned batch
  may thus mix videos and images, which the stock model refuses.
- **Frames.** One frame is one temporal patch (2 sampled frames); its tokens are the vision tower's 2 x 2
  downsampled tokens in raster order. `get_rope_index` splits `video_grid_thw` into one grid per frame: each
  frame's positions start after the text before it. Kept tokens keep the positions the model's own
  `get_rope_index` gives them on the unpruned input (gathered, as for Qwen), and `rope_deltas` is set from the
  shortened sequence, so a frame that keeps no token at all changes nothing for the others or for decoding.
- **Saliency** ("global_query", "attention_received"): a pre-hook on `visual.blocks[-1].attn` recomputes q and k
  with the block's `qkv` and the vision RoPE; per frame, the mean query attends to keys averaged over each
  2 x 2 merge unit (the vision tower attends within a frame only).
- **Frame times.** The processor writes each frame's time into the prompt text only (`int(seconds)` of the first
  sampled frame of each temporal patch, `metadata.timestamps[::2]`); the model inputs carry none. Per call
  `tango_video_timestamps=` (seconds per sampled frame, per frame, or the video metadata), else the
  `video_timestamps=` option, else `fps=` (frame k at k / fps); each frame gets its first sampled frame's time, as
  the processor computes it (unrounded). Without any of them ST-RoPE uses the frame index, with a one-time warning.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from tango_plugin.model_zoo.qwen_vl import (
    check_frame_tower,
    encode_with_frame_saliency,
    one_time_per_patch,
    set_rope_deltas,
)

from tango_plugin.integration.adapter import CallInputs, EncodedMedia, Replacement, TokenGrid
from tango_plugin.integration.splice import SpliceCall, VideoSpliceAdapter

#: mm_token_type_ids values (Glm4vProcessor.create_mm_token_type_ids)
TEXT, IMAGE, VIDEO = 0, 1, 2


class Glm4vAdapter(VideoSpliceAdapter):
    """GLM-4.1V-Thinking (e.g. `zai-org/GLM-4.1V-9B-Thinking`). See the module docstring.

    Images pass through unpruned unless `prune_images=True`: then each image is one frame (T = 1) of its merged
    grid, scored and pruned like a video; kept image tokens keep their original 3-D positions.
    """

    saliency_sources = ("global_query", "attention_received")
    video_kwargs = ("pixel_values_videos", "video_grid_thw")
    image_kwargs = ("pixel_values", "image_grid_thw")
    supports_image_pruning = True
    uses_3d_positions = True

    missing_timestamps_note = ("no video timestamps: GLM-4V's processor puts the frame times into the prompt text "
                               "only, so the adapter cannot see them; ST-RoPE uses the frame index 0..T-1 as time; "
                               "pass fps= (frames per "
                               "second of the sampled frames) or video_timestamps= to tango.enable, or "
                               "tango_video_timestamps= (seconds, or the video metadata) to generate / forward")

    @classmethod
    def projector_modules(cls, model):
        visual = model.model.visual
        return [visual.downsample, visual.merger]

    @property
    def video_token_id(self) -> int:
        # the id video placeholders carry in input_ids (not config.video_token_id, which the processor never writes)
        return self.model.config.image_token_id

    def validate(self) -> None:
        super().validate()
        check_frame_tower(self)

    # ------------------------------------------------------------------------------------------- placeholders
    def _types(self, inputs: CallInputs) -> torch.Tensor:
        ids, types = inputs["input_ids"], inputs.get("mm_token_type_ids")
        if types is not None:
            return types.to(ids.device)
        # Without type ids the kinds can still be told apart when only one kind of grid came with the call.
        video, image = inputs.get("video_grid_thw") is not None, inputs.get("image_grid_thw") is not None
        if video and image:
            raise ValueError("GLM-4V writes video frames with the image token id, so with both images and videos "
                             "in a call the placeholders can only be told apart by mm_token_type_ids (text 0, image "
                             "1, video 2), which the processor returns next to input_ids; pass it to generate / "
                             "forward")
        self.state.warn_once("mm_token_type_ids", "mm_token_type_ids is missing; derived from the image token id "
                                                  "and the grids given (only one kind of media in this call)")
        return (ids == self.model.config.image_token_id).long() * (VIDEO if video else IMAGE)

    def placeholder_mask(self, inputs: CallInputs, kind: str) -> torch.Tensor:
        ids = inputs["input_ids"]
        wanted = VIDEO if kind == "video" else IMAGE
        return (ids == self.model.config.image_token_id) & (self._types(inputs) == wanted)

    # ------------------------------------------------------------------------------------------- encoding
    def encode_videos(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        return self._encode(inputs, need_saliency, image=False)

    def encode_images(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        return self._encode(inputs, need_saliency, image=True)

    def _encode(self, inputs: CallInputs, need_saliency: bool, image: bool) -> Tuple[List[EncodedMedia], Any, float]:
        out, _, grids, merged, seconds = encode_with_frame_saliency(self, inputs, need_saliency, image)
        ms = self.inner.visual.spatial_merge_size  # the same tower layout as Qwen's
        sal = torch.split(merged, [t * h * w // ms**2 for t, h, w in grids]) if need_saliency else None

        media = []
        for v, (t, h, w) in enumerate(grids):
            if image:  # a still image is one frame: its t folds into the token grid
                feats = out.pooler_output[v].reshape(1, t * (h // ms) * (w // ms), -1)
                grid_hw, ts = (t * (h // ms), w // ms), None
            else:
                feats = out.pooler_output[v].reshape(t, (h // ms) * (w // ms), -1)
                grid_hw = (h // ms, w // ms)
                ts = self.video_timestamps(v, t, inputs)
                if ts is None and need_saliency:
                    self.warn_missing_timestamps()
            scores = None if sal is None else sal[v].reshape(feats.shape[0], -1)
            embeddings = feats.float().mean(1) if self.config.segmentation == "fastvid" else None
            tokens = TokenGrid(features=feats, saliency=scores, grid_hw=grid_hw, timestamps=ts,
                               frame_embeddings=embeddings)
            media.append(EncodedMedia(grids=[tokens], num_placeholders=feats.shape[0] * feats.shape[1]))
        return media, out, seconds

    def video_timestamps(self, index: int, t: int, inputs: CallInputs) -> Optional[torch.Tensor]:
        """(t,) seconds per frame (temporal patch) of video `index`: its first sampled frame's time (the processor's
        `metadata.timestamps[::temporal_patch_size]`), from the given times (one per frame is used as given) or
        `fps`; None when nothing gives times."""
        tp = self.model.config.vision_config.temporal_patch_size
        frames = self._given_video_timestamps(index, inputs)
        if frames is not None:
            return frames if one_time_per_patch(frames, index, t, tp, ("frame", "frames")) else frames[::tp].clone()
        if self.options.get("fps") is not None:
            return torch.arange(t, dtype=torch.float64) * (tp / float(self.options["fps"]))
        return None

    # ------------------------------------------------------------------------------------------- replacements

    def encoder_outputs(self, raw: Any, videos: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        return type(raw)(pooler_output=tuple(r.features for r in replacements))

    def image_encoder_outputs(self, raw: Any, images: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        return self.encoder_outputs(raw, images, replacements)

    def splice(self, inputs: CallInputs, generating: bool) -> SpliceCall:
        """The shared pipeline, then one `mm_encoder_outputs["image"]` entry for all placeholders (see the module
        docstring: image and video placeholders share the image token id)."""
        call = super().splice(inputs, generating)
        new = call.new_kw
        mm = new["mm_encoder_outputs"]
        if new.get("pixel_values") is not None:  # images passed through: generate would encode them next to ours
            mm["image"] = self.inner.get_image_features(pixel_values=new.pop("pixel_values"),
                                                        image_grid_thw=new["image_grid_thw"], return_dict=True)
        video, image = mm.pop("video", None), mm.pop("image", None)
        if video is None and image is None:
            return call
        ids = new["input_ids"]
        types = new.get("mm_token_type_ids")
        if types is None:  # no images in the call (see _types): every placeholder is a video one
            types = (ids == self.model.config.image_token_id).long() * VIDEO
        slots = (ids == self.model.config.image_token_id) & (types != TEXT)
        if new.get("attention_mask") is not None:
            slots &= new["attention_mask"].bool()
        ref = video if video is not None else image
        kinds = types[slots]  # the kind of every placeholder, in the (row, position) order the model scatters in
        merged = ref.pooler_output[0].new_empty(int(kinds.numel()), ref.pooler_output[0].shape[-1])
        for kind, out in ((VIDEO, video), (IMAGE, image)):
            if out is not None:
                merged[kinds == kind] = torch.cat([f.reshape(-1, f.shape[-1]) for f in out.pooler_output]).to(merged)
        # one entry per row with placeholders (generate's beam expansion repeats entries row by row)
        counts = [int(c) for c in slots.sum(-1).tolist() if c]
        per_row = tuple(torch.split(merged, counts))
        mm["image"] = type(ref)(pooler_output=per_row)
        return call

    # ------------------------------------------------------------------------------------------- positions
    def full_position_ids(self, inputs: CallInputs, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> torch.Tensor:
        pos, _ = self.inner.get_rope_index(input_ids, mm_token_type_ids=self._types(inputs),
                                           image_grid_thw=inputs.get("image_grid_thw"),
                                           video_grid_thw=inputs.get("video_grid_thw"), attention_mask=attention_mask)
        return pos

    def after_splice(self, positions, attention_mask: torch.Tensor) -> None:
        set_rope_deltas(self.inner, positions, attention_mask)


__all__ = ["Glm4vAdapter"]
