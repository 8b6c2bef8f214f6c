"""How close Tango inside vLLM is to Tango in transformers, on the same checkpoint, frames and frame times.

    python benchmarks/vllm_parity.py --python build/vllm-venv/bin/python [--dtype float32 bfloat16] [--videos 3]

For each family: vLLM runs the videos with the plugin's capture on (each video's engine inputs and plan), and
transformers runs them through `tango_plugin.enable` (recording its strategy calls); both generate 8 greedy tokens.
Per family and dtype the table gives the largest difference of the visual features and of the saliency scores the
two vision towers produced, how many videos kept exactly the same tokens (and the mean Jaccard overlap of the kept
sets), how many times the strategy given vLLM's own inputs reproduced vLLM's kept set in this process (it should
always: the same code on the same tensors), how many greedy outputs agree, pruned and (both unpruned) without
the plugin, and the unpruned prompt lengths. Differences come from the towers'
kernels (vLLM's fused QKV projection, its rotary and attention ops, its bfloat16 casts) and from the LLM
(vLLM's paged attention, the CPU kernels); the decision code is the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = {"qwen2_vl": "qwen", "qwen2_5_vl": "qwen", "qwen3_vl": "qwen", "llava_onevision": "llava"}
PROMPT = {"qwen": "<|vision_start|><|video_pad|><|vision_end|>", "llava": "<video>"}


def prompt(style: str) -> str:
    return f"<|im_start|>user\n{PROMPT[style]}what happens?<|im_end|>\n<|im_start|>assistant\n"


def frames_for(seed: int, count: int = 16, side: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
    return np.stack([np.clip(np.roll(base, 4 * i, axis=1).astype(int) + rng.integers(-8, 8, base.shape), 0, 255)
                     for i in range(count)]).astype(np.uint8)


def run_vllm(python: str, work: Path, model_type: str, folder: str, dtype: str, ratio, videos: list) -> tuple:
    """(captured engine inputs per video, greedy outputs, prompt lengths); `ratio` None: stock vLLM."""
    capture = work / f"capture-{model_type}-{dtype}"
    for old in capture.glob("*.pt"):
        old.unlink()
    groups = [[{"name": f"v{i}", "prompt": prompt(FAMILIES[model_type]),
                "video": {"frames": str(path), "fps": 4.0, "indices": list(range(16))}}] for i, path in
              enumerate(videos)]
    kwargs = {"max_model_len": 4096, "enforce_eager": True, "dtype": dtype, "limit_mm_per_prompt": {"video": 1}}
    if ratio is not None:
        kwargs["hf_overrides"] = {"tango": {"tango_ratio": ratio, "tango_capture": str(capture)}}
    spec = {"model": folder, "llm_kwargs": kwargs, "groups": groups}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([python, "-m", "tango_plugin.testing.vllm_drive", str(work / "spec.json"),
                           str(work / "out.json")], capture_output=True, text=True, env=env)
    out = json.loads((work / "out.json").read_text())
    if out["load_error"]:
        raise RuntimeError(out["load_error"] + proc.stderr[-2000:])
    # one capture file per video, in the order the worker ran them (one group at a time)
    files = sorted(capture.glob("*.pt"), key=lambda p: int(p.name.split("-")[1]))
    captured = [torch.load(f, weights_only=False) for f in files if "rank0" in f.name]
    requests = [out["requests"][f"v{i}"] for i in range(len(videos))]
    return captured[-len(videos):], [r["output"] for r in requests], [r["prompt_tokens"] for r in requests]


def run_transformers(model_type: str, folder: str, dtype: str, config, videos: list) -> tuple:
    """(recorded strategy calls, greedy outputs, prompt lengths); `config` None: unpruned."""
    import transformers as tf

    import tango_plugin as tango

    processor = tf.AutoProcessor.from_pretrained(folder)
    model = tf.AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    handle = tango.enable(model, config, record_plans=True) if config is not None else None
    plans, outputs, lengths = [], [], []
    meta = tf.video_utils.VideoMetadata(total_num_frames=16, fps=4.0, frames_indices=list(range(16)))
    for path in videos:
        inputs = processor(text=[prompt(FAMILIES[model_type])], videos=[np.load(path)], video_metadata=[meta],
                           return_tensors="pt", do_sample_frames=False)
        extra = {"tango_video_timestamps": [meta]} if handle is not None else {}
        if handle is not None:
            handle.reset()
        with torch.no_grad():
            out = model.generate(**inputs, **extra, max_new_tokens=8, do_sample=False)
        if handle is not None:
            plans.append(handle.plans()[0])
        outputs.append(out[0, inputs["input_ids"].shape[1]:].tolist())
        lengths.append(int(inputs["input_ids"].shape[1]))
    if handle is not None:
        handle.remove()
    return plans, outputs, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="python of the environment with vLLM and tango_plugin")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--side", type=int, default=112, help="frame side in pixels (and the processor's)")
    parser.add_argument("--work", default=str(ROOT / "build" / "vllm-parity"))
    args = parser.parse_args()

    from tango_plugin import TangoConfig, VisualTokens, run_strategy
    from tango_plugin.testing.checkpoints import save_tiny_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(args.videos):
        path = work / f"video{i}.npy"
        np.save(path, frames_for(100 + i, side=args.side))
        videos.append(path)
    rows = []
    for model_type in args.families:
        folder = save_tiny_checkpoint(str(work / model_type), model_type, head_dim=32, side=args.side)
        for dtype in args.dtype:
            captured, vllm_out, _ = run_vllm(args.python, work, model_type, folder, dtype, args.ratio, videos)
            config = TangoConfig.from_dict(captured[0]["config"])
            plans, hf_out, _ = run_transformers(model_type, folder, dtype, config, videos)
            _, vllm_stock, vllm_len = run_vllm(args.python, work, model_type, folder, dtype, None, videos)
            _, hf_stock, hf_len = run_transformers(model_type, folder, dtype, None, videos)
            stock_agree = sum(x == y for x, y in zip(vllm_stock, hf_stock))
            feat, sal, same, jaccard, rerun = 0.0, 0.0, 0, [], 0
            for cap, rec in zip(captured, plans):
                feat = max(feat, float((cap["features"].float() - rec.tokens.features.float()).abs().max()))
                sal = max(sal, float((cap["saliency"].float() - rec.tokens.saliency.float()).abs().max()))
                a, b = set(cap["kept_indices"].tolist()), set(rec.plan.kept_indices.tolist())
                same += a == b
                jaccard.append(len(a & b) / len(a | b))
                tokens = VisualTokens(features=cap["features"], saliency=cap["saliency"], grid_hw=cap["grid_hw"],
                                      timestamps=cap["timestamps"], sink_positions=cap["sink_positions"])
                rerun += torch.equal(run_strategy(tokens, config).kept_indices, cap["kept_indices"])
            agree = sum(x == y for x, y in zip(vllm_out, hf_out))
            rows.append((model_type, dtype, feat, sal, same, float(np.mean(jaccard)), rerun, agree, len(videos),
                         stock_agree, vllm_len[0], hf_len[0]))
            print(rows[-1], flush=True)
    print()
    print("| family | dtype | features max abs diff | saliency max abs diff | same kept set | mean Jaccard | "
          "vLLM inputs re-run here: same kept set | same greedy tokens, pruned | same greedy tokens, unpruned | "
          "unpruned prompt tokens vLLM / transformers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, d, f, s, same, j, rerun, agree, n, stock, lv, lh in rows:
        print(f"| {m} | {d} | {f:.2e} | {s:.2e} | {same}/{n} | {j:.3f} | {rerun}/{n} | {agree}/{n} | {stock}/{n} | "
              f"{lv} / {lh} |")


if __name__ == "__main__":
    main()
