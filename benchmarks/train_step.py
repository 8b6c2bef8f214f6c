"""Training-step benchmark: LoRA fine-tuning of a Qwen2-VL model, full vs Tango-pruned video tokens (random weights).

The model is a Qwen2-VL whose language model has the shape of Qwen2-0.5B (hidden 896, 24 layers, 14 heads, 2 KV
heads, intermediate 4864, tied embeddings, SDPA) but a small vocabulary (`--vocab`, default 8192 instead of 151936:
the benchmark is about the video tokens, and a 151936-wide logits tensor over every position would add ~2 GB of
float32 that has nothing to do with pruning). The vision tower is the narrow one of benchmarks/prefill.py (2 blocks,
embed 128, 2 heads, patch 14, 2 x 2 merge, output 896), frozen. Frames are independent noise (no static tokens, so
Tango keeps about r of the video tokens: the conservative case for speed).

The video: `--frames` frames (default 32) of `--grid` x `--grid` merged tokens per temporal patch of 2 frames, i.e.
frames of 28 * grid pixels (grid 14 = 392 px, the real Qwen2-VL geometry of prefill.py; grid 7 = 196 px). 32 frames
at grid 14 give 16 x 196 = 3136 video tokens. The prompt: 14 text tokens, the video, 24 question tokens and
`--answer` answer tokens; labels are -100 everywhere except on the answer.

One training step = `model(**inputs, labels=labels)` + `loss.backward()` + `AdamW.step()` on the LoRA parameters
(peft, r=16, alpha=32, on the language model's q/k/v/o and gate/up/down projections only; the vision tower and the
merger get no adapters) + `zero_grad`. Pruning is `tango_plugin.enable(peft_model, TangoConfig(retention_ratio=r))`
(it unwraps the PeftModel to its base model; labels are shortened with the video tokens).

Every row runs in a fresh subprocess (same seed, same weights), so that its peak memory is its own: "peak RSS" is
`resource.getrusage(RUSAGE_SELF).ru_maxrss` of that process at the end (weights, LoRA, optimizer state, activations;
torch has no CPU allocator statistics), "step extra" is that peak minus the RSS just before the first step (what
the training step itself adds). Each row: `--warmup` steps, then the median of `--repeats` steps.

Usage:
    python benchmarks/train_step.py                              # 32 frames, grid 14, ratios 0.5 0.25 0.1
    python benchmarks/train_step.py --grid 7 --repeats 5         # 784 video tokens unpruned
    python benchmarks/train_step.py --gradient-checkpointing
    python benchmarks/train_step.py --dtype bfloat16             # CPUs / GPUs with bf16 matrix units
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prefill import DTYPES, FPS, LLM, make_frames, sync, warn_slow_bf16  # noqa: E402

import tango_plugin as tango  # noqa: E402
from tango_plugin.testing import qwen_patches  # noqa: E402

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
ROW_TAG = "TRAIN_STEP_ROW "


# ------------------------------------------------------------------------------------------------- model
def build(args, device, dtype):
    """The Qwen2-VL model (random weights, built directly in `dtype` so that construction does not set the memory
    high-water mark), LoRA on the LLM, and one training example with labels on the answer only."""
    import peft
    import transformers as tf

    v = args.vocab
    ids = dict(image_token_id=v - 4, video_token_id=v - 3, vision_start_token_id=v - 2, vision_end_token_id=v - 1)
    text = dict(LLM, vocab_size=v, num_hidden_layers=args.layers, bos_token_id=v - 6, eos_token_id=v - 5,
                pad_token_id=v - 6, rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12],
                                                     "rope_theta": 1e6})
    vision = dict(depth=2, embed_dim=128, hidden_size=896, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = tf.Qwen2VLForConditionalGeneration(cfg).to(device)
    finally:
        torch.set_default_dtype(old)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = peft.get_peft_model(model, lora)
    model.train()

    patches, grid = qwen_patches(make_frames(args.frames, 28 * args.grid, "noise"), 14)
    n_video = grid[0] * grid[1] * grid[2] // 4
    g = torch.Generator().manual_seed(0)
    head, tail, answer = (torch.randint(0, v - 8, (n,), generator=g).tolist() for n in (14, 24, args.answer))
    seq = head + [cfg.vision_start_token_id] + [cfg.video_token_id] * n_video + [cfg.vision_end_token_id] + tail
    input_ids = torch.tensor([seq + answer], device=device)
    labels = torch.tensor([[-100] * len(seq) + answer], device=device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
              "mm_token_type_ids": (input_ids == cfg.video_token_id).int() * 2,
              "pixel_values_videos": patches.to(device, dtype), "video_grid_thw": torch.tensor([grid])}
    return model, inputs, n_video


def lora_targets(model) -> List[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")})


# ------------------------------------------------------------------------------------------------- one row
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_row(args, r: float) -> dict:
    """Build, (maybe) enable Tango, warm up, time `--repeats` steps. Runs inside the row's own process."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    model, inputs, n_video = build(args, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    lm = model.get_base_model().model.language_model
    seen: List[int] = []

    def record(_module, a, kw):  # returns None: the inputs are unchanged
        x = kw.get("inputs_embeds")
        seen.append(int(x.shape[1]) if x is not None else int(kw["input_ids"].shape[1]))

    lm.register_forward_pre_hook(record, with_kwargs=True)
    handle = tango.enable(model, tango.TangoConfig(retention_ratio=r), fps=FPS) if r < 1.0 else None

    def step() -> tuple:
        sync(device)
        t0 = time.perf_counter()
        out = model(**inputs)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0, float(out.loss.detach())

    rss_before, maxrss_before = _rss(), _maxrss()
    for _ in range(args.warmup):
        step()
    if handle is not None:
        handle.reset()
    runs = [step() for _ in range(args.repeats)]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _maxrss())
    visual = n_video
    if handle is not None:
        rep = handle.report()
        visual = rep["samples"][0]["visual_tokens_after"]
        prune_s = rep["total_prune_seconds"] / max(1, rep["pruned_calls"])
    else:
        prune_s = 0.0
    return {"r": r, "visual": visual, "seq": seen[-1], "step": statistics.median(t for t, _ in runs),
            "steps": [t for t, _ in runs], "loss": runs[-1][1], "losses": [x for _, x in runs],
            "peak": peak, "before": rss_before, "build_peak_dominates": device.type == "cpu" and maxrss_before >= peak,
            "prune_s": prune_s, "trainable": sum(p.numel() for p in params), "targets": lora_targets(model),
            "video_tokens": n_video}


