"""`tango-plugin profile`: where the time of one video question goes, unpruned and pruned, stage by stage.

    tango-plugin profile                                   # the tiny random Qwen2-VL (no downloads)
    tango-plugin profile --tiny llava_onevision --frames 16 --repeats 5
    tango-plugin profile --tiny qwen2_vl --text-layers 24 --hidden 896 --intermediate 4864 --heads 14 \\
        --kv-heads 2 --vocab 151936 --frames 32 --size 392 --vision embed_dim=128 --vision num_heads=2   # 0.5B shape
    tango-plugin profile --model ./llava-onevision-qwen2-0.5b-ov-hf --video clip.mp4 --json

The model is either a local checkpoint folder with a video file (loaded exactly as `tango-plugin run` loads them:
its functions are reused), or with `--tiny MODEL_TYPE` a tiny random model of `tango_plugin.testing` (the default
when no `--model` is given: qwen2_vl), optionally at another size (`--text-layers`, `--hidden`, ...).

Each measured run is one greedy `generate(max_new_tokens=min_new_tokens=--new-tokens)`, unpruned and then inside
`tango_plugin.enabled`, alternating, after `--warmup` runs of each; the table shows the medians of `--repeats`.
Every time comes from one timer: `time.perf_counter()`, preceded by `torch.cuda.synchronize()` on CUDA.

Where each number comes from:

* vision tower: forward pre/post hooks on the vision modules (Qwen: `model.model.visual`, which holds the merger;
  LLaVA: `vision_tower` and `multi_modal_projector`), summed; in the pruned run the saliency hooks run inside the
  tower, so their time is taken out of this row and shown as "saliency".
* saliency: the library's own timer of its transient saliency hooks, `SampleReport.saliency_seconds`.
* strategy: the adapter's plan stage (every `run_strategy` call plus building the replacement),
  `SampleReport.strategy_seconds` ("-" for an adapter that does not split its time).
* splice: `SampleReport.splice_seconds`, timed by the splice itself from the end of the towers to its report,
  strategy calls left out (placeholder matching, layout, rewrite of ids / masks / positions, report); for the `llava`
  adapter, which times strategy and splice together, `prune_seconds` minus saliency.
* LLM prefill: forward pre/post hooks on `model.model.language_model`, its first call of the run.
* other until first token: TTFT minus the rows above (generate's setup, embedding, LLaVA's pooling and packing,
  the LM head and the first greedy pick).
* TTFT: from the `generate` call to the first new token handed to a streamer.
* decode: (new tokens - 1) / (time of the last new token - time of the first).
* peak memory: CUDA: `torch.cuda.max_memory_allocated()` during the run minus what was allocated before it; CPU:
  the kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) minus the RSS before the
  run, or RSS sampled every 2 ms where that reset is not allowed. The CPU number counts every page the process
  touched (tensors, allocator caches, Python objects) and misses memory reused from pages it already held.
* tokens into the LLM: video tokens (unpruned: the placeholders in `input_ids`; pruned: the report's
  `visual_tokens_after`) and the sequence length the language model's first call received.

Every hook, wrapper and the Tango handle live only for one run and are removed after it, also on error; the
command checks afterwards that no hook defined in tango_plugin is left on the model and Tango is disabled
(`model_left_clean` in the JSON). transformers is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from ..config import TangoConfig
from ..table import markdown_table

#: (key, label, unit, better): "lower" -> speed-up = unpruned / pruned; "higher" -> pruned / unpruned
STAGES: Tuple[Tuple[str, str, str], ...] = (
    ("vision_ms", "vision tower (ms)", "lower"),
    ("saliency_ms", "saliency hooks (ms)", "stage"),
    ("strategy_ms", "strategy (ms)", "stage"),
    ("splice_ms", "splice (ms)", "stage"),
    ("prefill_ms", "LLM prefill (ms)", "lower"),
    ("other_ms", "other until first token (ms)", "lower"),
    ("ttft_ms", "TTFT (ms)", "lower"),
    ("decode_tok_s", "decode (tokens/s)", "higher"),
    ("peak_mib", "peak memory (MiB)", "lower"),
    ("visual_tokens", "video tokens into the LLM", "lower"),
    ("sequence_tokens", "sequence length into the LLM", "lower"),
)
TINY_DEFAULT = "qwen2_vl"
#: size options of --tiny: flag -> language-model config key
TEXT_SIZE = (("text_layers", "num_hidden_layers"), ("hidden", "hidden_size"), ("intermediate", "intermediate_size"),
             ("heads", "num_attention_heads"), ("kv_heads", "num_key_value_heads"), ("vocab", "vocab_size"))
DTYPES = ("auto", "bfloat16", "float16", "float32")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------------------- parser
def add_parser(sub) -> None:
    """The `profile` subcommand."""
    p = sub.add_parser("profile", help="time each stage (vision, saliency, strategy, splice, prefill, TTFT, decode) "
                                       "and peak memory, unpruned vs pruned")
    src = p.add_argument_group("model and video")
    src.add_argument("--model", help="local checkpoint folder (model and processor files), loaded as `run` does")
    src.add_argument("--video", help="video file (needed with --model)")
    src.add_argument("--video-backend", default="auto", help="decoder for transformers' video loader (as `run`)")
    src.add_argument("--tiny", metavar="MODEL_TYPE",
                     help=f"a tiny random model of tango_plugin.testing (default without --model: {TINY_DEFAULT})")
    src.add_argument("--question", default="What happens in this video?")
    src.add_argument("--frames", type=int, default=None, help="frames (default: 32 with --model, 16 with --tiny)")
    src.add_argument("--size", type=int, default=None,
                     help="--tiny: frame side in pixels (Qwen: a multiple of 28; LLaVA: the tower's image_size)")
    src.add_argument("--seed", type=int, default=0, help="--tiny: seed of the random weights")
    size = p.add_argument_group("size of the --tiny language model (default: the tiny recipe)")
    for flag, key in TEXT_SIZE:
        size.add_argument(_flag(flag), type=int, default=None, dest=flag, help=f"text_config.{key}")
    size.add_argument("--text", action="append", default=[], metavar="KEY=VALUE",
                      help="--tiny: another text_config key (repeatable), e.g. --text tie_word_embeddings=true")
    size.add_argument("--vision", action="append", default=[], metavar="KEY=VALUE",
                      help="--tiny: a vision_config key (repeatable), e.g. --vision embed_dim=128")
    cfg = p.add_argument_group("pruning")
    cfg.add_argument("--ratio", type=float, default=None,
                     help="retention ratio in (0, 1] (default: 0.1, or the preset's)")
    cfg.add_argument("--preset", help="TangoConfig preset")
    cfg.add_argument("--config", help="TangoConfig as JSON")
    run = p.add_argument_group("measurement")
    run.add_argument("--new-tokens", type=int, default=16, help="new tokens per run (>= 2; decode speed over them)")
    run.add_argument("--warmup", type=int, default=1, help="runs of each kind before measuring (not counted)")
    run.add_argument("--repeats", type=int, default=3, help="measured runs of each kind (the table shows medians)")
    run.add_argument("--device", default="cpu", help="cpu or cuda")
    run.add_argument("--dtype", default="auto",
                     help="auto (the checkpoint's; --tiny: float32), bfloat16, float16 or float32")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    run.add_argument("--json", action="store_true", help="print one JSON object with everything (nothing else)")
    p.set_defaults(func=cmd_profile)


# ------------------------------------------------------------------------------------------------- timer
class Timer:
    """The one clock of every measurement: `time.perf_counter()`, after `torch.cuda.synchronize()` on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    @property
    def description(self) -> str:
        return ("time.perf_counter after torch.cuda.synchronize() at every mark" if self.cuda
                else "time.perf_counter")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


