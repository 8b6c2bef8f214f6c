"""Command line: `tango-plugin demo | info | prune | run | matrix | profile | generalize | tiny | clip`.

    tango-plugin demo                 # generated video, no downloads: engine + tiny random Video LLMs
    tango-plugin info                 # registered strategies, adapters and presets
    tango-plugin prune tokens.pt      # run the engine on saved tensors (features, saliency, grid_hw, ...)
    tango-plugin run --model DIR --video clip.mp4 --question "..." --compare   # a local checkpoint on a video file
    tango-plugin matrix --adapters qwen2_vl --strategies tango topk --ratios 0.1   # adapters x strategies x ratios
    tango-plugin profile --tiny qwen2_vl --repeats 3   # per-stage times and memory, unpruned vs pruned (also --model)
    tango-plugin generalize --model DIR --strategy tango visionzip --ratio 0.1 0.2 --tasks videomme --output runs/g
    tango-plugin tiny qwen2_vl ./tiny-qwen2-vl         # a tiny random checkpoint folder for trying the docs' commands
    tango-plugin clip videos/clip_a.mp4 --frames 16 --fps 8   # a small synthetic video file
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .demo import cmd_demo
from .generalize import add_parser as add_generalize_parser
from .info import cmd_info
from .matrix import add_parser as add_matrix_parser
from .profile import add_parser as add_profile_parser
from .prune import cmd_prune
from .run import cmd_run
from .tiny import add_parser as add_tiny_parser


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
    run.add_argument("--video", required=True, help="video file (mp4, mkv, webm, ...)")
    run.add_argument("--video-backend", default="auto",
                     help="decoder for transformers' video loader: auto (decord if installed, else pyav), decord, "
                          "pyav, opencv or torchcodec")
    run.add_argument("--timestamps", help="seconds of the sampled frames, comma-separated, one per sampled frame "
                                          "(default: frame index / fps from the file)")
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
    run.add_argument("--picture", help="PNG of the kept tokens drawn over the sampled frames")
    run.add_argument("--json", action="store_true",
                     help="print the run and its report as one JSON object on stdout (nothing else there)")
    run.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    run.set_defaults(func=cmd_run)
    add_matrix_parser(sub)
    add_profile_parser(sub)
    add_generalize_parser(sub)
    add_tiny_parser(sub)
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
