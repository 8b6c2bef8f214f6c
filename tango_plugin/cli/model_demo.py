"""The model half of `tango-plugin demo`: tiny random Video LLMs, built from configs (no downloads).

For each registered adapter that has a tiny recipe: one generated video, `generate` without and with Tango,
the visual tokens the LLM received, prefill time and what the report says. One more row runs LLaVA-OV in the
LLaVA-Video style (average pooling, grid newlines) with the intra-LLM stage after its first decoder layer.
"""

from __future__ import annotations

import time
import warnings

import torch

from ..config import TangoConfig
from ..integration.adapter import list_adapters
from ..integration.api import enable
from ..table import markdown_table
from ..testing import MODEL_TYPES, VideoSpec, build_model, build_tokenizer, video_inputs


def _prefill_ms(model, inputs, repeats: int = 3) -> float:
    times = []
    with torch.no_grad():
        model(**inputs)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def run_model_demo(ratio: float = 0.1, frames: int = 16, seed: int = 0, new_tokens: int = 6) -> list:
    """Print and return one row per tiny model: tokens before/after, prefill ms, generated ids."""
    rows = []
    runs = [(t, t, {}, {}) for t in MODEL_TYPES if t in list_adapters()]
    if "llava_onevision" in list_adapters():
        runs.append(("llava_onevision (LLaVA-Video style, intra-LLM K=1)", "llava_onevision",
                     {"pool_mode": "average", "newline": "grid"}, {"intra_llm_layer": 1, "intra_llm_ratio": 0.5}))
    print(f"\nTiny random models (weights from a seed, tokenizer trained on the fly), {frames}-frame video, "
          f"retention {ratio}:")
    for label, model_type, options, extra in runs:
        tok = build_tokenizer("llava" if model_type == "llava_onevision" else "qwen")
        model = build_model(model_type, tok, seed=seed)
        inputs = video_inputs(model, tok, [[VideoSpec(frames=frames, size=None, seed=seed)]],
                              ["What happens in this video?"])
        with torch.no_grad():
            full_ids = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        full_ms = _prefill_ms(model, inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the generated frames stand for a clip sampled at 1 fps: ST-RoPE times are frame / fps seconds
            handle = enable(model, TangoConfig(retention_ratio=ratio, **extra), fps=1.0, **options)
            with torch.no_grad():
                pruned_ids = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            report = handle.report()
            pruned_ms = _prefill_ms(model, inputs)
            handle.remove()
        sample = report["samples"][0] if report["samples"] else {}
        prompt_len = inputs["input_ids"].shape[1]
        rows.append(dict(model=label, before=sample.get("visual_tokens_before", 0),
                         after=sample.get("visual_tokens_after", 0), source=report["saliency_source"],
                         intra=sample.get("intra_llm_tokens_after"),
                         full_ms=full_ms, pruned_ms=pruned_ms,
                         same_prompt=bool(torch.equal(full_ids[:, :prompt_len], pruned_ids[:, :prompt_len])),
                         new_full=full_ids[0, prompt_len:].tolist(), new_pruned=pruned_ids[0, prompt_len:].tolist(),
                         warnings=[str(w.message) for w in caught]))
    header = ["model", "visual tokens", "kept", "after layer K", "saliency", "forward ms full", "forward ms pruned",
              "new tokens (full)", "new tokens (pruned)"]
    body = [[r["model"], str(r["before"]), str(r["after"]), "-" if r["intra"] is None else str(r["intra"]),
             str(r["source"]), f"{r['full_ms']:.1f}",
             f"{r['pruned_ms']:.1f}", str(r["new_full"]), str(r["new_pruned"])] for r in rows]
    print(markdown_table(header, body))
    print("Random weights: the generated ids only show that generate runs end to end with the shorter input; "
          "`generate` returns the original prompt followed by the new tokens, pruned or not. At this tiny size the "
          "pruning work outweighs the saved LLM time; benchmarks/prefill.py measures 0.5B-shaped models. "
          "'after layer K': video tokens left inside the LLM by the intra-LLM stage (generate only; the forward "
          "timing column runs without it).")
    for r in rows:
        for w in r["warnings"]:
            print(f"note ({r['model']}): {w}")
    return rows
