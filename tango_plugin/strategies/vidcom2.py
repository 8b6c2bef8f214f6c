"""VidCom2: per-frame budgets driven by each frame's uniqueness in the video, then per-frame token uniqueness.

Paper: "Video Compression Commander: Plug-and-Play Inference Acceleration for Video Large Language Models",
Xuyang Liu, Yiyu Wang, Junpeng Ma, Linfeng Zhang, EMNLP 2025, arXiv:2505.14454.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from ..config import TangoConfig
from ..engine.budgets import frame_keep_count
from ..engine.tango import stable_topk
from ..engine.types import PrunePlan, VisualTokens
from ._common import apportion, assemble, check_number, normalized, resolve_options
from .base import PruningStrategy, register_strategy


@dataclass(frozen=True)
class VidCom2Options:
    """Args:
        temperature: tau of the softmax over frame uniqueness (smaller -> the budget moves more to the most unique
            frames).
        channel_ratio: share of the feature channels the similarities are computed on: those with the lowest
            variance over the video's tokens (the stable, scene-level part of the features).
        kernel_widths: the a of the multi-scale Gaussian similarity sum_a exp(-|x - c|^2 / (2 a)).

    Defaults: tau = 0.01, half the channels, a in {1/8, 1/4, 1/2, 1, 2}, the values of the authors' code.
    """

    temperature: float = 0.01
    channel_ratio: float = 0.5
    kernel_widths: Tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, 0.0, 1e6, low_open=True)
        check_number("channel_ratio", self.channel_ratio, 0.0, 1.0, low_open=True)
        if not isinstance(self.kernel_widths, (tuple, list)) or not self.kernel_widths:
            raise ValueError(f"option kernel_widths={self.kernel_widths!r} must be a non-empty sequence of numbers")
        for a in self.kernel_widths:
            check_number("kernel_widths", a, 0.0, 1e6, low_open=True)


def _gaussian_similarity(x: torch.Tensor, centre: torch.Tensor, widths) -> torch.Tensor:
    """sum_a exp(-|x - centre|^2 / (2 a)) over the last dim (1 when x == centre, per width)."""
    d2 = (x - centre).pow(2).sum(dim=-1)
    return sum(torch.exp(-d2 / (2.0 * a)) for a in widths)


def vidcom2_scores(features: torch.Tensor, opts: VidCom2Options) -> Tuple[torch.Tensor, torch.Tensor]:
    """(frame uniqueness (T,), token score (T, L)) of a (T, L, D) video.

    The tokens are reduced to the `channel_ratio` share of channels with the lowest variance and L2-normalised.
    A token's similarity to a centre is the multi-scale Gaussian kernel of its distance. Frame uniqueness: minus the
    mean similarity of the frame's tokens to the video centre (mean token of the video). Token score: similarity
    to the video centre plus similarity to its frame's centre; lower = more unique.
    """
    T, L, D = features.shape
    x = features.detach().reshape(T * L, D).float()  # scores only make decisions
    keep = max(1, int(D * opts.channel_ratio))
    channels = torch.sort(x.var(dim=0, unbiased=False), stable=True).indices[:keep]  # ties -> lower channel
    unit = normalized(x[:, channels]).view(T, L, keep)
    video_sim = _gaussian_similarity(unit, unit.mean(dim=(0, 1)), opts.kernel_widths)  # (T, L)
    frame_sim = _gaussian_similarity(unit, unit.mean(dim=1, keepdim=True), opts.kernel_widths)
    return -video_sim.mean(dim=1), video_sim + frame_sim


def vidcom2_frame_counts(uniqueness: torch.Tensor, tokens_per_frame: int, ratio: float,
                         temperature: float) -> List[int]:
    """Per-frame kept counts from the frames' uniqueness u (T,).

    The per-frame ratio is r_t = r (1 + sigma_t - mean(sigma)) with sigma = softmax((u - max u) / tau): its mean is
    exactly r, and the most unique frames get up to about 2 r. The ratios become integers that sum to
    ``T * ceil(L * r)``, each in [1, L] (largest remainder, see `apportion`).
    """
    T = uniqueness.numel()
    u = uniqueness.double()
    sigma = torch.softmax((u - u.max()) / temperature, dim=0)
    weights = 1.0 + sigma - sigma.mean()
    return apportion(T * frame_keep_count(tokens_per_frame, ratio), weights, 1, tokens_per_frame)


@register_strategy("vidcom2")
class VidCom2Strategy(PruningStrategy):
    """VidCom2 (Liu et al., EMNLP 2025, arXiv:2505.14454): frame-uniqueness-driven budgets, then token uniqueness.

    1. Frame compression adjustment: frames that differ from the video as a whole (low mean similarity of their
       tokens to the video's mean token) get a larger share of the budget, repeated frames a smaller one
       (`vidcom2_frame_counts`).
    2. Adaptive token compression: inside frame t the k_t tokens least similar to the video's and the frame's mean
       token are kept (`vidcom2_scores`; ties -> lower index), features unchanged.

    No attention is needed (the paper's point: it works with FlashAttention and with encoders that have no [CLS]),
    so ``tokens.saliency`` is not used.

    Budget: exactly ``T * ceil(L * r)`` tokens in total; the per-frame counts k_t in [1, L] follow the content.

    Simplifications: the authors round each frame's r_t * L on its own (the total can drift by a few tokens) and
    cap r_t at 1; here the counts are apportioned so the total is exact.
    """
    feature_gradients = True  # decisions from detached values (PruningStrategy)

    defaults = VidCom2Options()

    def select(self, tokens: VisualTokens, config: TangoConfig) -> PrunePlan:
        opts = resolve_options(self.name, self.defaults, config)
        feats = tokens.features
        T, L, D = feats.shape
        uniqueness, score = vidcom2_scores(feats, opts)
        counts = vidcom2_frame_counts(uniqueness, L, config.retention_ratio, opts.temperature)
        order = stable_topk(-score, L)  # per frame, most unique first (ties -> lower index)
        flat = feats.reshape(T * L, D)
        idx = torch.cat([order[t, :k] + t * L for t, k in enumerate(counts)])
        return assemble([idx], [flat[idx]], D, feats.dtype, feats.device)


__all__ = ["VidCom2Strategy", "VidCom2Options", "vidcom2_scores", "vidcom2_frame_counts"]
