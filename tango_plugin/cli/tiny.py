"""`tango-plugin tiny MODEL_TYPE OUTPUT_DIR`: write a tiny random checkpoint folder (weights, config, tokenizer,
processor with a chat template; no downloads); `tango-plugin clip OUT.mp4`: a small synthetic video. The commands of
docs/ run on these as written."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    from ..testing.checkpoints import CHECKPOINT_MODEL_TYPES

    tiny = sub.add_parser("tiny", help="write a tiny random checkpoint folder (no downloads) for trying commands")
    tiny.add_argument("model_type", choices=CHECKPOINT_MODEL_TYPES)
    tiny.add_argument("output", help="the folder to write (created)")
    tiny.add_argument("--side", type=int, default=112, help="frame side in pixels the processor resizes to")
    tiny.add_argument("--head-dim", type=int, default=None, choices=[16, 32, 64],
                      help="the LLM's attention head size (32 for vLLM's CPU backend, which takes 32 and up)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--tango", help="a tango section (JSON object of knobs) to write into config.json")
    tiny.set_defaults(func=cmd_tiny)
    clip = sub.add_parser("clip", help="write a small synthetic video file (MPEG-4) for trying commands")
    clip.add_argument("output", help="the .mp4 file to write")
    clip.add_argument("--frames", type=int, default=16)
    clip.add_argument("--fps", type=int, default=8)
    clip.add_argument("--side", type=int, default=112, help="width and height in pixels")
    clip.set_defaults(func=cmd_clip)


def cmd_clip(args: argparse.Namespace) -> int:
    from ..testing.clips import write_clip

    path = write_clip(args.output, args.frames, args.fps, side=args.side)
    print(f"wrote {path}: {args.frames} frames at {args.fps} fps, {args.side} x {args.side} px")
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from ..testing.checkpoints import save_tiny_checkpoint

    section = None
    if args.tango is not None:
        try:
            section = json.loads(args.tango)
        except json.JSONDecodeError as err:
            raise ValueError(f"--tango={args.tango!r} is not valid JSON ({err}); expected an object of tango knobs, "
                             "e.g. '{\"tango_ratio\": 0.2}'") from None
        if not isinstance(section, dict):
            raise ValueError(f"--tango={args.tango!r} is not allowed; expected a JSON object of tango knobs")
        from ..knobs import config_from_knobs

        config_from_knobs(section)  # a bad knob is an error now, not when the folder is loaded
    folder = save_tiny_checkpoint(args.output, args.model_type, seed=args.seed, side=args.side,
                                  head_dim=args.head_dim, tango=section)
    print(f"wrote a tiny random {args.model_type} checkpoint to {folder} (random weights: the answers are noise)")
    return 0