# ------------------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory of one run (see the module docstring for what each device measures)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated minus memory_allocated before the run"
            return self
        _trim_heap()
        self.base = _rss_bytes()
        self._thread = None
        if _reset_hwm() and _hwm_bytes() is not None:
            self.method = ("CPU: peak RSS minus RSS before the run (VmHWM, reset via /proc/self/clear_refs); counts "
                           "every page touched, misses memory reused from pages already held")
            return self
        self.method = ("CPU: peak RSS minus RSS before the run (sampled every 2 ms); counts every page touched, "
                       "misses memory reused from pages already held and peaks shorter than the period")
        self._top, self._running = self.base, True

        def sample() -> None:
            while self._running:
                self._top = max(self._top, _rss_bytes())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        elif self._thread is None:
            self.peak = max(0, (_hwm_bytes() or 0) - self.base)
        else:
            self._running = False
            self._thread.join()
            self.peak = max(0, max(self._top, _rss_bytes()) - self.base)


# ------------------------------------------------------------------------------------------------- probes
def vision_modules(model) -> List[torch.nn.Module]:
    """The modules whose forward time is "vision tower": Qwen `visual` (merger inside), LLaVA `vision_tower` plus
    `multi_modal_projector`."""
    inner = getattr(model, "model", model)
    found = [getattr(inner, n) for n in ("visual", "vision_tower", "multi_modal_projector")
             if isinstance(getattr(inner, n, None), torch.nn.Module)]
    if not found:
        raise ValueError(f"{type(model).__name__}: no vision module found (model.model.visual / vision_tower)")
    return found


