"""Engine speed and memory: Tango (ours) vs the paper's code vs a per-frame top-k baseline, in one run.

    python benchmarks/engine.py                       # the issue's five sizes
    python benchmarks/engine.py --quick               # two small sizes
    TANGO_REFERENCE_PATH=/path/to/Tango python benchmarks/engine.py   # adds the paper's code side by side
    python benchmarks/engine.py --device cuda --dtype bfloat16          # on a GPU (milliseconds per video)

Inputs are generated (`tango_plugin.testing.synthetic_video`) in three regimes (`--data`):
  one-scene  one long scene, half of the grid dynamic: the whole video is one segment, the worst case for the
             context clustering (its pool grows with the number of frames);
  scenes     a scene cut every 8 frames, 30% of the grid dynamic (typical video);
  dynamic    every token changes every frame: every frame is its own segment.
  random     independent Gaussian features (torch.randn) and saliency: no structure at all, every frame its own
             segment (the input of a plain random benchmark).
Times are warm medians; memory is the peak resident-set growth during the call (Linux VmHWM, reset per call), or on
CUDA the peak of `torch.cuda.max_memory_allocated` above what was allocated before the call (synchronised timers).
On the CPU the engine keeps its scratch buffers between calls (docs/algorithm.md §12): "scratch MiB" is what it
holds after a call, resident before the next one and so not in "ours MiB".
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tango_plugin as tp  # noqa: E402
from tango_plugin.engine import scratch  # noqa: E402
from tango_plugin.table import markdown_table  # noqa: E402
from tango_plugin.testing import synthetic_video  # noqa: E402

SIZES = [(32, 14, 896, 0.1), (32, 14, 3584, 0.1), (64, 13, 3584, 0.1217), (96, 14, 3584, 0.1), (256, 14, 3584, 0.1)]
QUICK = [(32, 14, 896, 0.1), (32, 14, 3584, 0.1)]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS so that the next peak is measured from a true baseline."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn, repeats: int, device: torch.device = torch.device("cpu")):
    """(median seconds, peak extra bytes, last result) of `fn` after one warm-up call."""
    fn()
    times, peak = [], 0
    result = None
    if device.type == "cuda":
        for _ in range(repeats):
            result = None
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            result = fn()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            peak = max(peak, torch.cuda.max_memory_allocated(device) - base)
        return statistics.median(times), peak, result
    for _ in range(repeats):
        result = None
        gc.collect()
        _release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS mark
        except OSError:
            pass
        base = _status("VmRSS")
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        peak = max(peak, _status("VmHWM") - base)
    return statistics.median(times), peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small sizes only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default=None, help="local checkout of xjtupanda/Tango")
    parser.add_argument("--data", default="one-scene,scenes,dynamic,random", help="comma-separated regimes")
    parser.add_argument("--frames", default=None,
                        help="comma-separated frame counts: only the sizes with these many frames (e.g. 64,96)")
    parser.add_argument("--reference-max-frames", type=int, default=96,
                        help="skip the paper's code above this many frames (its M x M buffers)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the paper's code runs on the same device)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="feature dtype (the same-kept column compares with the paper's code on these values)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    dtype = getattr(torch, args.dtype)

    from reference import reference_path, run_reference

    ref_path = reference_path(args.reference)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.dtype}; reference: {ref_path or 'not given'}")
    header = ("data", "frames x tokens x dim", "ratio", "kept", "ours s", "ours MiB", "scratch MiB", "ref s",
              "ref MiB", "speedup", "same kept", "topk s")
    rows = []
    regimes = {"one-scene": lambda T: dict(num_scenes=1, dynamic_fraction=0.5),
               "scenes": lambda T: dict(num_scenes=max(1, T // 8), dynamic_fraction=0.3),
               "dynamic": lambda T: dict(num_scenes=T, dynamic_fraction=1.0),
               "random": lambda T: dict(num_scenes=T, dynamic_fraction=1.0)}
    sizes = QUICK if args.quick else SIZES
    if args.frames:
        wanted = {int(f) for f in args.frames.split(",")}
        sizes = [size for size in sizes if size[0] in wanted]
        if not sizes:
            raise SystemExit(f"--frames {args.frames!r}: allowed {sorted({s[0] for s in SIZES})}")
    cases = [(data, *size) for data in args.data.split(",") for size in sizes]
    for data, T, side, D, r in cases:
        if data not in regimes:
            raise SystemExit(f"--data {data!r}: allowed {sorted(regimes)}")
        video = synthetic_video(T, (side, side), D, seed=T + D, **regimes[data](T))
        if data == "random":
            g = torch.Generator().manual_seed(T + D)
            video.features = torch.randn(T, side * side, D, generator=g)
            video.saliency = torch.rand(T, side * side, generator=g)
        video.features = video.features.to(device, dtype)
        video.saliency = video.saliency.to(device)
        video.timestamps = video.timestamps.to(device)
        cfg = tp.TangoConfig(retention_ratio=r, reference_merge_order=True)
        scratch.release()  # the scratch column then shows what this case holds, not an earlier larger one
        ours_t, ours_m, ours = measure(
            lambda: tp.prune_video_tokens(video.features, video.saliency, video.grid_hw, video.timestamps, cfg),
            args.repeats, device)
        held = scratch.held_bytes()
        topk_t, _, _ = measure(lambda: tp.prune_video_tokens(
            video.features, video.saliency, video.grid_hw, video.timestamps, cfg.replace(strategy="topk")),
            args.repeats, device)
        ref_cells = ["-", "-", "-", "-"]
        if ref_path and T <= args.reference_max_frames:
            ref_t, ref_m, (kept, feats) = measure(
                lambda: run_reference(video.features, video.saliency, video.grid_hw, video.timestamps, cfg,
                                      path=ref_path), args.repeats, device)
            same = torch.equal(kept.to(device), ours.kept_indices) and torch.equal(feats.to(device), ours.features)
            ref_cells = [f"{ref_t:.3f}", f"{ref_m / 2**20:.0f}", f"{ref_t / ours_t:.1f}x", "yes" if same else "NO"]
        rows.append((data, f"{T}x{side * side}x{D}", f"{r:g}", str(ours.kept_indices.numel()), f"{ours_t:.3f}",
                     f"{ours_m / 2**20:.0f}", f"{held / 2**20:.0f}", *ref_cells, f"{topk_t:.3f}"))
        print("  done", data, rows[-1][1], flush=True)
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
