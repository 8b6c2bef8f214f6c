"""Engine speed and memory: Tango (ours) vs the paper's code vs a per-frame top-k baseline, in one run.

    python benchmarks/engine.py                       # the issue's five sizes
    python benchmarks/engine.py --quick               # two small sizes
    TANGO_REFERENCE_PATH=/path/to/Tango python benchmarks/engine.py   # adds the paper's code side by side
    python benchmarks/engine.py --device cuda --dtype bfloat16          # on a GPU (milliseconds per video)
    # issue 24's table (4 conditions, first call and warm, 3 seeds; TANGO_REFERENCE_PATH set):
    python benchmarks/engine.py --data ar1 --frames 32,64,96 --dims 3584 --conditions all --seeds 0,1,2

Inputs are generated (`tango_plugin.testing.synthetic_video`) in these regimes (`--data`):
  one-scene  one long scene, half of the grid dynamic: the whole video is one segment, the worst case for the
             context clustering (its pool grows with the number of frames);
  scenes     a scene cut every 8 frames, 30% of the grid dynamic (typical video);
  dynamic    every token changes every frame: every frame is its own segment.
  random     independent Gaussian features (torch.randn) and saliency: no structure at all, every frame its own
             segment (the input of a plain random benchmark).
  ar1        AR(1) token trajectories (`tango_plugin.testing.synthetic.ar1_video`): static tokens with correlation
             0.99 from frame to frame, a moving 30% with 0.5, three scene cuts, random saliency: near-duplicate
             static tokens, so long segments, large context pools and many distance near-ties.
`--seeds 1,2,3` runs each case on several seeds (the input's seed is `seed + T + D`) and reports medians.

Conditions (`--conditions idle-2,idle-1,busy-1,busy-2`, or `all`): every case then runs in a fresh Python process
per condition (N threads via `torch.set_num_threads`; "busy": the benchmark starts one competing process that keeps a
core busy with a spin loop, and stops it after the case). In that process the input is generated, torch does one
small matrix product (what a model's vision tower has done before any pruning), then the engine's first call is
timed ("first s"), then the paper's code's first call in the same process ("ref first s"; it runs second, so torch's
own start-up is not in it), then warm medians of `--repeats` calls of each. One table: a row per case and condition.

Without `--conditions`: the in-process table below (the current process's threads, warm medians only).
Times are warm medians; memory is the peak resident-set growth during the call (Linux VmHWM, reset per call), or on
CUDA the peak of `torch.cuda.max_memory_allocated` above what was allocated before the call (synchronised timers).
On the CPU the engine keeps its scratch buffers between calls (docs/algorithm.md §12): "scratch MiB" is what it
holds after a call, resident before the next one and so not in "ours MiB".
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tango_plugin as tp  # noqa: E402
from tango_plugin.engine import scratch  # noqa: E402
from tango_plugin.table import markdown_table  # noqa: E402
from tango_plugin.testing import synthetic_video  # noqa: E402
from tango_plugin.testing.synthetic import ar1_video  # noqa: E402

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


REGIMES = {"one-scene": lambda T: dict(num_scenes=1, dynamic_fraction=0.5),
           "scenes": lambda T: dict(num_scenes=max(1, T // 8), dynamic_fraction=0.3),
           "dynamic": lambda T: dict(num_scenes=T, dynamic_fraction=1.0),
           "random": lambda T: dict(num_scenes=T, dynamic_fraction=1.0),
           "ar1": None}
CONDITIONS = ("idle-2", "idle-1", "busy-1", "busy-2")


def make_video(data: str, T: int, side: int, D: int, seed_offset: int = 0):
    """The generated input of regime `data` (seed T + D + seed_offset)."""
    if data not in REGIMES:
        raise SystemExit(f"--data {data!r}: allowed {sorted(REGIMES)}")
    seed = T + D + seed_offset
    if data == "ar1":
        return ar1_video(T, (side, side), D, seed=seed)
    video = synthetic_video(T, (side, side), D, seed=seed, **REGIMES[data](T))
    if data == "random":
        g = torch.Generator().manual_seed(seed)
        video.features = torch.randn(T, side * side, D, generator=g)
        video.saliency = torch.rand(T, side * side, generator=g)
    return video


def _on(video, device, dtype):
    video.features = video.features.to(device, dtype)
    video.saliency = video.saliency.to(device)
    video.timestamps = video.timestamps.to(device)
    return video


def _same(ours, kept, feats, device):
    """(same kept set, same feature bits, largest feature difference)."""
    same_kept = torch.equal(kept.to(device), ours.kept_indices)
    same_feats = same_kept and torch.equal(feats.to(device), ours.features)
    diff = float((feats.to(device).float() - ours.features.float()).abs().max()) if same_kept else float("nan")
    return same_kept, same_feats, diff


def _worker(spec: dict) -> dict:
    """One case in this (fresh) process: first calls, then warm medians (see the module docstring)."""
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    video = _on(make_video(spec["data"], spec["T"], spec["side"], spec["D"], spec["seed"]), device, dtype)
    a = torch.randn(256, 256)
    torch.mm(a, a)  # torch's own start-up (thread pool, BLAS) is paid by the model before any pruning
    cfg = tp.TangoConfig(retention_ratio=spec["r"], reference_merge_order=True)

    def ours():
        return tp.prune_video_tokens(video.features, video.saliency, video.grid_hw, video.timestamps, cfg)

    out = {}
    t0 = time.perf_counter()
    plan = ours()
    out["first"] = time.perf_counter() - t0
    ref_path = spec.get("reference")
    if ref_path:
        from reference import run_reference

        def ref():
            return run_reference(video.features, video.saliency, video.grid_hw, video.timestamps, cfg,
                                 path=ref_path)

        run_reference(video.features[:2, :4, :64], video.saliency[:2, :4], (2, 2), video.timestamps[:2],
                      cfg, path=ref_path)  # loads the reference's modules (not timed)
        t0 = time.perf_counter()
        kept, feats = ref()
        out["ref_first"] = time.perf_counter() - t0
        out["same_kept"], out["same_feats"], out["max_diff"] = _same(plan, kept, feats, device)
    times, ref_times = [], []
    for _ in range(spec["repeats"]):  # alternated, so that a slow phase of the machine hits both
        t0 = time.perf_counter()
        ours()
        times.append(time.perf_counter() - t0)
        if ref_path:
            t0 = time.perf_counter()
            ref()
            ref_times.append(time.perf_counter() - t0)
    out["warm"] = statistics.median(times)
    if ref_times:
        out["ref_warm"] = statistics.median(ref_times)
    out["kept"] = plan.kept_indices.numel()
    return out


def _busy_core():
    """A competing process that keeps one core busy (a pure-Python spin loop) until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run_case(spec: dict, busy: bool) -> dict:
    spinner = _busy_core() if busy else None
    try:
        if spinner is not None:
            time.sleep(0.3)  # let it start spinning
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                              capture_output=True, text=True, check=False)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"worker failed on {spec}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def conditions_table(args, cases, ref_path) -> None:
    conditions = CONDITIONS if args.conditions == "all" else tuple(args.conditions.split(","))
    for c in conditions:
        if c not in CONDITIONS:
            raise SystemExit(f"--conditions {c!r}: allowed {list(CONDITIONS)} or all")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.dtype}; reference: {ref_path or 'not given'}; "
          f"seeds {seeds}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    header = ("data", "frames x tokens x dim", "threads", "other core", "ours warm s", "ours first s",
              "ref warm s", "ref first s", "speedup warm", "speedup first", "first / warm", "same kept",
              "same features (max diff)")
    rows = []
    for data, T, side, D, r in cases:
        for cond in conditions:
            busy, threads = cond.startswith("busy"), int(cond.split("-")[1])
            results = []
            for seed in seeds:
                use_ref = ref_path if ref_path and T <= args.reference_max_frames else None
                spec = dict(data=data, T=T, side=side, D=D, r=r, seed=seed, threads=threads, device=args.device,
                            dtype=args.dtype, repeats=args.repeats, reference=use_ref)
                results.append(_run_case(spec, busy))
            warm, first = _median([x["warm"] for x in results]), _median([x["first"] for x in results])
            cells = [f"{warm:.3f}", f"{first:.3f}", "-", "-", "-", "-", f"{first / warm:.2f}", "-", "-"]
            if "ref_warm" in results[0]:
                ref_warm = _median([x["ref_warm"] for x in results])
                ref_first = _median([x["ref_first"] for x in results])
                up_warm = _median([x["ref_warm"] / x["warm"] for x in results])
                up_first = _median([x["ref_first"] / x["first"] for x in results])
                kept_ok = all(x["same_kept"] for x in results)
                feats_ok = sum(x["same_feats"] for x in results)
                diff = max(x["max_diff"] for x in results)
                cells[2:6] = [f"{ref_warm:.3f}", f"{ref_first:.3f}", f"{up_warm:.2f}x", f"{up_first:.2f}x"]
                cells[7:] = ["yes" if kept_ok else "NO",
                             f"{feats_ok}/{len(results)} ({diff:.2g})"]
            rows.append((data, f"{T}x{side * side}x{D}", str(threads), "busy" if busy else "idle", *cells))
            print("  done", *rows[-1][:4], flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(markdown_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small sizes only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default=None, help="local checkout of xjtupanda/Tango")
    parser.add_argument("--data", default="one-scene,scenes,dynamic,random,ar1", help="comma-separated regimes")
    parser.add_argument("--frames", default=None,
                        help="comma-separated frame counts: only the sizes with these many frames (e.g. 64,96)")
    parser.add_argument("--dims", default=None,
                        help="comma-separated feature sizes: only the sizes with these dims (e.g. 3584)")
    parser.add_argument("--reference-max-frames", type=int, default=96,
                        help="skip the paper's code above this many frames (its M x M buffers)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the paper's code runs on the same device)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="feature dtype (the same-kept column compares with the paper's code on these values)")
    parser.add_argument("--seeds", default="0", help="comma-separated seed offsets (medians over them)")
    parser.add_argument("--conditions", default=None,
                        help="idle-2,idle-1,busy-1,busy-2 (or all): a fresh process per case and condition, "
                             "first call and warm times")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    dtype = getattr(torch, args.dtype)

    from reference import reference_path, run_reference

    ref_path = reference_path(args.reference)
    sizes = QUICK if args.quick else SIZES
    if args.frames:
        wanted = {int(f) for f in args.frames.split(",")}
        sizes = [size for size in sizes if size[0] in wanted]
        if not sizes:
            raise SystemExit(f"--frames {args.frames!r}: allowed {sorted({s[0] for s in SIZES})}")
    if args.dims:
        wanted = {int(d) for d in args.dims.split(",")}
        sizes = [size for size in sizes if size[2] in wanted]
        if not sizes:
            raise SystemExit(f"--dims {args.dims!r}: allowed {sorted({s[2] for s in SIZES})}")
    cases = [(data, *size) for data in args.data.split(",") for size in sizes]
    for data, *_ in cases:
        if data not in REGIMES:
            raise SystemExit(f"--data {data!r}: allowed {sorted(REGIMES)}")
    if args.conditions:
        conditions_table(args, cases, ref_path)
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.dtype}; reference: {ref_path or 'not given'}")
    header = ("data", "frames x tokens x dim", "ratio", "kept", "ours s", "ours MiB", "scratch MiB", "ref s",
              "ref MiB", "speedup", "same kept", "same features (max diff)", "topk s")
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for data, T, side, D, r, seed in [(*case, seed) for case in cases for seed in seeds]:
        video = _on(make_video(data, T, side, D, seed), device, dtype)
        cfg = tp.TangoConfig(retention_ratio=r, reference_merge_order=True)
        scratch.release()  # the scratch column then shows what this case holds, not an earlier larger one
        ours_t, ours_m, ours = measure(
            lambda: tp.prune_video_tokens(video.features, video.saliency, video.grid_hw, video.timestamps, cfg),
            args.repeats, device)
        held = scratch.held_bytes()
        topk_t, _, _ = measure(lambda: tp.prune_video_tokens(
            video.features, video.saliency, video.grid_hw, video.timestamps, cfg.replace(strategy="topk")),
            args.repeats, device)
        ref_cells = ["-", "-", "-", "-", "-"]
        if ref_path and T <= args.reference_max_frames:
            ref_t, ref_m, (kept, feats) = measure(
                lambda: run_reference(video.features, video.saliency, video.grid_hw, video.timestamps, cfg,
                                      path=ref_path), args.repeats, device)
            same_kept, same_feats, diff = _same(ours, kept, feats, device)
            ref_cells = [f"{ref_t:.3f}", f"{ref_m / 2**20:.0f}", f"{ref_t / ours_t:.1f}x",
                         "yes" if same_kept else "NO", "yes" if same_feats else f"no ({diff:.2g})"]
        label = data if len(seeds) == 1 else f"{data} s{seed}"
        rows.append((label, f"{T}x{side * side}x{D}", f"{r:g}", str(ours.kept_indices.numel()), f"{ours_t:.3f}",
                     f"{ours_m / 2**20:.0f}", f"{held / 2**20:.0f}", *ref_cells, f"{topk_t:.3f}"))
        print("  done", label, rows[-1][1], flush=True)
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