def language_model(model) -> torch.nn.Module:
    lm = getattr(getattr(model, "model", model), "language_model", None)
    if not isinstance(lm, torch.nn.Module):
        raise ValueError(f"{type(model).__name__}: no model.model.language_model to time the prefill on")
    return lm


def tango_hooks(model) -> List[str]:
    """Forward (pre-)hooks defined in tango_plugin (this command's probes, the library's saliency and intra-LLM
    hooks) still on the model, as "module path: function". transformers' own hooks (it installs output-capturing
    hooks on first use) are not counted."""
    found = []
    for path, m in model.named_modules():
        for table in ("_forward_pre_hooks", "_forward_hooks"):
            for fn in getattr(m, table, {}).values():
                origin = getattr(fn, "__module__", None) or getattr(getattr(fn, "func", None), "__module__", "") or ""
                if origin.startswith("tango_plugin"):
                    found.append(f"{path or type(model).__name__}: {getattr(fn, '__qualname__', repr(fn))}")
    return found


class Probe:
    """Transient forward hooks on the vision modules and the language model, plus a streamer, for one run."""

    def __init__(self, model, timer: Timer) -> None:
        self.timer = timer
        self.vision = vision_modules(model)
        self.lm = language_model(model)
        self.vision_s = 0.0
        self._vision_start: Optional[float] = None
        self.prefill: Optional[Tuple[float, float]] = None
        self.sequence_tokens: Optional[int] = None
        self.token_times: List[float] = []
        self._handles: list = []

    def _vision_pre(self, module, args) -> None:
        self._vision_start = self.timer.now()

    def _vision_post(self, module, args, output) -> None:
        if self._vision_start is not None:
            self.vision_s += self.timer.now() - self._vision_start
            self._vision_start = None

    def _lm_pre(self, module, args, kwargs) -> None:
        if self.prefill is None:
            embeds = kwargs.get("inputs_embeds")
            ids = kwargs.get("input_ids", args[0] if args else None)
            x = embeds if embeds is not None else ids
            self.sequence_tokens = int(x.shape[1]) if isinstance(x, torch.Tensor) else None
            self.prefill = (self.timer.now(), float("nan"))

    def _lm_post(self, module, args, output) -> None:
        if self.prefill is not None and self.prefill[1] != self.prefill[1]:  # nan: the first call's end
            self.prefill = (self.prefill[0], self.timer.now())

    def streamer(self):
        from transformers.generation.streamers import BaseStreamer

        probe = self

        class _Clock(BaseStreamer):
            def __init__(self) -> None:
                self.prompt = True

            def put(self, value) -> None:
                if self.prompt:  # generate's first put is the prompt
                    self.prompt = False
                    return
                probe.token_times.append(probe.timer.now())

            def end(self) -> None:
                pass

        return _Clock()

    @contextlib.contextmanager
    def attached(self) -> Iterator["Probe"]:
        try:
            for m in self.vision:
                self._handles.append(m.register_forward_pre_hook(self._vision_pre))
                self._handles.append(m.register_forward_hook(self._vision_post))
            self._handles.append(self.lm.register_forward_pre_hook(self._lm_pre, with_kwargs=True))
            self._handles.append(self.lm.register_forward_hook(self._lm_post))
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []


