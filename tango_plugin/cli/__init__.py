"""Command line: `tango-plugin demo | info | prune | run`.

    tango-plugin demo                 # generated video, no downloads: engine + tiny random Video LLMs
    tango-plugin info                 # registered strategies, adapters and presets
    tango-plugin prune tokens.pt      # run the engine on saved tensors (features, saliency, grid_hw, ...)
    tango-plugin run --model DIR --video clip.mp4 --question "..." --compare   # a local checkpoint on a video file
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import torch

from .. import TangoConfig, list_strategies, prune_video_tokens
from ..picture import kept_map_png
from ..table import markdown_table
from ..testing import synthetic_video


def _engine_demo(args) -> None:
    video = synthetic_video(args.frames, (args.grid, args.grid), args.dim, num_scenes=args.scenes, seed=args.seed)
    T, L = video.saliency.shape
    print(f"Generated video: {T} frames x {L} tokens ({args.grid}x{args.grid}) x {args.dim} dims, "
          f"{args.scenes} scenes, timestamps 0..{float(video.timestamps[-1]):g} s")
    rows = []
    os.makedirs(args.out, exist_ok=True)
    for name in ("tango", "topk", "uniform"):
        cfg = TangoConfig(retention_ratio=args.ratio, strategy=name)
        prune_video_tokens(video.features, video.saliency, video.grid_hw, video.timestamps, cfg)  # warm-up
        t0 = time.perf_counter()
        res = prune_video_tokens(video.features, video.saliency, video.grid_hw, video.timestamps, cfg)
        ms = (time.perf_counter() - t0) * 1e3
        per_frame = torch.bincount(res.kept_indices // L, minlength=T)
        mass = float(video.saliency.flatten()[res.kept_indices].sum() / video.saliency.sum())
        frames_hit = int((per_frame > 0).sum())
        picture = kept_map_png(os.path.join(args.out, f"kept_{name}.png"), video.saliency, video.grid_hw,
                               res.kept_indices)
        rows.append([name, str(res.kept_indices.numel()), f"{res.kept_indices.numel() / (T * L):.3f}",
                     f"{int(per_frame.min())}-{int(per_frame.max())}", str(frames_hit), f"{mass:.3f}",
                     f"{ms:.1f}", picture])
    print(markdown_table(["strategy", "kept", "ratio", "per frame", "frames with tokens", "attention kept", "ms",
                  "picture"], rows))
    print("Tango keeps fewer tokens in frames that repeat the previous ones (static tokens are kept once per "
          "segment) and spends the budget on salient and diverse tokens.")


def _model_demo(args) -> None:
    try:
        from ..model_zoo.demo import run_model_demo
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


def cmd_info(args) -> int:
    from ..presets import list_presets

    print("strategies:", ", ".join(list_strategies()))
    try:
        from ..adapters import list_adapters

        print("adapters (config.model_type):", ", ".join(list_adapters()))
    except ImportError as exc:
        print(f"adapters: unavailable ({exc})")
    print("presets:", ", ".join(list_presets()))
    print("config fields:")
    for name, text in TangoConfig.help().items():
        print(f"  {name}: {text}")
    return 0


def cmd_prune(args) -> int:
    data = torch.load(args.input, map_location="cpu", weights_only=True)
    missing = [k for k in ("features", "saliency", "grid_hw") if k not in data]
    if missing:
        raise SystemExit(f"{args.input}: missing keys {missing}; expected a dict with features (T, L, D), "
                         "saliency (T, L), grid_hw (H, W) and optionally timestamps (T,), frame_embeddings (T, D')")
    cfg = TangoConfig.from_json(open(args.config).read()) if args.config else TangoConfig(retention_ratio=args.ratio)
    t0 = time.perf_counter()
    res = prune_video_tokens(data["features"], data["saliency"], tuple(data["grid_hw"]), data.get("timestamps"), cfg,
                             data.get("frame_embeddings"))
    T, L = data["saliency"].shape
    print(f"kept {res.kept_indices.numel()} of {T * L} tokens ({res.kept_indices.numel() / (T * L):.3f}) in "
          f"{time.perf_counter() - t0:.3f} s")
    if args.output:
        torch.save({"kept_indices": res.kept_indices, "features": res.features, "config": cfg.to_dict()}, args.output)
        print(f"wrote {args.output}")
    if args.picture:
        print(f"wrote {kept_map_png(args.picture, data['saliency'], tuple(data['grid_hw']), res.kept_indices)}")
    return 0


def cmd_run(args) -> int:
    from ..run_model import run

    try:
        return run(args)
    except ImportError as exc:  # a missing extra: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tango-plugin", description="Tango visual-token pruning for Video LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run on a generated video and tiny random models (no downloads)")
    demo.add_argument("--frames", type=int, default=32)
    demo.add_argument("--grid", type=int, default=14, help="tokens per frame side (14 -> 196 like LLaVA-OV)")
    demo.add_argument("--dim", type=int, default=896)
    demo.add_argument("--scenes", type=int, default=4)
    demo.add_argument("--ratio", type=float, default=0.1, help="retention ratio")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="tango_demo", help="folder for the pictures")
    demo.add_argument("--no-model", action="store_true", help="engine only, skip the tiny-model part")
    demo.set_defaults(func=cmd_demo)
    info = sub.add_parser("info", help="list strategies, adapters, presets and config fields")
    info.set_defaults(func=cmd_info)
    prune = sub.add_parser("prune", help="prune saved tensors (torch.save of a dict)")
    prune.add_argument("input")
    prune.add_argument("--ratio", type=float, default=0.1)
    prune.add_argument("--config", help="TangoConfig as JSON (overrides --ratio)")
    prune.add_argument("--output", help="where to save kept_indices and features")
    prune.add_argument("--picture", help="PNG of what was kept")
    prune.set_defaults(func=cmd_prune)
    run = sub.add_parser("run", help="answer a question about a video file with a local checkpoint, pruned")
    run.add_argument("--model", required=True, help="local checkpoint folder (model and processor files)")
    run.add_argument("--video", required=True, help="video file PyAV can read")
    run.add_argument("--question", default="Describe this video.")
    run.add_argument("--frames", type=int, default=32, help="frames sampled uniformly over the video")
    run.add_argument("--ratio", type=float, default=None,
                     help="retention ratio in (0, 1] (default: 0.1, or the preset's)")
    run.add_argument("--preset", help="TangoConfig preset, e.g. llava-video (`tango-plugin info` lists them)")
    run.add_argument("--config", help="TangoConfig as JSON (instead of a preset; --ratio still overrides)")
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.add_argument("--device", default="cpu", help="cpu or cuda")
    run.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    run.add_argument("--compare", action="store_true", help="also run the unpruned model and show both")
    run.add_argument("--picture", help="PNG of the tokens kept in the video")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: a clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
