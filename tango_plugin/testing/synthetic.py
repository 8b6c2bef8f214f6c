"""Generated video tokens for the demo, tests and benchmarks (no downloads).

A video is a sequence of scenes. Inside a scene, a share of the grid is static background (the same vector
plus a little noise every frame) and the rest changes from frame to frame (a drifting texture), and a bright
object moves across the grid and attracts the attention. This gives Tango what real videos give it: scene
cuts for the segmentation, static tokens to collapse, dynamic tokens to cluster, and a salient region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch


@dataclass
class SyntheticVideo:
    features: torch.Tensor  # (T, L, D)
    saliency: torch.Tensor  # (T, L), each row sums to 1
    grid_hw: Tuple[int, int]
    timestamps: torch.Tensor  # (T,) seconds
    frame_embeddings: torch.Tensor  # (T, D) mean token per frame
    scene_of_frame: torch.Tensor  # (T,) scene id


def synthetic_video(num_frames: int = 32, grid_hw: Tuple[int, int] = (14, 14), dim: int = 896,
                    num_scenes: int = 4, dynamic_fraction: float = 0.3, noise: float = 0.05, fps: float = 1.0,
                    seed: int = 0, dtype: torch.dtype = torch.float32) -> SyntheticVideo:
    """Build a `SyntheticVideo` deterministically from `seed`.

    Args:
        num_frames: T.
        grid_hw: (H, W) token grid per frame.
        dim: feature size D.
        num_scenes: scenes of (nearly) equal length; 1 makes the whole video one long segment (worst case for
            the context clustering).
        dynamic_fraction: share of each scene's grid that changes every frame.
        noise: per-frame noise on static tokens, relative to their norm.
        fps: frame rate of the timestamps.
    """
    if num_frames < 1 or num_scenes < 1 or not 0.0 <= dynamic_fraction <= 1.0:
        raise ValueError(f"need num_frames >= 1, num_scenes >= 1 and dynamic_fraction in [0, 1]; got "
                         f"{num_frames}, {num_scenes}, {dynamic_fraction}")
    g = torch.Generator().manual_seed(seed)
    H, W = grid_hw
    L = H * W
    scene = torch.div(torch.arange(num_frames) * min(num_scenes, num_frames), num_frames, rounding_mode="floor")
    feats = torch.empty(num_frames, L, dim)
    logits = torch.empty(num_frames, L)
    rows = torch.arange(H).repeat_interleave(W).float()
    cols = torch.arange(W).repeat(H).float()
    for s in scene.unique().tolist():
        frames = torch.nonzero(scene == s).flatten()
        n = frames.numel()
        background = torch.randn(L, dim, generator=g)
        dynamic = torch.rand(L, generator=g) < dynamic_fraction
        drift = torch.randn(L, dim, generator=g)
        obj = 3.0 * torch.randn(dim, generator=g)
        for j, f in enumerate(frames.tolist()):
            phase = j / max(1, n - 1)
            x = background + noise * torch.randn(L, dim, generator=g)
            step = torch.randn(L, dim, generator=g)
            drift = 0.5 * drift + 0.87 * step  # consecutive frames: cosine about 0.6 on dynamic tokens
            x[dynamic] = 0.5 * background[dynamic] + drift[dynamic]
            # the object moves along the diagonal of the grid
            cy, cx = phase * (H - 1), (1 - phase) * (W - 1)
            blob = torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 2.0)
            x = x + blob[:, None] * obj
            feats[f] = x
            logits[f] = 4.0 * blob + 0.5 * torch.randn(L, generator=g)
    saliency = torch.softmax(logits, dim=-1)
    timestamps = torch.arange(num_frames, dtype=torch.float64) / fps
    return SyntheticVideo(features=feats.to(dtype), saliency=saliency, grid_hw=(H, W), timestamps=timestamps,
                          frame_embeddings=feats.mean(dim=1).to(dtype), scene_of_frame=scene)


def ar1_video(num_frames: int = 32, grid_hw: Tuple[int, int] = (14, 14), dim: int = 896, num_cuts: int = 3,
              moving_fraction: float = 0.3, static_corr: float = 0.99, moving_corr: float = 0.5, fps: float = 1.0,
              seed: int = 0, dtype: torch.dtype = torch.float32) -> SyntheticVideo:
    """AR(1) token trajectories with a few scene cuts and random saliency (near-duplicate static tokens).

    Every token follows x_t = c x_{t-1} + sqrt(1 - c^2) e_t with unit-variance Gaussian e_t (so each frame has unit
    variance per dim): c = `static_corr` for the static tokens, `moving_corr` for a random `moving_fraction` of the
    grid (drawn anew per scene). At each of the `num_cuts` cuts (at distinct random frames) every token starts
    afresh. Saliency is a softmax of Gaussian logits per frame, unrelated to the features. Consecutive static
    tokens are near-duplicates (cosine about `static_corr`), which makes distance near-ties common in large pools.
    """
    if num_frames < 1 or num_cuts < 0 or not 0.0 <= moving_fraction <= 1.0:
        raise ValueError(f"need num_frames >= 1, num_cuts >= 0 and moving_fraction in [0, 1]; got "
                         f"{num_frames}, {num_cuts}, {moving_fraction}")
    if not (-1.0 < static_corr < 1.0 and -1.0 < moving_corr < 1.0):
        raise ValueError(f"correlations must lie in (-1, 1); got {static_corr}, {moving_corr}")
    g = torch.Generator().manual_seed(seed)
    H, W = grid_hw
    L = H * W
    cuts = torch.randperm(max(0, num_frames - 1), generator=g)[:num_cuts] + 1  # a cut starts a scene at frame f
    starts = torch.zeros(num_frames, dtype=torch.bool)
    starts[0] = True
    starts[cuts] = True
    scene = torch.cumsum(starts.long(), 0) - 1
    feats = torch.empty(num_frames, L, dim)
    corr = torch.empty(L, 1)
    x = torch.empty(L, dim)
    for f in range(num_frames):
        if starts[f]:
            moving = torch.rand(L, generator=g) < moving_fraction
            corr[:, 0] = torch.where(moving, moving_corr, static_corr)
            x = torch.randn(L, dim, generator=g)
        else:
            x = corr * x + torch.sqrt(1 - corr * corr) * torch.randn(L, dim, generator=g)
        feats[f] = x
    saliency = torch.softmax(torch.randn(num_frames, L, generator=g), dim=-1)
    timestamps = torch.arange(num_frames, dtype=torch.float64) / fps
    return SyntheticVideo(features=feats.to(dtype), saliency=saliency, grid_hw=(H, W), timestamps=timestamps,
                          frame_embeddings=feats.mean(dim=1).to(dtype), scene_of_frame=scene)