# ------------------------------------------------------------------------------------------------- one run
def _count_video_tokens(model, inputs: dict) -> int:
    cfg = model.config
    token = getattr(cfg, "video_token_id", None)
    token = token if token is not None else cfg.video_token_index
    return int((inputs["input_ids"] == token).sum())


def measure_run(model, inputs: dict, new_tokens: int, timer: Timer, device: str, handle=None,
                extra: Optional[dict] = None) -> dict:
    """One greedy `generate` of exactly `new_tokens` tokens, with the probes attached; its per-stage numbers."""
    probe = Probe(model, timer)
    if handle is not None:
        handle.reset()
    with contextlib.ExitStack() as stack:
        stack.enter_context(probe.attached())
        mem = stack.enter_context(PeakMemory(device))
        with torch.inference_mode():
            t0 = timer.now()
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           streamer=probe.streamer(), **(extra or {}))
            timer.now()
    if probe.prefill is None or len(probe.token_times) < 1:
        raise RuntimeError("the language model or the streamer never ran: nothing to time")
    times = probe.token_times
    out: Dict[str, Any] = {
        "ttft_ms": (times[0] - t0) * 1e3,
        "prefill_ms": (probe.prefill[1] - probe.prefill[0]) * 1e3,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0]
        else None,
        "new_tokens": len(times),
        "peak_mib": mem.peak / 2**20,
        "sequence_tokens": probe.sequence_tokens,
        "memory_method": mem.method,
    }
    vision_s = probe.vision_s
    if handle is None:
        out.update(saliency_ms=None, strategy_ms=None, splice_ms=None, pruned=False, note="",
                   visual_tokens=_count_video_tokens(model, inputs), visual_tokens_before=None)
    else:
        report = handle.report()
        samples = report["samples"]
        prune_s = sum(s["prune_seconds"] for s in samples)
        saliency_s = sum(s.get("saliency_seconds", 0.0) for s in samples)
        splits = [s.get("splice_seconds") for s in samples]
        if any(v is None for v in splits):  # an adapter that does not split its time (the llava adapter)
            strategy_s, splice_s = None, prune_s - saliency_s
        else:
            strategy_s, splice_s = sum(s.get("strategy_seconds", 0.0) for s in samples), sum(splits)
        out.update(
            saliency_ms=saliency_s * 1e3,
            strategy_ms=None if strategy_s is None else strategy_s * 1e3,
            splice_ms=splice_s * 1e3,
            prune_seconds=prune_s,
            visual_tokens=sum(s["visual_tokens_after"] for s in samples),
            visual_tokens_before=sum(s["visual_tokens_before"] for s in samples),
            pruned=any(s["pruned"] for s in samples),
            note="; ".join(s["note"] for s in samples if s["note"]),
            report=report)
        vision_s -= saliency_s  # the saliency hooks run inside the tower
    out["vision_ms"] = vision_s * 1e3
    listed = sum(out[k] or 0.0 for k in ("vision_ms", "saliency_ms", "strategy_ms", "splice_ms", "prefill_ms"))
    out["other_ms"] = out["ttft_ms"] - listed
    return out


