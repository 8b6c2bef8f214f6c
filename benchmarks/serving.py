"""Serving benchmark: a real vLLM server per method (unpruned, vLLM's EVS, Tango, any other strategy), concurrent
video requests through the OpenAI client, request throughput, TTFT p50 / p99 and prompt tokens; and each method's
selection cost per video next to EVS's, measured in the same process on the same tensors.

    python benchmarks/serving.py --python build/vllm-venv/bin/python                 # CPU, a small model shape
    python benchmarks/serving.py --python .../bin/python --model Qwen/Qwen2.5-VL-7B-Instruct --device cuda \\
        --frames 64 --side 448 --concurrency 1 4 16 32

Every request carries its own generated clip and question (no prefix or encoder cache hits between requests);
each concurrency level sends `--rounds` bursts of that many simultaneous requests after one warm-up request, and
reports the warm numbers: throughput = requests / wall time of the bursts; TTFT from the first streamed token.
The CPU default is a Qwen2.5-VL-shaped random model (LLM: 8 layers, width 512, 8 heads of 64; ViT: 4 layers of
width 128), bfloat16, 32 frames of 224 x 224 px at 2 fps (16 temporal patches of 8 x 8 tokens: 1,024 video tokens a
request), 16 new tokens. Say which machine, threads and load the numbers came from (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(np.floor(k)), int(np.ceil(k))
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def write_clips(folder: Path, count: int, frames: int, side: int, fps: float) -> list:
    """`count` distinct clips: a bright square moving over a textured background, a different path per clip."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"clip{i:03d}.mp4"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(1000 + i)
        base = (rng.random((side, side, 3)) * 120).astype(np.uint8)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=int(fps))
            stream.width = stream.height = side
            stream.pix_fmt, stream.bit_rate = "yuv420p", 8_000_000
            x, y = rng.integers(0, side // 2, 2)
            dx, dy = rng.integers(-side // 16, side // 16 + 1, 2)
            for _ in range(frames):
                frame = base.copy()
                frame[y % (side - 32):y % (side - 32) + 32, x % (side - 32):x % (side - 32) + 32] = (250, 40, 40)
                x, y = x + dx, y + dy
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return paths


def default_model(folder: Path) -> str:
    from tango_plugin.testing.checkpoints import save_tiny_checkpoint

    if (folder / "config.json").exists():
        return str(folder)
    text = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_key_value_heads=2)
    vision = dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=512)
    return save_tiny_checkpoint(str(folder), "qwen2_5_vl", side=224, head_dim=64, text_overrides=text,
                                vision_overrides=vision)


