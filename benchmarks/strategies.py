"""Time and peak memory of every registered strategy, with each one's kept count next to Tango's.

    python benchmarks/strategies.py                          # 32 and 96 frames of 14 x 14 tokens x 3584 dims
    python benchmarks/strategies.py --frames 32 --repeats 1  # a quick run
    python benchmarks/strategies.py --strategies tango,topk,vidcom2 --dtype bfloat16

Input: `tango_plugin.testing.synthetic_video` with a scene cut every 8 frames (30% of the grid dynamic), the
"scenes" regime of benchmarks/engine.py. Each strategy is called through `run_strategy` (input and plan checks
included) with `TangoConfig(retention_ratio=--ratio, strategy=name)`.

Time: median of `--repeats` calls after one warm-up call. A strategy whose warm-up call takes longer than
`--slow-seconds` is timed by that call alone (marked "warm-up only") so that a slow method does not hold the whole run.
Memory: peak resident-set growth during one call (Linux VmHWM, reset before each call), i.e. everything the call
allocates (torch's CPU allocator included, which tracemalloc would not see), above the RSS before it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tango_plugin as tp  # noqa: E402
from tango_plugin.engine.types import VisualTokens  # noqa: E402
from tango_plugin.strategies import run_strategy  # noqa: E402
from tango_plugin.table import markdown_table  # noqa: E402
from tango_plugin.testing import synthetic_video  # noqa: E402


def _status(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> int:
    """Return freed heap pages to the OS and reset the peak-RSS mark; the RSS to measure the peak from."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def measure(fn, repeats: int, slow_seconds: float):
    """(median seconds, timed calls, peak extra bytes, result): warm-up, then `repeats` timed calls; 0 timed calls
    when the warm-up was slower than `slow_seconds` (its time is returned)."""
    base = _reset_peak()
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    if first > slow_seconds or repeats < 1:
        return first, 0, peak, result
    times = []
    for _ in range(repeats):
        result = None
        base = _reset_peak()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        peak = max(peak, _status("VmHWM") - base)
    return statistics.median(times), len(times), peak, result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="32,96", help="comma-separated frame counts")
    parser.add_argument("--grid", type=int, default=14, help="grid side (L = grid * grid)")
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--ratio", type=float, default=0.1, help="retention ratio (Tango's default 0.1)")
    parser.add_argument("--strategies", default="", help="comma-separated names (default: every registered one)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-seconds", type=float, default=20.0,
                        help="time a strategy by its warm-up call alone when that call takes longer than this")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s for s in args.strategies.split(",") if s] or tp.list_strategies()
    if "tango" in names:  # Tango first: every other row is compared with it
        names = ["tango"] + [n for n in names if n != "tango"]
    dtype = getattr(torch, args.dtype)
    print(f"machine: {machine()}")
    print(f"dtype: {args.dtype}, retention {args.ratio}, grid {args.grid}x{args.grid}, dim {args.dim}, "
          f"time = median of {args.repeats} after a warm-up, memory = peak RSS growth (VmHWM)\n", flush=True)

    rows = []
    for T in [int(f) for f in args.frames.split(",") if f]:
        v = synthetic_video(num_frames=T, grid_hw=(args.grid, args.grid), dim=args.dim, num_scenes=max(1, T // 8),
                            dtype=dtype)
        tokens = VisualTokens(features=v.features, saliency=v.saliency, grid_hw=v.grid_hw, timestamps=v.timestamps,
                              frame_embeddings=v.frame_embeddings)
        tango_kept = None
        for name in names:
            config = tp.TangoConfig(retention_ratio=args.ratio, strategy=name)
            seconds, runs, peak, plan = measure(lambda: run_strategy(tokens, config), args.repeats, args.slow_seconds)
            kept = plan.kept_indices.numel()
            if name == "tango":
                tango_kept = kept
            rows.append([str(T), name, f"{seconds * 1e3:.1f}" + (" (warm-up only)" if runs == 0 else ""),
                         f"{peak / 2 ** 20:.0f}", str(kept), "" if tango_kept is None else str(tango_kept),
                         f"{kept / (T * args.grid ** 2):.3f}"])
            print(f"  T={T} {name}: {seconds:.3f} s, {peak / 2 ** 20:.0f} MiB, kept {kept}", flush=True)
    print()
    print(markdown_table(["frames", "strategy", "time (ms)", "peak mem (MiB)", "kept", "Tango kept", "kept / T L"],
                         rows))


if __name__ == "__main__":
    main()
