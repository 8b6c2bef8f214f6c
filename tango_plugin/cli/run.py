"""`tango-plugin run`: answer a question about a video file with a local checkpoint, pruned with Tango.

    tango-plugin run --model ./LLaVA-OneVision-Qwen2-0.5B-ov-hf --video clip.mp4 --question "What happens?" --compare
    tango-plugin run --model DIR --video clip.mp4 --json > report.json      # one JSON object for scripts
    tango-plugin run --model DIR --video clip.mp4 --picture kept.png        # the kept tokens over the frames

Loads the checkpoint folder with `AutoModelForImageTextToText` and `AutoProcessor` (local files only), reads the
video with transformers' video loader (`transformers.video_utils.load_video`; decord when installed, else PyAV;
`--video-backend`), sampling `--frames` frames uniformly (`np.linspace` rounded down, as lmms-eval and VLMEvalKit
do), gives the processor those frames with their `VideoMetadata` (so Qwen2.5-VL's `second_per_grid_ts` and
Qwen3-VL's prompt times are right) and the adapter their exact times through the per-call channel
(`generate(..., tango_video_timestamps=[metadata])`: frame index / average fps; `--timestamps` to give them), then
runs `generate` inside `tango_plugin.enabled`. Progress of the long steps goes to stderr (tqdm; off with `--quiet`
or when stderr is not a terminal). transformers, tqdm and the decoders are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Optional, Tuple

import torch

from ..config import TangoConfig
from ..integration.video_io import VIDEO_BACKENDS, SampledVideo, read_video
from ..table import markdown_table

DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("cpu", "cuda")


def build_config(ratio: Optional[float], preset: Optional[str], config_path: Optional[str]) -> Tuple[TangoConfig, str]:
    """The TangoConfig of a run and where it came from: --config, else --preset, else `TangoConfig()` (whose
    `sink_positions=None` lets the adapter apply its family preset's sinks when the grid matches); --ratio (when
    given) overrides the retention ratio of any of them."""
    if ratio is not None and not (0.0 < ratio <= 1.0):
        raise ValueError(f"--ratio {ratio}: the retention ratio must be in (0, 1]")
    if preset and config_path:
        raise ValueError(f"--preset {preset} and --config {config_path}: give one of them")
    if config_path:
        if not os.path.isfile(config_path):
            raise ValueError(f"--config {config_path}: no such file")
        try:
            cfg, source = TangoConfig.from_json(open(config_path).read()), f"--config {config_path}"
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {config_path}: not valid JSON ({exc})") from exc
    else:
        if preset:
            from ..presets import list_presets

            if preset not in list_presets():
                raise ValueError(f"--preset {preset}: unknown preset; known presets: {', '.join(list_presets())}")
            cfg, source = TangoConfig.from_preset(preset), f"preset {preset}"
        else:
            cfg, source = TangoConfig(), "defaults (sink positions from the adapter's family preset)"
    if ratio is not None:
        cfg = cfg.replace(retention_ratio=ratio)
    return cfg, source


def check_model_dir(model_dir: str) -> str:
    """The `model_type` of a local checkpoint folder, or a ValueError saying what is missing or unsupported."""
    if not os.path.isdir(model_dir):
        raise ValueError(f"--model {model_dir}: no such folder (a local checkpoint folder with config.json and the "
                         "processor files is needed; nothing is downloaded)")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"--model {model_dir}: no config.json in that folder")
    from transformers import AutoConfig

    from ..integration.adapter import list_adapters

    try:
        model_type = AutoConfig.from_pretrained(model_dir, local_files_only=True).model_type
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--model {model_dir}: its config.json cannot be read ({exc})") from exc
    if model_type not in list_adapters():
        raise ValueError(f"--model {model_dir}: model type {model_type!r} is not supported; supported model types: "
                         f"{', '.join(list_adapters())}")
    return model_type


def load_processor(model_dir: str):
    """`AutoProcessor.from_pretrained(model_dir, local_files_only=True)`; it must have a video processor."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--model {model_dir}: no processor could be loaded from that folder ({exc})") from exc
    if getattr(processor, "video_processor", None) is None:
        raise ValueError(f"--model {model_dir}: the folder has no video processor (AutoProcessor gave "
                         f"{type(processor).__name__}); save the model's processor there with "
                         "processor.save_pretrained(folder)")
    return processor


