"""Adapter for Hugging Face `LlavaOnevisionForConditionalGeneration` (LLaVA-OneVision, LLaVA-Video-style checkpoints).

Video path of the model (transformers 5.x): SigLIP tower -> feature layer -> projector -> `apply_pooling` (bilinear to
ceil(side / 2)) -> one `image_newline` per video. The adapter keeps that path and prunes the pooled tokens; the
newline stays outside the budget (SPEC 5.1). Positions stay contiguous 1-D RoPE positions, as in the reference.

Options (`tango_plugin.enable(model, cfg, **options)`):
    pool_mode: "bilinear" (default, what the HF model does) or "average" (LLaVA-Video: `avg_pool2d(2)`, floor).
    newline: "one_token" (default, one newline per video) or "grid" (LLaVA-Video: one newline after each row of a
        frame that kept at least one token).
    fps / video_timestamps: frame times for the temporal terms; without them frame t is at t seconds.

Saliency sources: "global_query" (default; the feature layer's own q/k, SPEC 1.3 applied to SigLIP, pooled like the
features, SPEC 1.2), "siglip_head" (the SigLIP attention-pooling head loaded from `config.siglip_head_path`, the
reference's signal, SPEC 1.1) and "attention_received".
"""

from __future__ import annotations

import math
from typing import Any, List, Tuple

import torch
import torch.nn.functional as F

from tango_plugin.saliency import HookCapture, first_arg, score
from tango_plugin.strategies import PrunePlan

from .common import Block, EncodedVideo, VideoSpliceAdapter

POOL_MODES = ("bilinear", "average")
NEWLINE_MODES = ("one_token", "grid")


def load_siglip_head(path: str):
    """`(post_layernorm, head)` of a local SigLIP vision checkpoint that has the attention-pooling head."""
    from transformers import SiglipVisionModel

    try:
        tower = SiglipVisionModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the field name
        raise ValueError(f"siglip_head_path={path!r}: cannot load a SigLIP vision checkpoint from there "
                         f"({exc})") from exc
    if not getattr(tower, "use_head", False):
        raise ValueError(f"siglip_head_path={path!r}: the checkpoint has no attention-pooling head "
                         "(vision_use_head is False)")
    post_ln, head = tower.post_layernorm, tower.head
    del tower.encoder, tower.embeddings  # only the head is used; free the rest
    return post_ln.eval(), head.eval()


