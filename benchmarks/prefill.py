"""Prefill benchmark: Tango through `tango_plugin.enable` on Qwen2-0.5B-shaped Video LLMs (random weights).

Two model forms share the LLM shape of Qwen2-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864,
vocab 151936, tied embeddings), bf16, SDPA:

* LLaVA-OV: a small SigLIP-shaped tower at the real geometry (384 px, patch 14: 27 x 27 patches, bilinear-pooled to
  14 x 14 = 196 tokens per frame), so 32 frames give 32 x 196 + 1 visual tokens, as the 7B model sees them. The
  tower is narrow (it would dominate CPU time otherwise and is not what pruning speeds up).
* Qwen2-VL: a small ViT at 392 px (28 x 28 patches -> 14 x 14 = 196 merged tokens per temporal patch of 2 frames),
  so 32 frames give 16 x 196 visual tokens.

For each retention ratio it reports the visual tokens the LLM receives, the LLM prefill time, the time to first
token (TTFT, `generate(max_new_tokens=1)`, vision tower included), the pruning overhead (saliency hooks, strategy,
splice) and its share of the pruned LLM prefill, peak memory of the call, the speed-up over the unpruned model and
the "ideal" speed-up: the unpruned model's vision time plus an LLM prefill of an input that is already that short
(no pruning work at all).
Each row: one warm-up run, then the median of `--reps` runs, the pruning overhead included (the median of the
calls' own pruning times, each call's listed on a line before the row; until 2026-12-08 this column was their
mean).

Usage:
    python benchmarks/prefill.py            # 32 frames, ratios 1.0 0.2 0.15 0.1, 3 reps
    python benchmarks/prefill.py --quick    # 1 rep, 16 frames
    python benchmarks/prefill.py --dtype float32   # CPUs without bf16 matrix units (AVX2 only)
    python benchmarks/prefill.py --ratios 0.1 --overhead-only   # the pruning overhead's share at r = 0.1 only
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time
from typing import Callable, Dict, List

import torch

import tango_plugin as tango
from tango_plugin.testing import VideoSpec, qwen_patches, synthetic_frames

# The sampled frames' rate: ST-RoPE times are frame / FPS seconds (a 32 s clip at 32 frames).
FPS = 1.0
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def warn_slow_bf16(device: torch.device, dtype: torch.dtype) -> None:
    """Say so when bf16 runs on a CPU without bf16 matrix support: its products are then emulated, 100x slower
    than float32 (seen on an AVX2-only EPYC), and the timings say nothing about pruning."""
    capability = torch.backends.cpu.get_cpu_capability()
    if device.type == "cpu" and dtype == torch.bfloat16 and "512" not in capability:
        print(f"note: this CPU's best vector unit is {capability} (no bf16 matrix support); bf16 products are "
              "emulated and very slow here. Use --dtype float32 on this machine.", flush=True)


LLM = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
           num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=32768, bos_token_id=151643,
           eos_token_id=151645, pad_token_id=151643)


# ------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak, or sampled RSS on CPU (5 ms period)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        gc.collect()
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.top = self.base
            self.running = True

            def sample():
                while self.running:
                    self.top = max(self.top, self._rss())
                    time.sleep(0.005)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, self._rss()) - self.base


def _trim_heap() -> None:
    """Give freed heap pages back to the OS, so that the RSS peak of the next call is its own (glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- models
def make_frames(frames: int, size: int, kind: str) -> torch.Tensor:
    """(F, 3, size, size) in [-1, 1]. "noise": every frame independent (no static tokens: Tango keeps about r of the
    tokens, the conservative case for speed); "smooth": a slowly drifting pattern (mostly static tokens, which
    Tango collapses per segment, so far fewer than r survive)."""
    if kind == "smooth":
        return synthetic_frames(VideoSpec(frames), size, frames)
    g = torch.Generator().manual_seed(0)
    return torch.rand(frames, 3, size, size, generator=g) * 2 - 1


def build_llava(frames: int, device, dtype, video: str = "noise"):
    import transformers as tf

    vision = tf.SiglipVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=384, patch_size=14, vision_use_head=False)
    cfg = tf.LlavaOnevisionConfig(vision_config=vision, text_config=tf.Qwen2Config(**LLM), vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", image_grid_pinpoints=[[384, 384]],
                                  image_token_index=151646, video_token_index=151647)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = tf.LlavaOnevisionForConditionalGeneration(cfg).to(device, dtype).eval()
    pv = make_frames(frames, 384, video)[None].to(device, dtype)
    n_video = frames * 196 + 1
    ids = _prompt_ids(cfg.video_token_index, n_video, device)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pv}


