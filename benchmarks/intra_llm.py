"""Intra-LLM stage benchmark: the two-stage LLaVA-Video setting against pre-LLM pruning alone, same run.

The model is `prefill.py`'s LLaVA-OV form (Qwen2-0.5B-shaped LLM: 24 layers, random weights, bf16, SDPA, 32 frames
of 196 tokens). Rows, each at the same layer-averaged visual-token share `--target` (default 0.1):

* `pre-LLM only`: Tango keeps `target` of the video tokens before the LLM;
* `two-stage`: Tango keeps `TangoConfig.pre_llm_retention(target, 24, K, 0.5)` before the LLM and the intra-LLM
  stage halves each video at layer K (default K = 15, the paper's 18 of 28 scaled to 24 layers), as the
  LLaVA-Video runs do.

Columns: visual tokens entering the LLM and left after layer K, the layer-averaged share, LLM prefill time, time to
first token, and the median time of one decode step (from one language-model call to the next; layers >= K attend
over the shorter cache). Medians of `--reps` after a warm-up.

Usage:
    python benchmarks/intra_llm.py            # 32 frames, 3 reps
    python benchmarks/intra_llm.py --quick    # 16 frames, 1 rep
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prefill import DTYPES, FPS, build_llava, median_of, sync, timed_generate, warn_slow_bf16  # noqa: E402

import tango_plugin as tango  # noqa: E402

LAYERS = 24


def timed_decode(model, inputs, device, new_tokens: int) -> float:
    """Median seconds of one decode step (from one language-model call to the next, sampling included)."""
    lm = model.model.language_model
    starts = []

    def mark(*_):
        sync(device)
        starts.append(time.perf_counter())

    hook = lm.register_forward_pre_hook(mark)
    try:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    finally:
        hook.remove()
    return statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 frames, 1 rep")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--target", type=float, default=0.1, help="layer-averaged share of video tokens")
    p.add_argument("--layer", type=int, default=15, help="intra-LLM layer K (of 24)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES),
                   help="model dtype (bfloat16 as the issue asks; float32 on CPUs without bf16 matrix units)")
    args = p.parse_args(argv)
    frames = args.frames or (16 if args.quick else 32)
    reps = args.reps or (1 if args.quick else 3)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model, inputs = build_llava(frames, device, dtype)
    model.generation_config.eos_token_id = None
    visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
    r_pre = tango.TangoConfig.pre_llm_retention(args.target, LAYERS, args.layer, 0.5)
    settings = [
        ("unpruned", None),
        (f"pre-LLM only (r={args.target:g})", tango.TangoConfig(retention_ratio=args.target)),
        (f"two-stage (r_pre={r_pre:.4f}, K={args.layer}, p=0.5)",
         tango.TangoConfig(retention_ratio=r_pre, intra_llm_layer=args.layer, intra_llm_ratio=0.5)),
    ]
    print(f"device={device} threads={torch.get_num_threads()} dtype={args.dtype} attn=sdpa frames={frames} "
          f"reps={reps} LLM layers={LAYERS}")
    warn_slow_bf16(device, dtype)
    header = ("| setting | visual tokens into LLM | after layer K | layer-averaged share | LLM prefill s | TTFT s | "
              "decode ms/token | TTFT speed-up | decode speed-up |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    base = None
    for name, cfg in settings:
        handle = tango.enable(model, cfg, fps=FPS) if cfg is not None else None
        try:
            timed_generate(model, inputs, device)  # warm-up
            res = median_of(lambda: timed_generate(model, inputs, device), reps)
            decode = statistics.median(timed_decode(model, inputs, device, args.new_tokens) for _ in range(reps))
            row = handle.report()["samples"][0] if handle else {}
        finally:
            if handle:
                handle.remove()
        into = row.get("visual_tokens_after", visual)
        after = row.get("intra_llm_tokens_after")
        k = args.layer if after is not None else LAYERS
        share = (k * into + (LAYERS - k) * (after if after is not None else into)) / (LAYERS * visual)
        base = base or (res["ttft"], decode)
        print(f"| {name} | {into} | {'-' if after is None else after} | {share:.3f} | {res['prefill']:.3f} | "
              f"{res['ttft']:.3f} | {decode * 1e3:.1f} | {base[0] / res['ttft']:.2f}x | {base[1] / decode:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