# ------------------------------------------------------------------------------------------------- driver
HEADER = ("| retention | video tokens into LLM | tokens into LLM | step ms (median) | speed-up | pruning ms | "
          "peak RSS GiB | step extra GiB | loss |")


def _fmt_row(row: dict, full: Optional[dict]) -> str:
    name = "full" if row["r"] >= 1.0 else f"{row['r']:.2f}"
    speed = f"{full['step'] / row['step']:.2f}x" if full else "-"
    extra = (row["peak"] - row["before"]) / 2**30
    extra_s = f"<={extra:.2f}" if row["build_peak_dominates"] else f"{extra:.2f}"
    loss = f"{row['loss']:.3f}" + ("" if math.isfinite(row["loss"]) else " (NOT FINITE)")
    return (f"| {name} | {row['visual']} | {row['seq']} | {row['step'] * 1e3:.0f} | {speed} | "
            f"{row['prune_s'] * 1e3:.0f} | {row['peak'] / 2**30:.2f} | {extra_s} | {loss} |")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _child_argv(args, r: float) -> List[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--row", repr(r), "--frames", str(args.frames),
            "--layers", str(args.layers), "--grid", str(args.grid), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--dtype", args.dtype, "--vocab", str(args.vocab),
            "--answer", str(args.answer), "--device", args.device]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    return argv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.1],
                   help="retention ratios (the unpruned row is always measured first)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--layers", type=int, default=24, help="LLM decoder layers (Qwen2-0.5B: 24)")
    p.add_argument("--grid", type=int, default=7,
                   help="merged video tokens per side per temporal patch of 2 frames (14: 392 px frames)")
    p.add_argument("--repeats", type=int, default=3, help="measured steps per row (median)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per row first")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="model.gradient_checkpointing_enable() on the base model before LoRA")
    p.add_argument("--vocab", type=int, default=8192, help="LLM vocabulary (Qwen2: 151936)")
    p.add_argument("--answer", type=int, default=16, help="answer tokens (the only labelled positions)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--row", type=float, default=None, help=argparse.SUPPRESS)  # internal: one row, JSON out
    args = p.parse_args(argv)

    if args.row is not None:
        print(ROW_TAG + json.dumps(run_row(args, args.row)), flush=True)
        return 0

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    threads = args.threads or torch.get_num_threads()
    cpu = _cpu_name()
    print(f"# {datetime.date.today()} device={device} cpu={cpu!r} ({os.cpu_count()} logical cpus, "
          f"{torch.backends.cpu.get_cpu_capability()}) threads={threads} dtype={args.dtype} torch={torch.__version__}",
          flush=True)
    video = (args.frames + 1) // 2 * args.grid**2
    print(f"# Qwen2-VL, LLM Qwen2-0.5B-shaped ({args.layers} layers, vocab {args.vocab}, random), vision tower "
          f"2 blocks x embed 128 (frozen), {args.frames} frames at {28 * args.grid} px = {video} video tokens, "
          f"LoRA r=16 on the LLM's q/k/v/o/gate/up/down, AdamW, answer {args.answer} tokens, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, warm-up {args.warmup}, "
          f"median of {args.repeats}, one subprocess per row; peak = ru_maxrss; load average before "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    warn_slow_bf16(device, dtype)
    print(HEADER)
    print("|" + "---|" * (HEADER.count(" | ") + 1))
    full, failed = None, 0
    for r in [1.0] + sorted((x for x in args.ratios if x < 1.0), reverse=True):
        t0 = time.perf_counter()
        proc = subprocess.run(_child_argv(args, r), capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(ROW_TAG)]
        if proc.returncode != 0 or not lines:
            failed += 1
            print(f"| {'full' if r >= 1.0 else f'{r:.2f}'} | FAILED (exit {proc.returncode}) | | | | | | | |",
                  flush=True)
            print(proc.stderr[-4000:], file=sys.stderr, flush=True)
            continue
        row = json.loads(lines[-1][len(ROW_TAG):])
        if full is None and r >= 1.0:
            full = row
            print(f"# LoRA targets {row['targets']}, {row['trainable']} trainable parameters", file=sys.stderr)
        print(_fmt_row(row, full), flush=True)
        print(f"#   r={r}: steps {[round(t, 2) for t in row['steps']]} s, losses "
              f"{[round(x, 4) for x in row['losses']]}, row wall {time.perf_counter() - t0:.0f} s, load average after "
              f"{os.getloadavg()[0]:.1f}", file=sys.stderr,
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