def load_model(model_dir: str, device: str, dtype: str):
    """`AutoModelForImageTextToText.from_pretrained` (local files only), or the concrete class the config names
    when the auto class does not map this config."""
    import transformers as tf

    kwargs = dict(local_files_only=True, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    try:
        model = tf.AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs)
    except ValueError as exc:  # "Unrecognized configuration class ... for AutoModelForImageTextToText"
        config = tf.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        names = getattr(config, "architectures", None) or []
        classes = [getattr(tf, n) for n in names if hasattr(tf, n)]
        if not classes:
            raise ValueError(f"--model {model_dir}: AutoModelForImageTextToText cannot load it ({exc}) and the "
                             f"config names no known class (architectures={names})") from exc
        model = classes[0].from_pretrained(model_dir, **kwargs)
    return model.to(device).eval()


def video_prompt(processor, model_type: str, question: str) -> Tuple[str, str]:
    """The prompt text and how it was made: the processor's chat template when it has one, else a plain prompt
    with the placeholder the processor expands (`<video>`; Qwen: `<|vision_start|><|video_pad|><|vision_end|>`)."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), "chat template"
    qwen = model_type.startswith("qwen")
    token = getattr(processor, "video_token", None) or ("<|video_pad|>" if qwen else "<video>")
    if qwen:
        token = f"<|vision_start|>{token}<|vision_end|>"
    return f"{token}\n{question}", "plain prompt (the processor has no chat template)"


def processor_inputs(processor, prompt: str, video: SampledVideo, device: str, dtype: torch.dtype) -> dict:
    """The model inputs of one prompt and one sampled video (the processor does not resample: the frames and their
    metadata are the ones `read_video` chose)."""
    enc = processor(text=[prompt], videos=[video.frames], return_tensors="pt",
                    videos_kwargs={"video_metadata": [video.metadata], "do_sample_frames": False})
    out = {}
    for k, v in enc.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Progress:
    """tqdm progress of the long steps, on stderr; off with `--quiet` or when stderr is not a terminal (then
    transformers' own progress bars are off too, until `close`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._restore = None
        if not enabled:
            try:
                from transformers.utils import logging as hf_logging
            except ImportError:
                return
            if hf_logging.is_progress_bar_enabled():
                hf_logging.disable_progress_bar()
                self._restore = hf_logging.enable_progress_bar

    def close(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    @contextmanager
    def step(self, desc: str):
        """One long step (loading, decoding): its name while it runs, the time it took when done."""
        from tqdm.auto import tqdm

        bar = tqdm(total=1, desc=desc, file=sys.stderr, disable=not self.enabled, leave=True,
                   bar_format="{desc}: {elapsed}")
        try:
            yield
            bar.update(1)
        finally:
            bar.close()

    def streamer(self, desc: str, total: int):
        """A `generate(streamer=...)` that advances a bar by one per new token (None when progress is off)."""
        if not self.enabled:
            return None
        from tqdm.auto import tqdm
        from transformers.generation.streamers import BaseStreamer

        class _Bar(BaseStreamer):
            def __init__(self) -> None:
                self.bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, leave=True)
                self.prompt = True

            def put(self, value) -> None:
                if self.prompt:  # the first call is the prompt
                    self.prompt = False
                    return
                self.bar.update(1)

            def end(self) -> None:
                self.bar.close()

        return _Bar()


def _generate(model, processor, inputs: dict, max_new_tokens: int, device: str, progress: Optional[Progress] = None,
              desc: str = "generating", **extra) -> Tuple[str, float]:
    """Greedy `generate` (with `extra` per-call kwargs such as `tango_video_timestamps`): the answer and its time."""
    streamer = progress.streamer(desc, max_new_tokens) if progress is not None else None
    if streamer is not None:
        extra["streamer"] = streamer
    _sync(device)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **extra)
    finally:
        if streamer is not None:
            streamer.end()
    _sync(device)
    seconds = time.perf_counter() - t0
    sequences = out.sequences if hasattr(out, "sequences") else out
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    return answer.strip(), seconds


