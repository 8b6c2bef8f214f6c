"""`tango-plugin run`: answer a question about a video file with a local checkpoint, pruned with Tango.

    tango-plugin run --model ./LLaVA-OneVision-Qwen2-0.5B-ov-hf --video clip.mp4 --question "What happens?" --compare

Loads the checkpoint folder with `AutoModelForImageTextToText` and `AutoProcessor` (local files only), reads the
video with PyAV, samples `--frames` frames uniformly over the decoded frames (`np.linspace`, as lmms-eval and
VLMEvalKit do), gives the processor those frames with their metadata (so Qwen2.5-VL's `second_per_grid_ts` and
Qwen3-VL's prompt times are right) and the adapter their times (frame index / average fps, the `video_timestamps`
option), then runs `generate` inside `tango_plugin.enabled`. transformers and av are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Tuple

import torch

from ..config import TangoConfig
from ..integration.video_io import SampledVideo, read_video
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


def _check_model_dir(model_dir: str) -> str:
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


def _inputs(processor, prompt: str, video: SampledVideo, device: str, dtype: torch.dtype) -> dict:
    from transformers.video_utils import VideoMetadata

    h, w = video.frames.shape[1:3]
    meta = VideoMetadata(total_num_frames=video.total_frames, fps=video.fps, width=w, height=h,
                         duration=video.total_frames / video.fps, frames_indices=video.indices.tolist())
    enc = processor(text=[prompt], videos=[video.frames], return_tensors="pt",
                    videos_kwargs={"video_metadata": [meta], "do_sample_frames": False})
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


def _generate(model, processor, inputs: dict, max_new_tokens: int, device: str) -> Tuple[str, float]:
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    return answer.strip(), seconds


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
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError("tango-plugin run needs transformers: pip install -e \".[hf,video]\"") from exc
    # the cheap checks first (config, model folder), then decoding, then loading the weights
    cfg, source = build_config(args.ratio, args.preset, args.config)
    model_type = _check_model_dir(args.model)
    video = read_video(args.video, args.frames, label="--video")

    import tango_plugin as tango

    processor = load_processor(args.model)
    t0 = time.perf_counter()
    model = load_model(args.model, args.device, args.dtype)
    print(f"model: {args.model} ({model_type}, {type(model).__name__}, {model.dtype}, {args.device}), "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    print(f"video: {args.video}: {video.total_frames} frames at {video.fps:g} fps; sampled {len(video.indices)} "
          f"frames {video.indices.tolist()}")
    print("timestamps (s): " + ", ".join(f"{t:.3f}" for t in video.timestamps.tolist()))
    prompt, how = video_prompt(processor, model_type, args.question)
    print(f"prompt: {how}")
    print(f"config: {source}, strategy {cfg.strategy}, retention_ratio {cfg.retention_ratio:g}")
    inputs = _inputs(processor, prompt, video, args.device, model.dtype)

    rows = []
    if args.compare:
        answer, seconds = _generate(model, processor, inputs, args.max_new_tokens, args.device)
        n = int((inputs["input_ids"] == _video_token_id(model)).sum())
        rows.append(["unpruned", str(n), str(n), "1.000", "-", f"{seconds:.3f}", _cell(answer)])
    times = video.timestamps  # one per sampled frame; the adapter reduces them to its temporal patches
    with tango.enabled(model, cfg, video_timestamps=times, record_plans=bool(args.picture)) as handle:
        answer, seconds = _generate(model, processor, inputs, args.max_new_tokens, args.device)
        report = handle.report()
        records = handle.plans() if args.picture else []
    sample = report["samples"][0] if report["samples"] else None
    if sample is None or not sample["pruned"]:
        note = sample["note"] if sample else "no video row reached the adapter"
        print(f"warning: the video was not pruned ({note or 'retention ratio 1.0'})")
    before = sample["visual_tokens_before"] if sample else 0
    after = sample["visual_tokens_after"] if sample else 0
    ratio = sample["ratio_kept"] if sample else 1.0
    prune_s = sample["prune_seconds"] if sample else 0.0
    rows.append([f"tango r={cfg.retention_ratio:g}", str(before), str(after), f"{ratio:.3f}", f"{prune_s:.3f}",
                 f"{seconds:.3f}", _cell(answer)])

    print(f"answer: {answer}")
    print(f"visual tokens: {before} -> {after} (ratio {ratio:.3f})")
    print(f"saliency source: {report['saliency_source']}")
    print(f"pruning time: {prune_s:.3f} s")
    print(f"time to generate ({args.max_new_tokens} new tokens at most): {seconds:.3f} s")
    if args.compare:
        print(markdown_table(["run", "visual tokens before", "after", "ratio", "pruning s", "generate s", "answer"],
                             rows))
        print("(one run each; the unpruned run goes first and also pays one-time warm-up costs, so for timings "
              "see benchmarks/prefill.py or run the command twice)")
    if args.picture:
        _write_picture(args.picture, records)
    return 0


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _video_token_id(model) -> int:
    cfg = model.config
    token = getattr(cfg, "video_token_id", None)
    return token if token is not None else cfg.video_token_index


def _write_picture(path: str, records: list) -> None:
    from .picture import kept_map_png

    if not records:
        print("no picture: the strategy did not run (retention ratio 1.0 or nothing to prune)")
        return
    tokens, plan = records[0].tokens, records[0].plan
    saliency = tokens.saliency.detach().float().cpu()
    print(f"wrote {kept_map_png(path, saliency, tuple(tokens.grid_hw), plan.kept_indices.cpu())} "
          f"({saliency.shape[0]} frames x {saliency.shape[1]} tokens, kept tokens in green)")




def cmd_run(args) -> int:
    try:
        return run(args)
    except ImportError as exc:  # a missing extra: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1

__all__ = ["cmd_run", "run", "build_config", "load_model", "load_processor", "video_prompt"]