class LlavaOnevisionAdapter(VideoSpliceAdapter):
    """Tango for `LlavaOnevisionForConditionalGeneration` (video inputs; images pass through unpruned).

    `prune_images=True` is not implemented here yet and warns: an anyres image's placeholders interleave the base
    grid, the unpadded crops and one newline per crop row (`pack_image_features`), and pruning them needs a re-pack
    that keeps those newlines where the model expects them, which has not been written.
    """

    saliency_sources = ("global_query", "siglip_head", "attention_received")
    options_help = {
        **VideoSpliceAdapter.options_help,
        "pool_mode": "'bilinear' (HF LLaVA-OV, default) or 'average' (LLaVA-Video: avg_pool2d 2, floor)",
        "newline": "'one_token' (one newline per video, default) or 'grid' (one after each row that kept a token)",
    }

    def __init__(self, model, config, state=None, **options) -> None:
        super().__init__(model, config, state, **options)
        self.pool_mode = self.options.get("pool_mode", "bilinear")
        self.newline = self.options.get("newline", "one_token")
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

    def _tower_layers(self):
        tower = self.inner.vision_tower
        enc = getattr(tower, "encoder", None) or getattr(getattr(tower, "vision_model", None), "encoder", None)
        if enc is None or not hasattr(enc, "layers"):
            raise ValueError(f"{type(self).__name__}: the vision tower {type(tower).__name__} has no encoder.layers")
        return enc.layers

    def _layer_index(self, feature_layer) -> int:
        """Index in `encoder.layers` of the layer that outputs the selected feature (hidden_states[i]: layer i-1)."""
        if isinstance(feature_layer, (list, tuple)):
            feature_layer = feature_layer[-1]
        n = len(self._tower_layers())
        hs_index = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        if not 1 <= hs_index <= n:
            raise ValueError(f"vision_feature_layer={feature_layer} selects the patch embeddings; the saliency needs "
                             "an attention layer")
        return hs_index - 1

    def grid_side(self) -> int:
        side = self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size
        return math.ceil(side / 2) if self.pool_mode == "bilinear" else side // 2

    def validate(self) -> None:
        super().validate()
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode={self.pool_mode!r} is not supported; allowed: {list(POOL_MODES)}")
        if self.newline not in NEWLINE_MODES:
            raise ValueError(f"newline={self.newline!r} is not supported; allowed: {list(NEWLINE_MODES)}")
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

    def encode_videos(self, kw: dict, need_saliency: bool) -> Tuple[List[EncodedVideo], Any, float]:
        pv = kw["pixel_values_videos"]
        num_videos, frames = pv.shape[:2]
        cfg = self.model.config
        feature_layer = kw.get("vision_feature_layer")
        feature_layer = cfg.vision_feature_layer if feature_layer is None else feature_layer
        strategy = kw.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy
        layer = self._tower_layers()[self._layer_index(feature_layer)]
        source = self.saliency_source_name()
        store: dict = {}

        with HookCapture() as cap:
            if need_saliency and source == "siglip_head":
                post_ln, head = self._head

                def head_hook(mod, args, output):
                    out = output[0] if isinstance(output, tuple) else output
                    post_ln.to(out.device, out.dtype)
                    head.to(out.device, out.dtype)
                    z = post_ln(out)
                    probe = head.probe.repeat(z.shape[0], 1, 1)
                    pooled, weights = head.attention(probe, z, z, need_weights=True, average_attn_weights=True)
                    store["patch"] = weights[:, 0].float()
                    # the head's own output is the per-frame global embedding (fastvid segmentation)
                    store["frame"] = (pooled + head.mlp(head.layernorm(pooled)))[:, 0].float()

                cap.post_hook(layer, head_hook)
            elif need_saliency:
                def qk_hook(mod, args, kwargs):
                    hs = first_arg(args, kwargs, "hidden_states")
                    n, p, _ = hs.shape
                    q = mod.q_proj(hs).view(n, p, -1, mod.head_dim).transpose(1, 2)
                    k = mod.k_proj(hs).view(n, p, -1, mod.head_dim).transpose(1, 2)
                    store["patch"] = score(source, q, k)

                cap.pre_hook(layer.self_attn, qk_hook)
            if self.pool_mode == "average":
                cap.post_hook(self.inner.multi_modal_projector, lambda m, a, o: store.__setitem__("proj", o))
            out = self.inner.get_video_features(pixel_values_videos=pv, vision_feature_layer=feature_layer,
                                                vision_feature_select_strategy=strategy, return_dict=True)
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
            videos.append(EncodedVideo(
                features=feats[v], saliency=None if sal is None else sal[v], grid_hw=(side, side),
                num_placeholders=placeholders, timestamps=self.user_timestamps(v, frames, kw),
                frame_embeddings=frame_emb, extra={"newline": newline}))
        return videos, out, cap.seconds

    # ------------------------------------------------------------------------------------------- splicing
    def build_block(self, video: EncodedVideo, plan: PrunePlan) -> Block:
        T, L, D = video.features.shape
        kept = plan.kept_indices.to(video.features.device)
        feats = plan.features.to(video.features.dtype)
        nl = video.extra["newline"][None]
        if self.newline == "one_token":
            # the newline takes the video's last placeholder slot, after every kept token
            src = torch.cat([kept, kept.new_tensor([video.num_placeholders - 1])])
            return Block(src=src, features=torch.cat([feats, nl]), kept=int(kept.numel()))
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
        return Block(src=src, features=table[rows], kept=int(kept.numel()))

    def encoder_outputs(self, raw: Any, videos: List[EncodedVideo], blocks: List[Block]) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # forward flattens (videos, tokens, D) to (tokens, D); one row of all blocks gives the same flat order
        return BaseModelOutputWithPooling(pooler_output=torch.cat([b.features for b in blocks])[None])


__all__ = ["LlavaOnevisionAdapter", "load_siglip_head"]