def parse_timestamps(text: str, video: SampledVideo) -> torch.Tensor:
    """`--timestamps`: comma-separated seconds, one per sampled frame, non-decreasing and finite."""
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError as exc:
        raise ValueError(f"--timestamps {text!r}: not a comma-separated list of seconds ({exc})") from exc
    n = len(video.indices)
    if len(values) != n:
        raise ValueError(f"--timestamps has {len(values)} values, but {n} frames were sampled (frames "
                         f"{video.indices.tolist()} of {video.total_frames}); give one time in seconds per sampled "
                         f"frame, or leave --timestamps out to use frame index / fps")
    times = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(times).all()) or bool((times[1:] < times[:-1]).any()) or bool((times < 0).any()):
        raise ValueError(f"--timestamps {text!r}: the times must be finite, >= 0 and non-decreasing")
    return times


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def run(args) -> int:
    """The `tango-plugin run` command (argparse namespace in, exit code out)."""
    if args.frames < 1:
        raise ValueError(f"--frames {args.frames}: at least 1 frame is needed")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: at least 1 token is needed")
    if args.device not in DEVICES:
        raise ValueError(f"--device {args.device}: expected one of {', '.join(DEVICES)}")
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype}: expected one of {', '.join(DTYPES)}")
    backend = getattr(args, "video_backend", "auto")
    if backend not in ("auto",) + VIDEO_BACKENDS:
        raise ValueError(f"--video-backend {backend}: expected auto or one of {', '.join(VIDEO_BACKENDS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError("tango-plugin run needs transformers: pip install -e \".[hf,video]\"") from exc
    as_json = bool(getattr(args, "json", False))
    say = (lambda *a, **k: None) if as_json else print
    progress = Progress(not getattr(args, "quiet", False) and sys.stderr.isatty())
    try:
        return _run(args, backend, say, as_json, progress)
    finally:
        progress.close()


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _run(args, backend: str, say, as_json: bool, progress: Progress) -> int:
    timings = {}
    # the cheap checks first (config, model folder), then decoding, then loading the weights
    cfg, source = build_config(args.ratio, args.preset, args.config)
    model_type = check_model_dir(args.model)
    import transformers.video_utils  # noqa: F401  (imported before the clock starts: decoding time only)

    t0 = time.perf_counter()
    with progress.step(f"decoding {os.path.basename(args.video)}"):
        video = read_video(args.video, args.frames, label="--video", backend=backend)
    timings["decode_s"] = time.perf_counter() - t0
    given = getattr(args, "timestamps", None)
    if given:
        times, times_source = parse_timestamps(given, video), "--timestamps"
    else:
        times, times_source = video.timestamps, "frame index / fps (video metadata)"

    import tango_plugin as tango

    with progress.step("loading processor"):
        processor = load_processor(args.model)
    t0 = time.perf_counter()
    with progress.step(f"loading {os.path.basename(os.path.normpath(args.model))}"):
        model = load_model(args.model, args.device, args.dtype)
    timings["load_model_s"] = time.perf_counter() - t0
    say(f"model: {args.model} ({model_type}, {type(model).__name__}, {model.dtype}, {args.device}), "
        f"loaded in {timings['load_model_s']:.1f} s")
    say(f"video: {args.video} ({video.backend}): {video.total_frames} frames at {video.fps:g} fps; sampled "
        f"{len(video.indices)} frames {video.indices.tolist()}")
    say(f"timestamps (s, {times_source}): " + ", ".join(f"{t:.3f}" for t in times.tolist()))
    prompt, how = video_prompt(processor, model_type, args.question)
    say(f"prompt: {how}")
    say(f"config: {source}, strategy {cfg.strategy}, retention_ratio {cfg.retention_ratio:g}")
    inputs = processor_inputs(processor, prompt, video, args.device, model.dtype)

    rows, unpruned = [], None
    if args.compare:
        answer, seconds = _generate(model, processor, inputs, args.max_new_tokens, args.device, progress,
                                    "generating (unpruned)")
        n = int((inputs["input_ids"] == _video_token_id(model)).sum())
        unpruned = {"answer": answer, "visual_tokens": n, "generate_s": seconds}
        rows.append(["unpruned", str(n), str(n), "1.000", "-", f"{seconds:.3f}", _cell(answer)])
    # exact frame times per call: the loader's metadata (frames_indices / fps), or the --timestamps seconds;
    # the adapter reduces them to its engine frames (Qwen: one per temporal patch)
    per_call = [times] if given else [video.metadata]
    with tango.enabled(model, cfg, record_plans=bool(args.picture)) as handle:
        answer, seconds = _generate(model, processor, inputs, args.max_new_tokens, args.device, progress,
                                    "generating (pruned)", tango_video_timestamps=per_call)
        report = handle.report()
        records = [r for r in handle.plans() if r.kind == "video"] if args.picture else []
    timings["generate_s"] = seconds
    sample = report["samples"][0] if report["samples"] else None
    reason = None
    if sample is None or not sample["pruned"]:
        reason = (sample["note"] if sample else "no video row reached the adapter") or "retention ratio 1.0"
        _warn(f"the video was not pruned ({reason})")
    before = sample["visual_tokens_before"] if sample else 0
    after = sample["visual_tokens_after"] if sample else 0
    ratio = sample["ratio_kept"] if sample else 1.0
    prune_s = sample["prune_seconds"] if sample else 0.0
    timings["prune_s"] = prune_s
    rows.append([f"tango r={cfg.retention_ratio:g}", str(before), str(after), f"{ratio:.3f}", f"{prune_s:.3f}",
                 f"{seconds:.3f}", _cell(answer)])

    say(f"answer: {answer}")
    say(f"visual tokens: {before} -> {after} (ratio {ratio:.3f})")
    say(f"saliency source: {report['saliency_source']}")
    if sample and sample.get("video_timestamps"):
        used = sample["video_timestamps"][0]
        say(f"engine frame times (s, {sample.get('timestamps_source')}): "
            + (", ".join(f"{t:.3f}" for t in used) if used else "none (frame index)"))
    say(f"pruning time: {prune_s:.3f} s")
    say(f"time to generate ({args.max_new_tokens} new tokens at most): {seconds:.3f} s")
    if args.compare:
        say(markdown_table(["run", "visual tokens before", "after", "ratio", "pruning s", "generate s", "answer"],
                           rows))
        say("(one run each; the unpruned run goes first and also pays one-time warm-up costs, so for timings "
            "see benchmarks/prefill.py or run the command twice)")
    picture = None
    if args.picture:
        picture = _write_picture(args.picture, records, video, model, say)
    if as_json:
        out = {
            "model": {"path": args.model, "model_type": model_type, "class": type(model).__name__,
                      "dtype": str(model.dtype).replace("torch.", ""), "device": args.device},
            "video": {"path": args.video, "backend": video.backend, "total_frames": video.total_frames,
                      "fps": video.fps, "width": int(video.frames.shape[2]), "height": int(video.frames.shape[1])},
            "frames": video.indices.tolist(),
            "frame_times": times.tolist(),
            "frame_times_source": times_source,
            "question": args.question,
            "prompt": how,
            "config": {"source": source, **cfg.to_dict()},
            "pruned": reason is None,
            "not_pruned_reason": reason,
            "visual_tokens_before": before,
            "visual_tokens_after": after,
            "ratio_kept": ratio,
            "timings": timings,
            "answer": answer,
            "unpruned": unpruned,
            "picture": picture,
            "report": report,
        }
        print(json.dumps(out, default=_jsonable))
    return 0


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _video_token_id(model) -> int:
    cfg = model.config
    token = getattr(cfg, "video_token_id", None)
    return token if token is not None else cfg.video_token_index