def run_burst(python: str, base_url: str, model: str, requests: list, work: Path) -> dict:
    spec = work / "burst.json"
    out = work / "burst.out.json"
    spec.write_text(json.dumps({"base_url": base_url, "model": model, "requests": requests}))
    proc = subprocess.run([python, "-m", "tango_plugin.testing.vllm_client", str(spec), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(out.read_text())


def method_server(method: str, ratio: float):
    """(tango section or None, extra server args) of a method."""
    if method == "unpruned":
        return None, []
    if method == "evs":
        # vLLM's own EVS at the same kept share: rate q = 1 - r (vLLM computes its count from q)
        return None, ["--video-pruning-rate", str(round(1.0 - ratio, 6))]
    return {"tango_ratio": ratio, "tango_strategy": method, "tango_report": "REPORT"}, []


def selection_cost(python: str, methods: list, ratio: float, shape: tuple, repeats: int = 5) -> dict:
    """Median seconds per video of each method's selection on one (T * L, D) embedding tensor, in the vLLM
    environment (vLLM's `compute_retention_mask` for EVS; `run_strategy` with the exact budget for ours)."""
    T, L, D = shape
    code = f"""
import json, time, statistics, torch
from vllm.multimodal.video_prune.evs import compute_retention_mask
from tango_plugin import TangoConfig, VisualTokens, run_strategy
torch.manual_seed(0)
T, L, D, side = {T}, {L}, {D}, int({L} ** 0.5)
emb = torch.randn(T * L, D)
sal = torch.rand(T, L)
out = {{}}
def timed(fn):
    fn(); times = []
    for _ in range({repeats}):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times)
out["evs"] = timed(lambda: compute_retention_mask(emb, (T, side * 2, side * 2), 2, {1.0 - ratio}))
for name in {json.dumps([m for m in methods if m not in ("unpruned", "evs")])}:
    cfg = TangoConfig(retention_ratio={ratio}, strategy=name, exact_budget=True)
    tokens = VisualTokens(features=emb.reshape(T, L, D), saliency=sal, grid_hw=(side, side),
                          timestamps=torch.arange(T, dtype=torch.float64))
    out[name] = timed(lambda: run_strategy(tokens, cfg))
print(json.dumps(out))
"""
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="python of the environment with vLLM and tango_plugin")
    parser.add_argument("--model", help="checkpoint folder (default: a random Qwen2.5-VL-shaped model, written once)")
    parser.add_argument("--methods", nargs="+", default=["unpruned", "evs", "tango"],
                        help="unpruned, evs (vLLM's), or any registered strategy name")
    parser.add_argument("--ratio", type=float, default=0.25, help="share of video tokens kept (EVS: rate 1 - r)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--rounds", type=int, default=2, help="bursts per concurrency level")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--work", default=str(ROOT / "build" / "serving-bench"))
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for the server")
    args = parser.parse_args()

    from tango_plugin.testing.vllm_server import vllm_server

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(work / "model")
    total = 1 + args.rounds * sum(args.concurrency)
    # the same clips and questions for every method (each method has its own server, so nothing is cached across)
    clips = write_clips(work / "clips", total, args.frames, args.side, args.fps)
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "8"), "HF_HUB_OFFLINE": "1"}
    server_args = ["--max-model-len", "16384", "--dtype", args.dtype, "--allowed-local-media-path",
                   str(work / "clips"), "--limit-mm-per-prompt", json.dumps({"video": 1}),
                   "--media-io-kwargs", json.dumps({"video": {"num_frames": args.frames}}),
                   "--trust-request-mm-kwargs", "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
                   "--max-num-seqs", str(max(args.concurrency)), *args.server_arg]
    if args.device == "cpu":
        server_args.append("--enforce-eager")
    rows = []
    for method in args.methods:
        clip_index = 0
        tango, extra = method_server(method, args.ratio)
        report = work / f"report-{method}.jsonl"
        if report.exists():
            report.unlink()
        if tango is not None:
            tango = {**tango, "tango_report": str(report)}
        started = time.perf_counter()
        with vllm_server(args.python, model, tango=tango, extra_args=server_args + extra, env=env,
                         log_path=work / f"serve-{method}.log", startup_timeout=900) as server:
            startup = time.perf_counter() - started

            def burst(n):
                nonlocal clip_index
                reqs = []
                for _ in range(n):
                    reqs.append({"name": f"q{clip_index}", "video_url": clips[clip_index].as_uri(),
                                 "question": f"Question {clip_index}: where does the red square go?",
                                 "max_tokens": args.max_tokens})
                    clip_index += 1
                return run_burst(args.python, server["base_url"], model, reqs, work)

            burst(1)  # warm-up
            for c in args.concurrency:
                results, seconds = [], 0.0
                for _ in range(args.rounds):
                    out = burst(c)
                    seconds += out["seconds"]
                    results.extend(out["requests"].values())
                errors = [r["error"] for r in results if r.get("error")]
                if errors:
                    raise RuntimeError(f"{method}, concurrency {c}: {errors[0]}")
                rows.append({"method": method, "concurrency": c, "requests": len(results),
                             "throughput": len(results) / seconds,
                             "ttft_p50": percentile([r["ttft"] for r in results], 0.5),
                             "ttft_p99": percentile([r["ttft"] for r in results], 0.99),
                             "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in results),
                             "startup_s": startup})
                print(f"{method:>9} c={c:<3} {rows[-1]['throughput']:.3f} req/s  TTFT p50 {rows[-1]['ttft_p50']:.2f} s"
                      f"  p99 {rows[-1]['ttft_p99']:.2f} s  prompt {rows[-1]['prompt_tokens']:.0f}", flush=True)
        if report.exists():
            seconds = [json.loads(line)["seconds"] for line in report.read_text().splitlines()]
            for row in rows:
                if row["method"] == method:
                    row["select_ms_in_server"] = 1000 * statistics.median(seconds)
    shape_t = args.frames // 2
    side_tokens = args.side // 28
    cost = selection_cost(args.python, args.methods, args.ratio, (shape_t, side_tokens * side_tokens, 512))

    base = {r["concurrency"]: r["throughput"] for r in rows if r["method"] == "unpruned"}
    print()
    print("| method | concurrency | req/s | vs unpruned | TTFT p50 s | TTFT p99 s | prompt tokens | "
          "selection ms / video in the server |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = r["throughput"] / base[r["concurrency"]] if r["concurrency"] in base else float("nan")
        select = f"{r['select_ms_in_server']:.1f}" if "select_ms_in_server" in r else "-"
        print(f"| {r['method']} | {r['concurrency']} | {r['throughput']:.3f} | {rel:.2f}x | {r['ttft_p50']:.2f} | "
              f"{r['ttft_p99']:.2f} | {r['prompt_tokens']:.0f} | {select} |")
    print()
    print(f"selection per video, {shape_t} x {side_tokens * side_tokens} x 512 tokens, ratio {args.ratio} "
          "(same process, same tensors; median of 5 after one warm-up):")
    for name, seconds in cost.items():
        print(f"  {name}: {1000 * seconds:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "selection_seconds": cost, "args": vars(args)},
                                              indent=2))


if __name__ == "__main__":
    main()
