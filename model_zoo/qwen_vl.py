"""Adapters for Hugging Face Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`...ForConditionalGeneration`).

One "frame" is one temporal patch (`temporal_patch_size` input frames); its tokens are the merger outputs (2x2 patch
merge) in raster order. Kept tokens keep their original 3-D M-RoPE positions, computed by the model's own
`get_rope_index` on the unpruned input (docs/architecture.md, "Positions"), so text after the video sits where it
would without pruning.

Saliency ("global_query", docs/algorithm.md §1.3): a pre-hook on `visual.blocks[-1].attn` recomputes q and k with the
block's `qkv` projection and the vision RoPE; per temporal slice, the mean query attends to keys averaged over each
2x2 merge unit. Qwen2.5-VL's window order is undone with `argsort(window_index)`. Qwen3-VL's deepstack features are
pruned with the same indices as the main features.

Timestamps (seconds per temporal patch, for ST-RoPE), in this order: the per-call `tango_video_timestamps` or the
`video_timestamps` option; the `fps` option; Qwen2.5-VL's `second_per_grid_ts` (its processor returns it, so
Qwen2.5-VL needs no option); else the temporal-patch index 0..T-1, with a one-time warning naming `fps` /
`video_timestamps`. One value per temporal patch is used as given; one per sampled frame (an odd count included:
the processor repeats the last frame) is reduced to one per patch:

- Qwen2-VL / Qwen2.5-VL: as the paper's Qwen runs do, the frame times are interpolated at T evenly spaced points
  from the first to the last frame (`np.interp(linspace(0, n - 1, T), arange(n), times)`, in float64), so the first
  patch gets the first frame's time and the last patch the last frame's. `fps` means frame k at k / fps,
  `second_per_grid_ts` frame k at k * second_per_grid_ts / temporal_patch_size.
- Qwen3-VL: its processor writes each temporal patch's time into the prompt text ("<1.2 seconds>", the mean of the
  patch's first and last sampled frame index / the video's fps, from the video metadata) and returns nothing the
  model's forward receives, so the adapter cannot see those times. Give `fps=` (the rate of the sampled frames:
  frame k at k / fps) or `video_timestamps=` (per sampled frame, e.g. `frames_indices / metadata.fps`); each patch
  gets the mean of its first and last frame time, the processor's `_calculate_timestamps`.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

import torch

from tango_plugin.engine import scratch
from tango_plugin.engine.saliency import score
from tango_plugin.engine.types import PrunePlan
from tango_plugin.integration.adapter import CallInputs, EncodedMedia, Replacement, TokenGrid
from tango_plugin.integration.splice import VideoSpliceAdapter


def patch_times(frame_times: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Frame times (n,) linearly interpolated at `num_patches` evenly spaced points from the first to the last frame,
    in float64 (the paper's `np.interp(np.linspace(0, n - 1, T), np.arange(n), times)`)."""
    times = frame_times.detach().to("cpu", torch.float64).flatten()
    n = times.numel()
    if num_patches == 1 or n == 1:
        return times[:1].expand(num_patches).clone()
    # the same float64 operations as numpy's linspace and interp (so the same values as the paper's code)
    where = torch.arange(num_patches, dtype=torch.float64) * ((n - 1) / (num_patches - 1))
    left = where.floor().long().clamp(max=n - 2)
    out = (times[left + 1] - times[left]) * (where - left) + times[left]
    out[-1] = times[-1]  # linspace ends exactly on the last frame, where interp returns its time
    return out


def mean_patch_times(frame_times: torch.Tensor, num_patches: int, temporal_patch_size: int) -> torch.Tensor:
    """Qwen3-VL's per-patch times (its processor's `_calculate_timestamps`, the "<x.x seconds>" of the prompt): the
    last frame repeated up to num_patches * temporal_patch_size frames, then the mean of each patch's first and
    last frame time."""
    times = frame_times.detach().to("cpu", torch.float64).flatten()
    pad = num_patches * temporal_patch_size - times.numel()
    per = torch.cat([times, times[-1:].expand(pad)]).reshape(num_patches, temporal_patch_size)
    return (per[:, 0] + per[:, -1]) / 2