def _median(values: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def profile_model(model, inputs: dict, cfg: TangoConfig, *, new_tokens: int = 16, warmup: int = 1, repeats: int = 3,
                  device: str = "cpu", enable_options: Optional[dict] = None, pruned_extra: Optional[dict] = None,
                  log=None) -> dict:
    """Warm up, then alternate unpruned / pruned runs; per stage the medians and the speed-up.

    Args:
        model: an unmodified, supported model (Tango not enabled on it).
        inputs: `generate` keyword inputs of one sample (batch size 1: the streamer times one sequence).
        cfg: the TangoConfig of the pruned runs.
        enable_options: adapter options for `tango_plugin.enabled` (e.g. `fps=1.0`).
        pruned_extra: extra `generate` kwargs of the pruned runs only (e.g. `tango_video_timestamps`).
        log: called with a progress line (None: silent).

    Returns:
        dict with `stages` (key -> unpruned, pruned, speedup), `runs` (every measured run), `report` (the last
        pruned run's `handle.report()`), `model_left_clean`.
    """
    import tango_plugin as tango

    if tango.get_handle(model) is not None:
        raise ValueError("profile needs a model without Tango enabled (it enables Tango itself for the pruned runs)")
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"profile times one sequence; got a batch of {inputs['input_ids'].shape[0]}")
    timer = Timer(device)
    runs: Dict[str, List[dict]] = {"unpruned": [], "pruned": []}

    def one(kind: str) -> dict:
        if kind == "unpruned":
            return measure_run(model, inputs, new_tokens, timer, device)
        with tango.enabled(model, cfg, **(enable_options or {})) as handle:
            return measure_run(model, inputs, new_tokens, timer, device, handle=handle, extra=pruned_extra)

    for i in range(warmup):
        for kind in ("unpruned", "pruned"):
            if log:
                log(f"warm-up {i + 1}/{warmup}: {kind}")
            one(kind)
    for i in range(repeats):
        for kind in ("unpruned", "pruned"):
            if log:
                log(f"run {i + 1}/{repeats}: {kind}")
            runs[kind].append(one(kind))
    stages: Dict[str, dict] = {}
    for key, _label, better in STAGES:
        full = _median([r[key] for r in runs["unpruned"]])
        pruned = _median([r[key] for r in runs["pruned"]])
        speedup = None
        if better != "stage" and full is not None and pruned:
            speedup = full / pruned if better == "lower" else pruned / full
        stages[key] = {"unpruned": full, "pruned": pruned, "speedup": speedup}
    last = runs["pruned"][-1]
    left = tango_hooks(model) + [f"model.{k} (instance attribute)" for k in ("forward", "generate")
                                 if k in model.__dict__]
    if tango.get_handle(model) is not None:
        left.append("a Tango handle")
    return {
        "stages": stages,
        "runs": {k: [{f: v for f, v in r.items() if f != "report"} for r in rs] for k, rs in runs.items()},
        "report": last.get("report"),
        "visual_tokens_before": last["visual_tokens_before"],
        "pruned": last["pruned"],
        "not_pruned_reason": None if last["pruned"] else (last["note"] or "retention ratio 1.0"),
        "memory_method": last["memory_method"],
        "timer": timer.description,
        "model_left_clean": not left,
        "left_on_model": left,
    }