def build_qwen2vl(frames: int, device, dtype, video: str = "noise"):
    import transformers as tf

    text = dict(LLM, rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6})
    vision = dict(depth=2, embed_dim=128, hidden_size=896, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = tf.Qwen2VLForConditionalGeneration(cfg).to(device, dtype).eval()
    patches, grid = qwen_patches(make_frames(frames, 392, video), 14)
    n_video = grid[0] * grid[1] * grid[2] // 4
    ids = _prompt_ids(cfg.video_token_id, n_video, device, start=cfg.vision_start_token_id,
                      end=cfg.vision_end_token_id)
    mm = (ids == cfg.video_token_id).int() * 2
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm,
                   "pixel_values_videos": patches.to(device, dtype), "video_grid_thw": torch.tensor([grid])}


def _prompt_ids(video_id: int, n_video: int, device, start=None, end=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    head = torch.randint(1000, 100000, (14,), generator=g).tolist()
    tail = torch.randint(1000, 100000, (24,), generator=g).tolist()
    mid = ([start] if start is not None else []) + [video_id] * n_video + ([end] if end is not None else [])
    return torch.tensor([head + mid + tail], device=device)


# ------------------------------------------------------------------------------------------------- timing
def timed_generate(model, inputs, device) -> Dict[str, float]:
    """One `generate(max_new_tokens=1)`: TTFT, LLM prefill time (hooked), peak memory."""
    lm = model.model.language_model
    marks: List[float] = []

    def mark(*_):  # returns None: a hook's return value would replace the module's inputs / output
        sync(device)
        marks.append(time.perf_counter())

    h1 = lm.register_forward_pre_hook(mark)
    h2 = lm.register_forward_hook(mark)
    try:
        with torch.inference_mode(), PeakMemory(device) as mem:
            sync(device)
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            sync(device)
            ttft = time.perf_counter() - t0
    finally:
        h1.remove()
        h2.remove()
    return {"ttft": ttft, "prefill": marks[1] - marks[0], "peak": mem.peak}


def timed_ideal_prefill(model, length: int, device, dtype, mrope: bool) -> float:
    """LLM prefill of an input that is already `length` tokens long (no vision, no pruning)."""
    lm = model.model.language_model
    x = torch.randn(1, length, lm.config.hidden_size, device=device, dtype=dtype)
    pos = torch.arange(length, device=device)[None]
    if mrope:
        pos = pos[None].expand(3, 1, -1)
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        lm(inputs_embeds=x, position_ids=pos, use_cache=True)
        sync(device)
    return time.perf_counter() - t0


def median_of(fn: Callable[[], Dict[str, float]], reps: int) -> Dict[str, float]:
    runs = [fn() for _ in range(reps)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench(name: str, builder, args, device, dtype) -> List[dict]:
    model, inputs = builder(args.frames, device, dtype, args.video)
    mrope = name != "LLaVA-OV"
    rows = []
    # warm-up: allocator, kernels and the engine, on a short pruned run
    with tango.enabled(model, tango.TangoConfig(retention_ratio=min(args.ratios)), fps=FPS):
        timed_generate(model, inputs, device)
    full = None
    for r in sorted(args.ratios, reverse=True):
        cfg = tango.TangoConfig(retention_ratio=r, strategy=args.strategy)
        if r >= 1.0:
            res = median_of(lambda: timed_generate(model, inputs, device), args.reps)  # the stock model
            visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
            seq, overhead = inputs["input_ids"].shape[1], 0.0
        else:
            with tango.enabled(model, cfg, fps=FPS) as h:
                timed_generate(model, inputs, device)  # warm-up at this ratio
                h.reset()
                per_call = []

                def pruned_run():
                    out = timed_generate(model, inputs, device)
                    # this call's pruning time (its rows of the report), so that the row takes its median too
                    out["overhead"] = sum(s["prune_seconds"] for s in h.report()["samples"])
                    per_call.append(out["overhead"])
                    return out

                res = median_of(pruned_run, args.reps)
                rep = h.report()
                visual = rep["samples"][0]["visual_tokens_after"]
                overhead = res["overhead"]
                print(f"   {name} r={r}: pruning overhead per call {', '.join(f'{v:.3f}' for v in per_call)} s "
                      f"(median {overhead:.3f}, mean {statistics.mean(per_call):.3f})", flush=True)
                seq = inputs["input_ids"].shape[1] - rep["samples"][0]["visual_tokens_before"] + visual
        if r >= 1.0:
            ideal_prefill = res["prefill"]  # the full input is its own ideal
        else:
            ideal_prefill = statistics.median(timed_ideal_prefill(model, seq, device, dtype, mrope)
                                              for _ in range(args.reps))
        if full is None:
            full = res if r >= 1.0 else {k: float("nan") for k in res}  # --overhead-only: no unpruned baseline
        vision_time = full["ttft"] - full["prefill"]
        rows.append({
            "model": name, "r": r, "visual": visual, "seq": seq, "prefill": res["prefill"], "ttft": res["ttft"],
            "overhead": overhead, "peak": res["peak"], "speedup": full["ttft"] / res["ttft"],
            "prefill_speedup": full["prefill"] / res["prefill"], "ideal_prefill": ideal_prefill,
            "ideal_speedup": full["ttft"] / (vision_time + ideal_prefill),
        })
        print(_fmt_row(rows[-1]), flush=True)
    return rows


HEADER = ("| model | retention | visual tokens | seq len | LLM prefill s | TTFT s | pruning overhead s "
          "| overhead / pruned prefill | peak mem GiB | TTFT speed-up | prefill speed-up | ideal prefill s "
          "| ideal TTFT speed-up |")


def _share(r: dict) -> str:
    return f"{100 * r['overhead'] / r['prefill']:.1f}%" if r["r"] < 1.0 else "-"


def _fmt_row(r: dict) -> str:
    return (f"| {r['model']} | {r['r']:.2f} | {r['visual']} | {r['seq']} | {r['prefill']:.3f} | {r['ttft']:.3f} | "
            f"{r['overhead']:.3f} | {_share(r)} | {r['peak'] / 2**30:.2f} | {r['speedup']:.2f}x | "
            f"{r['prefill_speedup']:.2f}x | {r['ideal_prefill']:.3f} | {r['ideal_speedup']:.2f}x |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 rep, 16 frames (a short run)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default 32; --quick: 16)")
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.2, 0.15, 0.1])
    p.add_argument("--reps", type=int, default=None, help="measured runs per row (median; default 3, --quick 1)")
    p.add_argument("--models", nargs="+", default=["llava_onevision", "qwen2_vl"],
                   choices=["llava_onevision", "qwen2_vl"])
    p.add_argument("--strategy", default="tango")
    p.add_argument("--video", default="noise", choices=["noise", "smooth"],
                   help="synthetic frames: independent noise (no static tokens) or a smooth drifting pattern")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES),
                   help="model dtype (bfloat16 as the issue asks; float32 on CPUs without bf16 matrix units)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--overhead-only", action="store_true",
                   help="only the pruned ratios (no unpruned baseline: the speed-up columns are nan)")
    args = p.parse_args(argv)
    args.frames = args.frames or (16 if args.quick else 32)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.overhead_only:
        args.ratios = [r for r in args.ratios if r < 1.0]
    elif 1.0 not in args.ratios:
        args.ratios = [1.0, *args.ratios]  # speed-ups need the unpruned baseline
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    print(f"device={device} threads={torch.get_num_threads()} dtype={args.dtype} attn=sdpa frames={args.frames} "
          f"reps={args.reps} strategy={args.strategy} video={args.video}", flush=True)
    warn_slow_bf16(device, dtype)
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    builders = {"llava_onevision": ("LLaVA-OV", build_llava), "qwen2_vl": ("Qwen2-VL", build_qwen2vl)}
    for key in args.models:
        name, builder = builders[key]
        bench(name, builder, args, device, dtype)


if __name__ == "__main__":
    main()