def engine_frame_times(family: str, frame_times: torch.Tensor, num_patches: int,
                       temporal_patch_size: int) -> torch.Tensor:
    """One time per temporal patch (what the engine sees as a frame) from the sampled frames' times: given as is
    when there is one per patch, else reduced by the family's rule (Qwen3-VL `mean_patch_times`, the others
    `patch_times`).

    Raises:
        ValueError: the count fits neither one per patch nor one per sampled frame.
    """
    n = frame_times.numel()
    if n == num_patches:
        return frame_times.detach().to("cpu", torch.float64).flatten()
    if -(-n // temporal_patch_size) != num_patches:
        raise ValueError(f"{n} frame times for a video of {num_patches} temporal patches of {temporal_patch_size} "
                         f"frames: give one time per patch ({num_patches}) or per sampled frame "
                         f"({num_patches * temporal_patch_size - temporal_patch_size + 1} to "
                         f"{num_patches * temporal_patch_size})")
    if family.startswith("qwen3"):
        return mean_patch_times(frame_times, num_patches, temporal_patch_size)
    return patch_times(frame_times, num_patches)


#: the one-time warning when Qwen2.5-VL's second_per_grid_ts equals its processor's default (no metadata given)
DEFAULT_FPS_NOTE = ("second_per_grid_ts is temporal_patch_size / 24: what the Qwen2.5-VL processor returns from its "
                    "24-fps default when it gets no video_metadata; if the frames were sampled at another rate the "
                    "frame times are wrong: pass the video metadata to the processor, or tango_video_timestamps= "
                    "(seconds, or the metadata: tango_plugin.timestamps_from_metadata) to generate")


#: the one-time warning when the frame times come from second_per_grid_ts (evenly spaced, not the sampled frames')
SECOND_PER_GRID_NOTE = ("frame times taken from second_per_grid_ts: evenly spaced at the processor's rate, which is "
                        "not when the sampled frames were taken unless the sampling was exactly uniform in time (e.g. "
                        "[0, 1.349, 2.697] s for frames at [0, 1.268, 2.569] s); pass tango_video_timestamps= (the "
                        "video metadata, or seconds) to generate / forward for the exact times")


def rotated_qk(qkv_out: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The q and k (n, heads, d) of a fused qkv projection's output (n, 3 * heads * d) rotated as the Qwen-VL / GLM-4V
    towers' `apply_rotary_pos_emb_vision` rotates them (in float32: ``x * cos + rotate_half(x) * sin``, then rounded
    to the tower's dtype), returned in float32 with those rounded values.

    That function makes fourteen fresh tensors of the tower's whole q and k (tens of MiB, each page faulted in on first
    touch: 4 to 16 ms of a 16-slice Qwen2-VL video on 2 cores); this makes the same values in seven passes over
    scratch buffers. ``rotate_half(x) * sin`` is ``x_swapped * (-s1, s2)`` (the halves swapped; negation is exact),
    so every value is the same float32 operation on the same operands (`rotation_matches` checks it against the
    family's own function). q and k stay token-major (token stride 2 * heads * d): the per-slice reductions that
    read them visit tokens, heads and channels in the same order as on the function's contiguous results. The views
    are scratch (engine/scratch.py): dead once the names are taken again.
    """
    n = qkv_out.shape[0]
    qk = qkv_out.view(n, 3, heads, -1)[:, :2]  # (n, 2, heads, d): q and k of each token
    shape, h = qk.shape, qk.shape[-1] // 2
    c, s = cos.float(), sin.float()
    signed_sin = torch.cat([-s[:, :h], s[:, h:]], dim=-1)[:, None, None, :]
    x = scratch.take("rotary.x", shape, torch.float32, qk.device).copy_(qk)  # x.float(): one dtype below
    swapped = scratch.take("rotary.swapped", shape, torch.float32, qk.device)
    swapped[..., :h] = x[..., h:]
    swapped[..., h:] = x[..., :h]
    out = torch.mul(x, c[:, None, None, :], out=scratch.take("rotary.qk", shape, torch.float32, qk.device))
    out.add_(swapped.mul_(signed_sin))
    if qkv_out.dtype != torch.float32:  # the tower's rounding, widened back (exact)
        out.copy_(scratch.take("rotary.rounded", shape, qkv_out.dtype, qk.device).copy_(out))
    return out[:, 0], out[:, 1]


_ROTATION_CHECKED: dict = {}


def rotation_matches(rotary: Any, dtype: torch.dtype) -> bool:
    """Whether `rotated_qk` gives `rotary`'s values bit for bit in `dtype` (checked once per function and dtype on
    random inputs; a family whose function differs keeps using it)."""
    key = (rotary, dtype)
    if key not in _ROTATION_CHECKED:
        g = torch.Generator().manual_seed(0)
        qkv = (torch.randn(37, 3 * 2 * 8, generator=g) * 4).to(dtype)
        angles = torch.randn(37, 4, generator=g).repeat(1, 2) * 30  # (a, a): the towers' cat of the same angles
        cos, sin = angles.cos(), angles.sin()
        q, k, _ = qkv.view(37, 3, 2, 8).permute(1, 0, 2, 3).unbind(0)
        with torch.no_grad(), scratch.session():
            try:
                expected = [t.float() for t in rotary(q, k, cos, sin)]
            except Exception:  # noqa: BLE001 - a function of another form: the hook calls it as the tower does
                expected = None
            got = rotated_qk(qkv, 2, cos, sin)
            _ROTATION_CHECKED[key] = expected is not None and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(expected, got))
    return _ROTATION_CHECKED[key]


def add_frame_qk_saliency_hooks(cap, attn, grids, source: str, merge: int, store: dict) -> None:
    """Hooks (on `cap`, a `TransientHooks`) that score, from the last block's attention of a Qwen-VL-style vision
    tower (fused `qkv`, 2-D rotary `position_embeddings`), each temporal slice's tokens with `source` from that
    layer's q / k, pooled over the `merge` patches of a merged token, into `store["merged"]` (one flat tensor, the
    tower's token order).

    The q / k are the tower's own: a pre-hook on the attention takes its rotary cos / sin, a hook on its `qkv`
    projection takes the projection's output (the attention calls it once), so the projection is not computed a
    second time; they are rotated by `rotated_qk` (or the family's own function, if that gives other values).
    Temporal slices are contiguous in the tower's order (window order permutes merge units inside a slice only) and
    attend within themselves, so each is scored on its own. GLM-4V's tower has the same layout.
    """
    rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision

    def take_rotary(mod, args, kwargs):
        store["rotary"] = kwargs["position_embeddings"]

    def score_qk(mod, args, output):
        cos, sin = store.pop("rotary")
        n = output.shape[0]
        with scratch.session():
            if rotation_matches(rotary, output.dtype):
                q, k = rotated_qk(output, attn.num_heads, cos, sin)
            else:
                q, k, _ = output.reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
                q, k = rotary(q, k, cos, sin)
            heads, d = q.shape[1], q.shape[2]
            parts, off = [], 0
            for t, h, w in grids:
                size = t * h * w
                qs = q[off:off + size].reshape(t, h * w, heads, d).transpose(1, 2)
                ks = k[off:off + size].reshape(t, h * w, heads, d).transpose(1, 2)
                parts.append(score(source, qs, ks, merge=merge).flatten())
                off += size
            store["merged"] = torch.cat(parts)

    cap.pre_hook(attn, take_rotary)
    cap.post_hook(attn.qkv, score_qk)


def set_rope_deltas(inner: Any, positions: Optional[torch.Tensor], attention_mask: torch.Tensor) -> None:
    """`inner.rope_deltas` from the kept tokens' (3, B, L) positions: a later forward(cache=...) without position
    ids, and a generate continuing from the cache, go on at max position + 1 of the shortened sequence (the one the
    cache holds)."""
    if positions is None:
        return
    real = attention_mask.bool().to(positions.device)
    top = positions.masked_fill(~real[None], -1).amax(dim=(0, 2))
    inner.rope_deltas = (top + 1 - real.sum(-1)).unsqueeze(1)


def one_time_per_patch(frames: torch.Tensor, index: int, t: int, tp: int, unit: Tuple[str, str]) -> bool:
    """Whether the times given for video `index` are one per `unit` (singular, plural; t of them, used as given);
    if not they must be one per sampled frame (the processor pads the sampled frames to a multiple of `tp` by
    repeating the last one: t * tp - tp + 1 to t * tp of them), else a ValueError says what to give."""
    if frames.numel() == t:
        return True
    if -(-frames.numel() // tp) != t:
        raise ValueError(f"video_timestamps for video {index} has {frames.numel()} values; the video has {t} "
                         f"{unit[1]} of {tp} sampled frames: give one time per {unit[0]} ({t}) or per sampled frame "
                         f"({t * tp - tp + 1} to {t * tp})")
    return False


def check_frame_tower(adapter: Any) -> None:
    """A clear error when the vision tower lacks what the saliency hooks read (`visual.blocks[-1].attn.qkv`)."""
    blocks = getattr(adapter.inner.visual, "blocks", None)
    if not blocks or not hasattr(blocks[-1].attn, "qkv"):
        raise ValueError(f"{type(adapter).__name__}: cannot find visual.blocks[-1].attn.qkv on "
                         f"{type(adapter.model).__name__}")


def encode_with_frame_saliency(adapter: Any, inputs: CallInputs, need_saliency: bool, image: bool):
    """Run a Qwen-VL-style tower (`adapter.inner.visual`, GLM-4V's too) on the call's videos (or images) with the
    saliency hooks of `add_frame_qk_saliency_hooks` when `need_saliency`.

    Returns:
        (the tower's output, the grid tensor, its (t, h, w) rows, the per-token scores in the tower's order or None,
        the hooks' seconds).
    """
    grid = inputs["image_grid_thw"] if image else inputs["video_grid_thw"]
    visual = adapter.inner.visual
    merge = visual.spatial_merge_size ** 2
    grids = [tuple(int(x) for x in g) for g in grid.tolist()]
    store: dict = {}
    with adapter.hooks.transient("saliency") as cap:
        if need_saliency:
            add_frame_qk_saliency_hooks(cap, visual.blocks[-1].attn, grids, adapter.saliency_source_name(), merge,
                                        store)
        if image:
            out = adapter.inner.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=grid,
                                                   return_dict=True, **adapter.encoder_flags(inputs))
        else:
            out = adapter.inner.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                   video_grid_thw=grid, return_dict=True,
                                                   **adapter.encoder_flags(inputs))
    return out, grid, grids, store.get("merged"), cap.seconds


class QwenVLAdapter(VideoSpliceAdapter):
    """Shared code of the Qwen-VL family.

    Images pass through unpruned unless `prune_images=True`: then each image is one frame (T=1) whose grid is the
    merged grid of its `image_grid_thw`, scored by the same saliency hook and pruned by the configured strategy; kept
    image tokens keep their original 3-D positions like video tokens.
    """

    @classmethod
    def projector_modules(cls, model):
        visual = model.model.visual
        return [visual.merger, *getattr(visual, "deepstack_merger_list", [])]  # Qwen3-VL: the deepstack mergers too

    saliency_sources = ("global_query", "attention_received")
    video_kwargs = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    image_kwargs = ("pixel_values", "image_grid_thw")
    supports_image_pruning = True
    uses_3d_positions = True
    #: Qwen2.5-VL: the vision tower runs in window order
    windowed = False
    #: Qwen3-VL: deepstack features to prune alongside
    deepstack = False
    #: get_rope_index takes second_per_grid_ts
    rope_takes_seconds = False

    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    def min_intra_llm_layer(self) -> int:
        # Qwen3-VL adds deepstack features to the visual positions after the first len(deepstack) layers; those
        # layers must still see the full sequence.
        return max(1, len(self.model.config.vision_config.deepstack_visual_indexes)) if self.deepstack else 1

    def validate(self) -> None:
        super().validate()
        check_frame_tower(self)

    # ------------------------------------------------------------------------------------------- encoding
    def encode_videos(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        return self._encode(inputs, need_saliency, image=False)

    def encode_images(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        return self._encode(inputs, need_saliency, image=True)

    def image_encoder_outputs(self, raw: Any, images: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        return self.encoder_outputs(raw, images, replacements)

    def _encode(self, inputs: CallInputs, need_saliency: bool, image: bool) -> Tuple[List[EncodedMedia], Any, float]:
        out, grid, grids, sal, seconds = encode_with_frame_saliency(self, inputs, need_saliency, image)
        visual = self.inner.visual
        ms = visual.spatial_merge_size
        if need_saliency:
            if self.windowed:
                from transformers.vision_utils import get_vision_window_index

                window_index, _ = get_vision_window_index(grid, spatial_merge_size=ms, window_size=visual.window_size,
                                                          patch_size=visual.patch_size)
                sal = sal[torch.argsort(window_index.to(sal.device))]
            sal = torch.split(sal, [t * h * w // ms**2 for t, h, w in grids])

        videos = []
        for v, (t, h, w) in enumerate(grids):
            if image:
                # a still image is one frame: its t (1 temporal patch for an image) folds into the token grid
                feats = out.pooler_output[v].reshape(1, t * (h // ms) * (w // ms), -1)
                grid_hw, scores, ts = (t * (h // ms), w // ms), None if sal is None else sal[v].reshape(1, -1), None
            else:
                feats = out.pooler_output[v].reshape(t, (h // ms) * (w // ms), -1)
                grid_hw, scores = (h // ms, w // ms), None if sal is None else sal[v].reshape(t, -1)
                ts = self.video_timestamps(v, t, inputs)
                if ts is None and need_saliency:
                    self.warn_missing_timestamps()
            grid_tokens = TokenGrid(
                features=feats, saliency=scores, grid_hw=grid_hw, timestamps=ts,
                frame_embeddings=feats.float().mean(1) if self.config.segmentation == "fastvid" else None)
            extra = {"deepstack": [layer[v] for layer in out.deepstack_features]} if self.deepstack else {}
            videos.append(EncodedMedia(grids=[grid_tokens], num_placeholders=feats.shape[0] * feats.shape[1],
                                       extra=extra))
        return videos, out, seconds

    #: the one-time warning when a video has no time source (ST-RoPE then uses the temporal-patch index)
    missing_timestamps_note = ("no video timestamps (no second_per_grid_ts, fps or video_timestamps): ST-RoPE uses "
                               "the temporal-patch index 0..T-1 as time; pass fps= (frames per second of the sampled "
                               "frames) or video_timestamps= to tango.enable, or tango_video_timestamps= (seconds, "
                               "or the video metadata) to generate / forward")

    def video_timestamps(self, index: int, t: int, inputs: CallInputs) -> Optional[torch.Tensor]:
        """(t,) seconds per temporal patch of video `index`, or None when nothing gives times.

        As the paper's Qwen runs compute them: the sampled frames' times interpolated at t evenly spaced points
        from the first to the last frame (`np.interp(linspace(0, n - 1, t), arange(n), frame_times)`), so the
        first patch gets the first frame's time and the last patch the last frame's. Frame times come from
        `video_timestamps` (one per sampled frame; one per patch is used as given), else `fps` (frame k at
        k / fps), else `second_per_grid_ts` (frame k at k * second_per_grid_ts / temporal_patch_size).
        """
        tp = self.model.config.vision_config.temporal_patch_size
        seconds = inputs.get("second_per_grid_ts")
        second_per_grid = None if seconds is None else float(seconds[index])
        frames = self._given_video_timestamps(index, inputs)
        if frames is not None:
            if one_time_per_patch(frames, index, t, tp, ("temporal patch", "temporal patches")):
                return frames
        elif self.options.get("fps") is not None:
            frames = torch.arange(t * tp, dtype=torch.float64) / float(self.options["fps"])
        elif second_per_grid is not None:
            if abs(second_per_grid - tp / 24.0) < 1e-6:  # float32 in the processor output
                self.state.warn_once("default-fps", DEFAULT_FPS_NOTE)
            else:
                self.state.warn_once("spg-times", SECOND_PER_GRID_NOTE)
            frames = torch.arange(t * tp, dtype=torch.float64) * (second_per_grid / tp)
        else:
            return None
        return self.patch_times(frames, t, tp)

    def timestamps_source(self, inputs: CallInputs) -> str:
        source = super().timestamps_source(inputs)
        if source.startswith("none") and inputs.get("second_per_grid_ts") is not None:
            return "second_per_grid_ts (processor)"
        return source

    def patch_times(self, frame_times: torch.Tensor, t: int, tp: int) -> torch.Tensor:
        """One time per temporal patch from the sampled frames' times (the paper's interpolation)."""
        return patch_times(frame_times, t)

    def build_replacement(self, media: EncodedMedia, plans: List[PrunePlan]) -> Replacement:
        replacement = super().build_replacement(media, plans)
        if self.deepstack:
            idx = plans[0].kept_indices.to(media.features.device)
            replacement.extra["deepstack"] = [d[idx] for d in media.extra["deepstack"]]
        return replacement

    def encoder_outputs(self, raw: Any, videos: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        feats = tuple(r.features for r in replacements)
        if self.deepstack:
            layers = len(replacements[0].extra["deepstack"]) if replacements else 0
            deep = [tuple(r.extra["deepstack"][i] for r in replacements) for i in range(layers)]
            return type(raw)(pooler_output=feats, deepstack_features=deep)
        return type(raw)(pooler_output=feats)

    # ------------------------------------------------------------------------------------------- positions
    def full_position_ids(self, inputs: CallInputs, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        mm = inputs.get("mm_token_type_ids")
        if mm is None:
            # Qwen2-VL refuses grids without mm_token_type_ids and Qwen2.5-VL silently falls back to 1-D positions;
            # the token ids say the same thing, so derive it (and say so once).
            self.state.warn_once("mm_token_type_ids", "mm_token_type_ids is missing; derived from the image/video "
                                                      "token ids for the M-RoPE positions")
            mm = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
        extra = {}
        if self.rope_takes_seconds:
            extra["second_per_grid_ts"] = inputs.get("second_per_grid_ts")
        pos, _ = self.inner.get_rope_index(input_ids, mm_token_type_ids=mm,
                                           image_grid_thw=inputs.get("image_grid_thw"),
                                           video_grid_thw=inputs.get("video_grid_thw"), attention_mask=attention_mask,
                                           **extra)
        return pos

    def after_splice(self, positions, attention_mask: torch.Tensor) -> None:
        set_rope_deltas(self.inner, positions, attention_mask)


class Qwen2VLAdapter(QwenVLAdapter):
    """Qwen2-VL: full attention per temporal slice in every ViT block."""

    preset_name = "qwen2-vl"


class Qwen2_5_VLAdapter(QwenVLAdapter):
    """Qwen2.5-VL: window attention (undone with argsort(window_index)), timestamps from second_per_grid_ts."""

    preset_name = "qwen2.5-vl"
    windowed = True
    rope_takes_seconds = True


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: deepstack features pruned with the same indices.

    Its processor writes the per-slice timestamps into the prompt text only ("<x.x seconds>"); the model inputs carry
    no times, so pass `fps=` or `video_timestamps=` to `enable` (see the module docstring) or ST-RoPE runs on the
    temporal-patch index (with a warning). Both options give the processor's times: the mean of each temporal
    patch's first and last frame time.
    """

    preset_name = "qwen3-vl"
    deepstack = True
    missing_timestamps_note = ("Qwen3-VL's processor puts the video timestamps into the prompt text only, so the "
                               "adapter cannot see them: ST-RoPE uses the temporal-patch index 0..T-1 as time; pass "
                               "fps= (frames per second of the sampled frames) or video_timestamps= to tango.enable, "
                               "or tango_video_timestamps= (seconds, or the video metadata) to generate / forward")

    def patch_times(self, frame_times: torch.Tensor, t: int, tp: int) -> torch.Tensor:
        """The processor's prompt-text times (`mean_patch_times`)."""
        return mean_patch_times(frame_times, t, tp)


__all__ = ["QwenVLAdapter", "Qwen2VLAdapter", "Qwen2_5_VLAdapter", "Qwen3VLAdapter"]