# ------------------------------------------------------------------------------------------------- table
def _cell(key: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    if key in ("visual_tokens", "sequence_tokens"):
        return str(int(round(value)))
    if key == "decode_tok_s":
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_rows(result: dict) -> List[List[str]]:
    """The table body: one row per stage (label, unpruned, pruned, speed-up), exactly as printed."""
    rows = []
    for key, label, _better in STAGES:
        s = result["stages"][key]
        speed = "-" if s["speedup"] is None else f"{s['speedup']:.2f}x"
        rows.append([label, _cell(key, s["unpruned"]), _cell(key, s["pruned"]), speed])
    return rows


def render_table(result: dict) -> str:
    return markdown_table(["stage", "unpruned", "pruned", "speed-up"], table_rows(result))


# ------------------------------------------------------------------------------------------------- the command
def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    out = {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _parse_pairs(items: List[str], flag: str) -> dict:
    """`--vision` / `--text` KEY=VALUE pairs; a value is read as JSON when it parses (numbers, true, lists)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} "
                             + ("embed_dim=128" if flag == "--vision" else "tie_word_embeddings=true"))
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def _check_args(args) -> None:
    for name, low in (("new_tokens", 2), ("warmup", 0), ("repeats", 1), ("frames", 1), ("threads", 1), ("size", 1)):
        value = getattr(args, name, None)
        if value is not None and value < low:
            extra = " (decode speed needs a first token and at least one more)" if name == "new_tokens" else ""
            raise ValueError(f"{_flag(name)} {value}: must be at least {low}{extra}")
    for flag, _key in TEXT_SIZE:
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"{_flag(flag)} {value}: must be at least 1")
    if args.model and args.tiny:
        raise ValueError(f"--model {args.model} and --tiny {args.tiny}: give one of them")
    if args.model and not args.video:
        raise ValueError(f"--model {args.model}: --video is needed with --model")
    if not args.model:
        if args.video:
            raise ValueError(f"--video {args.video}: needs --model (the --tiny models use generated frames)")
        from ..testing.tiny_models import MODEL_TYPES, MORE_MODEL_TYPES

        known = MODEL_TYPES + MORE_MODEL_TYPES
        if args.tiny is not None and args.tiny not in known:
            raise ValueError(f"--tiny {args.tiny}: unknown model type; known: {', '.join(known)}")
    else:
        given = [_flag(f) for f, _ in TEXT_SIZE if getattr(args, f, None) is not None]
        given += [f for f in ("--vision", "--text") if getattr(args, f[2:])]
        given += ["--size"] if args.size is not None else []
        if given:
            raise ValueError(f"{', '.join(given)}: size options apply to --tiny models only, not to --model")
    _parse_pairs(args.vision, "--vision")
    _parse_pairs(args.text, "--text")
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device}: expected cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype}: expected one of {', '.join(DTYPES)}")


def build_tiny(args) -> Tuple[Any, dict, dict, dict]:
    """The --tiny model and its inputs: (model, inputs, description, enable options)."""
    from ..testing import VideoSpec, build_sized_model, build_tokenizer, video_inputs

    model_type = args.tiny or TINY_DEFAULT
    dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
    text = {key: getattr(args, flag) for flag, key in TEXT_SIZE if getattr(args, flag, None) is not None}
    vision = _parse_pairs(args.vision, "--vision")
    for key, value in _parse_pairs(args.text, "--text").items():
        text.setdefault(key, value)
    qwen = model_type.startswith("qwen")
    size = args.size
    if size is not None and not qwen:
        vision.setdefault("image_size", size)  # LLaVA frames are the tower's image size
        size = None
    tok = build_tokenizer("qwen" if qwen else "llava")
    try:
        model = build_sized_model(model_type, tok, text=text, vision=vision, seed=args.seed, dtype=dtype)
    except ValueError as exc:  # name the command's flags, not the config keys
        message = str(exc)
        for flag, key in TEXT_SIZE:
            message = message.replace(f"{key} ", f"{_flag(flag)} ")
        raise ValueError(f"--tiny {message}" if message.startswith(model_type) else message) from exc
    if args.size is not None and qwen:
        step = model.config.vision_config.patch_size * model.config.vision_config.spatial_merge_size
        if args.size % step:
            raise ValueError(f"--size {args.size}: Qwen frames need a multiple of {step} pixels")
    frames = args.frames or 16
    inputs = video_inputs(model, tok, [[VideoSpec(frames=frames, size=size, seed=args.seed)]], [args.question])
    model = model.to(args.device)
    inputs = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    params = sum(p.numel() for p in model.parameters())
    desc = {"source": f"--tiny {model_type} (random weights, seed {args.seed})", "model_type": model_type,
            "class": type(model).__name__, "parameters": params, "frames": frames,
            "text_config": {k: getattr(model.config.get_text_config(), k) for _, k in TEXT_SIZE}}
    # the generated frames stand for a clip sampled at 1 fps (as `tango-plugin demo`)
    return model, inputs, desc, {"fps": 1.0}


def build_checkpoint(args) -> Tuple[Any, dict, dict, dict, dict]:
    """--model / --video, loaded by `tango-plugin run`'s own functions: (model, inputs, description, enable options,
    generate kwargs of the pruned runs: the frame times, as `run` passes them)."""
    from ..integration.video_io import VIDEO_BACKENDS, read_video
    from . import run as run_cli

    if args.video_backend not in ("auto",) + VIDEO_BACKENDS:
        raise ValueError(f"--video-backend {args.video_backend}: expected auto or one of {', '.join(VIDEO_BACKENDS)}")
    model_type = run_cli.check_model_dir(args.model)
    frames = args.frames or 32
    video = read_video(args.video, frames, label="--video", backend=args.video_backend)
    processor = run_cli.load_processor(args.model)
    model = run_cli.load_model(args.model, args.device, args.dtype)
    prompt, how = run_cli.video_prompt(processor, model_type, args.question)
    inputs = run_cli.processor_inputs(processor, prompt, video, args.device, model.dtype)
    desc = {"source": f"--model {args.model}", "model_type": model_type, "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "frames": len(video.indices),
            "video": args.video, "video_backend": video.backend, "prompt": how}
    return model, inputs, desc, {}, {"tango_video_timestamps": [video.metadata]}


def profile(args) -> int:
    """The `tango-plugin profile` command (argparse namespace in, exit code out)."""
    _check_args(args)
    from .run import build_config

    cfg, cfg_source = build_config(args.ratio, args.preset, args.config)
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError("tango-plugin profile needs transformers: pip install -e \".[hf]\"") from exc
    if args.threads:
        torch.set_num_threads(args.threads)
    as_json = bool(args.json)
    log = None if as_json else (lambda text: print(text, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    if args.model:
        model, inputs, desc, options, extra = build_checkpoint(args)
    else:
        (model, inputs, desc, options), extra = build_tiny(args), None
    result = profile_model(model, inputs, cfg, new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats,
                           device=args.device, enable_options=options, pruned_extra=extra, log=log)
    wall = time.perf_counter() - t_start
    dtype = str(model.dtype).replace("torch.", "")
    header = {
        "machine": _machine(), "device": args.device, "dtype": dtype, "timer": result["timer"],
        "memory": result["memory_method"], "model": desc, "new_tokens": args.new_tokens, "warmup": args.warmup,
        "repeats": args.repeats, "statistic": "median",
        "config": {"source": cfg_source, "strategy": cfg.strategy, "retention_ratio": cfg.retention_ratio},
        "prompt_tokens": int(inputs["input_ids"].shape[1]), "wall_seconds": wall,
    }
    if result["left_on_model"]:
        print(f"warning: left on the model after profiling: {result['left_on_model']}", file=sys.stderr)
    if not result["pruned"]:
        print(f"warning: the video was not pruned ({result['not_pruned_reason']})", file=sys.stderr)
    if as_json:
        out = {**header, **{k: v for k, v in result.items() if k not in ("timer", "memory_method")},
               "table": {"columns": ["stage", "unpruned", "pruned", "speed-up"], "rows": table_rows(result)}}
        print(json.dumps(out, default=str))
        return 0
    m = header["machine"]
    print(f"machine: {m['cpu']} ({m['cpu_count']} CPUs, torch threads {m['torch_threads']})"
          + (f", GPU {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}, transformers "
          f"{m.get('transformers', '-')}")
    print(f"device: {args.device}, dtype: {dtype}; timer: {header['timer']}")
    print(f"model: {desc['source']}, {desc['class']}, {desc['parameters'] / 1e6:.1f} M parameters; "
          f"{desc['frames']} frames, prompt {header['prompt_tokens']} tokens")
    print(f"config: {cfg_source}, strategy {cfg.strategy}, retention_ratio {cfg.retention_ratio:g}; "
          f"{args.new_tokens} new tokens, warm-up {args.warmup}, median of {args.repeats} runs each")
    print(render_table(result))
    print(f"speed-up: unpruned / pruned (decode: pruned / unpruned). Vision excludes the saliency hooks (they run "
          f"inside the tower); splice = SampleReport.splice_seconds; other = TTFT - the rows "
          f"above it. Memory: {header['memory']}.")
    print(f"({wall:.1f} s in all, loading included)")
    return 0


def cmd_profile(args) -> int:
    try:
        return profile(args)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


__all__ = ["add_parser", "cmd_profile", "profile", "profile_model", "measure_run", "render_table", "table_rows",
           "STAGES", "Timer", "PeakMemory"]