def _write_picture(path: str, records: list, video: SampledVideo, model, say) -> Optional[str]:
    """The kept tokens of the first video over its sampled frames: one tile per engine frame (Qwen: per temporal
    patch, showing the patch's first frame), labelled with the frame index and time."""
    from .picture import kept_frames_png

    if not records:
        _warn("no picture: the strategy did not run (retention ratio 1.0 or nothing to prune)")
        return None
    tokens, plan = records[0].tokens, records[0].plan
    T, n = tokens.num_frames, len(video.indices)
    per = getattr(getattr(model.config, "vision_config", None), "temporal_patch_size", None)
    if not isinstance(per, int) or -(-n // per) != T:
        per = -(-n // T)  # sampled frames per engine frame
    picks = [min(t * per, n - 1) for t in range(T)]
    engine = tokens.timestamps.tolist() if tokens.timestamps is not None else [None] * T
    labels = []
    for t, k in enumerate(picks):
        label = f"frame {int(video.indices[k])} @ {float(video.timestamps[k]):.2f}s"
        if engine[t] is not None and abs(engine[t] - float(video.timestamps[k])) > 5e-3:
            label += f" (t {engine[t]:.2f}s)"  # the time ST-RoPE used for the tile (Qwen: the patch's time)
        labels.append(label)
    written, layout = kept_frames_png(path, [video.frames[k] for k in picks], tuple(tokens.grid_hw),
                                      plan.kept_indices.cpu(), labels=labels)
    say(f"wrote {written} ({T} frames x {tokens.tokens_per_frame} tokens, {layout.size[0]} x {layout.size[1]} px; "
        "kept tokens outlined in green, pruned ones dimmed)")
    return written


def cmd_run(args) -> int:
    try:
        return run(args)
    except ImportError as exc:  # a missing extra: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1

__all__ = ["cmd_run", "run", "build_config", "check_model_dir", "load_model", "load_processor", "video_prompt",
           "processor_inputs", "parse_timestamps"]
