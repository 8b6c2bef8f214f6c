"""`tango-plugin demo`: the engine on a generated video, then tiny random Video LLMs (no downloads)."""

from __future__ import annotations

import os
import time

import torch

from ..config import TangoConfig
from ..strategies import prune_video_tokens
from ..table import markdown_table
from ..testing import synthetic_video
from .picture import kept_map_png


def _timed(call):
    t0 = time.perf_counter()
    result = call()
    return (time.perf_counter() - t0) * 1e3, result


def _engine_demo(args) -> None:
    video = synthetic_video(args.frames, (args.grid, args.grid), args.dim, num_scenes=args.scenes, seed=args.seed)
    T, L = video.saliency.shape
    print(f"Generated video: {T} frames x {L} tokens ({args.grid}x{args.grid}) x {args.dim} dims, "
          f"{args.scenes} scenes, timestamps 0..{float(video.timestamps[-1]):g} s")
    rows, startup = [], []
    os.makedirs(args.out, exist_ok=True)
    for name in ("tango", "topk", "uniform"):
        cfg = TangoConfig(retention_ratio=args.ratio, strategy=name)
        call = lambda: prune_video_tokens(video.features, video.saliency, video.grid_hw, video.timestamps, cfg)  # noqa: E731
        first_ms, _ = _timed(call)
        warm = [_timed(call) for _ in range(3)]
        ms = sorted(t for t, _ in warm)[1]  # the median of 3 warm calls
        res = warm[-1][1]
        startup.append(f"{name} {max(0.0, first_ms - ms):.0f} ms")
        per_frame = torch.bincount(res.kept_indices // L, minlength=T)
        mass = float(video.saliency.flatten()[res.kept_indices].sum() / video.saliency.sum())
        frames_hit = int((per_frame > 0).sum())
        picture = kept_map_png(os.path.join(args.out, f"kept_{name}.png"), video.saliency, video.grid_hw,
                               res.kept_indices)
        rows.append([name, str(res.kept_indices.numel()), f"{res.kept_indices.numel() / (T * L):.3f}",
                     f"{int(per_frame.min())}-{int(per_frame.max())}", str(frames_hit), f"{mass:.3f}",
                     f"{ms:.1f}", picture])
    print(markdown_table(["strategy", "kept", "ratio", "per frame", "frames with tokens", "attention kept",
                          "warm ms", "picture"], rows))
    print(f"warm ms: the median of 3 calls after the first, {torch.get_num_threads()} threads. One-time start-up "
          f"of a process's first call (first call minus warm; the first strategy's includes torch's own start-up): "
          + ", ".join(startup) + ".")
    print("Tango keeps fewer tokens in frames that repeat the previous ones (static tokens are kept once per "
          "segment) and spends the budget on salient and diverse tokens.")


def _model_demo(args) -> None:
    try:
        from .model_demo import run_model_demo
    except ImportError as exc:  # transformers missing: say so instead of skipping silently
        print(f"\nModel demo skipped: {exc}. Install the 'hf' extra: pip install 'tango-plugin[hf]'")
        return
    run_model_demo(ratio=args.ratio, frames=min(args.frames, 16), seed=args.seed)


def cmd_demo(args) -> int:
    torch.manual_seed(args.seed)
    _engine_demo(args)
    if not args.no_model:
        _model_demo(args)
    return 0
