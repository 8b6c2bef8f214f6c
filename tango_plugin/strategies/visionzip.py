"""VisionZip as a per-frame strategy: dominant tokens by attention, the rest merged into a few contextual tokens.

Paper: "VisionZip: Longer is Better but Not Necessary in Vision Language Models", Senqiao Yang, Yukang Chen,
Zhuotao Tian, Chengyao Wang, Jingyao Li, Bei Yu, Jiaya Jia, CVPR 2025, arXiv:2412.04467.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TangoConfig
from ..engine.budgets import frame_keep_count
from ..engine.types import PrunePlan, VisualTokens
from ._common import assemble, check_number, normalized, resolve_options, top_per_frame
from .base import PruningStrategy, register_strategy

# frames handled per batched similarity product (bounds the (frames, rest, contexts) temporaries)
_FRAMES_PER_CHUNK = 16


@dataclass(frozen=True)
class VisionZipOptions:
    """Args:
        contextual_fraction: share of each frame's budget given to contextual (merged) tokens. The paper's
            LLaVA-1.5 settings keep 54 dominant + 10 contextual of 64 (108 + 20 of 128, 162 + 30 of 192), i.e.
            10/64 = 0.15625.
    """

    contextual_fraction: float = 10 / 64

    def __post_init__(self) -> None:
        check_number("contextual_fraction", self.contextual_fraction, 0.0, 1.0)


def visionzip_counts(tokens_per_frame: int, ratio: float, contextual_fraction: float):
    """(dominant, contextual) tokens per frame: k = ceil(L * r) (at least 1), contextual = int(k * fraction),
    dominant = k - contextual; a frame with k = 1 keeps one dominant token."""
    k = frame_keep_count(tokens_per_frame, ratio)
    contextual = int(k * contextual_fraction)
    if contextual == k:  # keep at least one dominant token: the attention signal is the method's core
        contextual = k - 1
    return k - contextual, contextual


@register_strategy("visionzip")
class VisionZipStrategy(PruningStrategy):
    """VisionZip (Yang et al., CVPR 2025, arXiv:2412.04467), applied to each frame on its own.

    Per frame: keep the ``dominant`` tokens with the highest attention (``tokens.saliency``, sinks zeroed, ties ->
    lower index) unchanged. Of the remaining tokens (ascending index order), ``contextual`` targets are taken
    uniformly (every ``len(rest) // contextual``-th); every other remaining token joins the target it is most similar
    to (cosine, ties -> first target), and each contextual token becomes the plain mean of its members (the target
    included). Kept positions: dominant and target positions.

    Budget: exactly ``T * ceil(L * r)`` tokens (see `visionzip_counts` for the split).

    Simplifications: the paper ranks by the vision tower's [CLS] attention (or the mean attention received on
    SigLIP) in layer -2 and matches contexts by that layer's keys; here the ranking is whatever saliency the adapter
    supplies and the matching uses the LLM-space features. Video use is per frame (as video papers apply it); the
    paper's optional fine-tuning of the projector is not part of a training-free plugin.
    """
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    defaults = VisionZipOptions()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        n_dom, n_ctx = visionzip_counts(L, config.retention_ratio, opts.contextual_fraction)
        _, dominant_flat, dominant_feats, rest_mask = top_per_frame(tokens, n_dom)
        frame_base = torch.arange(T, device=feats.device)[:, None] * L
        pieces_idx, pieces_feat = [dominant_flat], [dominant_feats]
        if n_ctx > 0:
            rest = torch.nonzero(rest_mask)[:, 1].reshape(T, L - n_dom)  # ascending per frame
            step = max(1, rest.shape[1] // n_ctx)
            target_pos = torch.arange(0, rest.shape[1], step, device=feats.device)[:n_ctx]  # (n_ctx,)
            for a in range(0, T, _FRAMES_PER_CHUNK):
                rows = rest[a:a + _FRAMES_PER_CHUNK]
                idx, merged = self._contexts(feats[a:a + _FRAMES_PER_CHUNK], rows, target_pos)
                pieces_idx.append(idx + frame_base[a:a + _FRAMES_PER_CHUNK])
                pieces_feat.append(merged)
        return assemble(pieces_idx, pieces_feat, D, feats.dtype, feats.device)

    @staticmethod
    def _contexts(feats: torch.Tensor, rest: torch.Tensor, target_pos: torch.Tensor):
        """Contextual tokens of B frames: (B, L, D) features, (B, R) rest columns, (m,) target slots in `rest`.

        Returns:
            (local target columns (B, m), merged features (B, m, D) in float32).
        """
        B, R = rest.shape
        D = feats.shape[-1]
        m = target_pos.numel()
        rest_feats = torch.gather(feats, 1, rest[..., None].expand(B, R, D))  # (B, R, D)
        targets = rest[:, target_pos]  # (B, m)
        unit = normalized(rest_feats)
        sim = unit @ unit[:, target_pos].transpose(1, 2)  # (B, R, m)
        assign = sim.argmax(dim=-1)  # first maximum -> first target on ties
        assign[:, target_pos] = torch.arange(m, device=feats.device)  # a target always belongs to itself
        flat = (assign + torch.arange(B, device=feats.device)[:, None] * m).flatten()
        sums = torch.zeros(B * m, D, dtype=torch.float32, device=feats.device)
        sums.index_add_(0, flat, rest_feats.reshape(B * R, D).float())
        counts = torch.zeros(B * m, dtype=torch.float32, device=feats.device)
        counts.index_add_(0, flat, torch.ones(B * R, dtype=torch.float32, device=feats.device))
        return targets, (sums / counts[:, None]).view(B, m, D)


__all__ = ["VisionZipStrategy", "VisionZipOptions", "visionzip_counts"]
