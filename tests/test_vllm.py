"""The vLLM plugin: settings and counts (no vLLM needed), then the real vLLM on tiny saved checkpoints.

The vLLM runs use a separate environment (vLLM's CPU build pins torch 2.13 and transformers < 5.20) whose python
`TANGO_VLLM_PYTHON` names; `.ci/run` builds it at `build/vllm-venv` and sets `TANGO_REQUIRE_VLLM=1`, which turns a
missing environment into a failure instead of a skip. The checkpoints are written here (this environment's
transformers) with 32-wide text heads (vLLM's CPU attention takes 32 and up) and read by vLLM from disk; each run is
`tango_plugin.testing.vllm_drive` (offline `LLM`) or the server with `tango_plugin.testing.vllm_client` (the
OpenAI client).

Expected counts are computed here from the published rule, T * max(1, ceil(L * r)) per video (T temporal patches or
frames, L tokens per frame), never read back from the plugin; expected frame times from the frames' indices / fps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tango_plugin.patches.vllm import settings as vs
from tango_plugin.patches.vllm.common import decode_positions, encode_positions

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # model_type -> (architecture, prompt style)
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "qwen"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "qwen"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "qwen"),
    "qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration", "qwen"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "llava"),
}
#: the strategy each family's Tango run uses (any registered strategy works through the section)
STRATEGY = {"qwen2_vl": "visionzip"}
FRAMES, FPS, SIDE = 16, 4.0, 112
VIDEO = {"qwen": "<|vision_start|><|video_pad|><|vision_end|>", "llava": "<video>"}
IMAGE = {"qwen": "<|vision_start|><|image_pad|><|vision_end|>", "llava": "<image>"}


def expected_count(T: int, L: int, r: float) -> int:
    return T * max(1, math.ceil(L * r))


def prompt(style: str, video: bool = True, image: bool = False, question: str = "what happens?") -> str:
    media = (IMAGE[style] if image else "") + (VIDEO[style] if video else "")
    return f"<|im_start|>user\n{media}{question}<|im_end|>\n<|im_start|>assistant\n"


# ============================================================================================ no vLLM needed
class _Config:
    def __init__(self, section=None):
        if section is not None:
            self.tango = section


def test_settings_from_the_section_use_the_shared_knobs():
    s = vs.settings_for("Qwen2_5_VLForConditionalGeneration", _Config({"tango_ratio": 0.25, "tango_strategy": "topk"}))
    assert s.config.retention_ratio == 0.25 and s.config.strategy == "topk" and s.config.exact_budget is True
    assert s.family == "qwen2_5_vl" and s.preset == "qwen2.5-vl"
    assert vs.settings_for("Qwen2_5_VLForConditionalGeneration", _Config()) is None  # no section: stock vLLM
    assert vs.settings_for("Qwen2_5_VLForConditionalGeneration", _Config({"tango": False})) is None
    # a per-request ratio gives the config the section would give with that ratio
    cfg = s.config_for(0.5)
    assert cfg.retention_ratio == 0.5 and cfg.strategy == "topk" and cfg.similarity_threshold == 0.8


@pytest.mark.parametrize("section,fragments", [
    ({"tango_ratio": 1.5}, ["tango_ratio", "1.5", "(0.0, 1.0]"]),
    ({"tango_ratoi": 0.2}, ["tango_ratoi", "tango_ratio"]),
    ({"tango_intra_llm_layer": 2}, ["intra-LLM", "not supported in vLLM"]),
    ({"tango_prune_images": True}, ["images", "not pruned in vLLM"]),
    ({"tango_saliency_source": "siglip_head"}, ["siglip_head", "global_query"]),
    ({"tango_exact_budget": False}, ["exact_budget", "placeholder"]),
    ({"tango_newline": "grid"}, ["newline", "grid"]),
    ({"tango_pool_mode": "average"}, ["pool_mode", "LLaVA-OneVision only"]),
    ("0.1", ["section", "object of tango knobs"]),
])
def test_bad_sections_are_refused_with_the_knob_named(section, fragments):
    with pytest.raises(ValueError) as err:
        vs.settings_for("Qwen2_5_VLForConditionalGeneration", _Config(section))
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_a_section_on_an_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(ValueError) as err:
        vs.settings_for("LlavaForConditionalGeneration", _Config({"tango_ratio": 0.2}))
    message = str(err.value)
    assert "LlavaForConditionalGeneration" in message
    for arch in vs.SUPPORTED_ARCHITECTURES:
        assert arch in message
    assert vs.settings_for("LlavaForConditionalGeneration", _Config({"tango": "off"})) is None


def test_request_knobs():
    s = vs.settings_for("Qwen2VLForConditionalGeneration", _Config({"tango_ratio": 0.1}))
    assert vs.request_ratio(s, {}) == 0.1
    assert vs.request_ratio(s, {"tango_ratio": "0.3", "fps": 2}) == 0.3
    assert vs.request_ratio(s, {"tango": False}) == 1.0
    assert vs.strip_knobs({"tango_ratio": 0.3, "fps": 2}) == {"fps": 2}
    for bad, fragment in [({"tango_ratio": 0}, "(0.0, 1.0]"), ({"tango_ratio": "x"}, "a number"),
                          ({"tango_strategy": "topk"}, "not per-request knobs"),
                          ({"tango": "maybe"}, "true or false")]:
        with pytest.raises(ValueError, match=None) as err:
            vs.request_ratio(s, bad)
        assert fragment in str(err.value)


def test_the_count_is_the_published_rule_and_survives_the_trip_as_bits():
    for T, L, r in [(8, 16, 0.25), (1, 196, 0.01), (32, 196, 0.1), (5, 9, 1.0), (3, 7, 1 - 0.7)]:
        assert vs.video_token_count(T, L, r) == expected_count(T, L, r)
    ratio = 1 - 0.7  # 0.30000000000000004: a float cast on the way would change ceil(L * r) for some L
    bits = vs.pack_float64([ratio])
    assert bits.dtype == torch.int64 and float(vs.unpack_float64(bits)[0]) == ratio


def test_position_channels_are_exact_in_bfloat16():
    pos = torch.tensor([[0, 0, 0], [255, 256, 257], [1000, 4097, 65535]])
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert torch.equal(decode_positions(encode_positions(pos, dtype)), pos.t())
    # what vLLM's own channels lose: positions cast to bfloat16 directly
    assert int(torch.tensor(257).to(torch.bfloat16)) != 257
    with pytest.raises(ValueError, match="do not fit"):
        encode_positions(torch.tensor([[70000, 0, 0]]), torch.float32)


def test_frame_times_from_metadata():
    seconds, source = vs.frame_times_from_metadata({"fps": 4.0, "frames_indices": [0, 3, 6]}, 3, None)
    assert seconds.tolist() == [0.0, 0.75, 1.5] and vs.TIME_SOURCES[source].startswith("video metadata (frames")
    seconds, source = vs.frame_times_from_metadata({"fps": 2.0}, 3, None)
    assert seconds.tolist() == [0.0, 0.5, 1.0] and source == 1
    assert vs.frame_times_from_metadata(None, 3, 5.0)[0].tolist() == [0.0, 0.2, 0.4]
    assert vs.frame_times_from_metadata(None, 3, None) == (None, 2)


def test_version_outside_the_tested_range_warns_with_the_range():
    from tango_plugin.patches.vllm import version_note

    assert version_note("0.32.0") == "" and version_note("0.33.1") == ""
    for version in ("0.31.2", "0.34.0", "1.0.0"):
        note = version_note(version)
        assert version in note and ">= 0.32, < 0.34" in note


def test_the_entry_point_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points."vllm.general_plugins"]' in text
    assert 'tango = "tango_plugin.patches.vllm:register"' in text


# ============================================================================================ real vLLM
@pytest.fixture(scope="module")
def vllm_python():
    python = os.environ.get("TANGO_VLLM_PYTHON")
    if not python or not Path(python).exists():
        if os.environ.get("TANGO_REQUIRE_VLLM"):
            pytest.fail("TANGO_REQUIRE_VLLM is set but TANGO_VLLM_PYTHON does not name a python with vLLM")
        pytest.skip("no vLLM environment (set TANGO_VLLM_PYTHON to a python with vllm and tango_plugin installed)")
    return python


def _env() -> dict:
    env = dict(os.environ)
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="INFO", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    pytest.importorskip("torchvision")
    from tango_plugin.testing.checkpoints import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    ckpt = {mt: save_tiny_checkpoint(str(root / mt), mt, head_dim=32) for mt in FAMILIES}
    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, size=(SIDE, SIDE, 3), dtype=np.uint8)
    # a pattern sliding right by 4 pixels a frame, plus a little noise: frames alike but not equal
    frames = np.stack([np.clip(np.roll(base, 4 * i, axis=1).astype(int) + rng.integers(-8, 8, base.shape), 0, 255)
                       for i in range(FRAMES)]).astype(np.uint8)
    np.save(root / "frames.npy", frames)
    np.save(root / "one_frame.npy", frames[:1])
    np.save(root / "half_frames.npy", frames[:FRAMES // 2])
    np.save(root / "image.npy", frames[3])
    return {"root": root, "checkpoints": ckpt, "frames": str(root / "frames.npy"),
            "one_frame": str(root / "one_frame.npy"), "half_frames": str(root / "half_frames.npy"),
            "image": str(root / "image.npy")}


def drive(python: str, work: dict, name: str, model: str, llm_kwargs: dict, groups: list, timeout: int = 600) -> dict:
    spec = {"model": model, "llm_kwargs": llm_kwargs, "groups": groups}
    spec_path = work["root"] / f"{name}.spec.json"
    out_path = work["root"] / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([python, "-m", "tango_plugin.testing.vllm_drive", str(spec_path), str(out_path)], env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    (work["root"] / f"{name}.log").write_text(proc.stdout + proc.stderr)
    assert out_path.exists(), f"vLLM run {name} wrote no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(out_path.read_text())
    result["log"] = proc.stdout + proc.stderr
    return result


def _video(work, frames_key="frames", fps=FPS, **extra) -> dict:
    n = len(np.load(work[frames_key]))
    return {"frames": work[frames_key], "fps": fps, "indices": list(range(n)), **extra}


def _llm_kwargs(tango=None, **extra) -> dict:
    kwargs = {"max_model_len": 4096, "enforce_eager": True, "dtype": "float32",
              "limit_mm_per_prompt": {"video": 2, "image": 1}}
    if tango is not None:
        kwargs["hf_overrides"] = {"tango": tango}
    kwargs.update(extra)
    return kwargs


def _records(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _patch_times(model_type: str, indices, fps: float, patches: int) -> list:
    """Per-patch seconds by the published rules (not the plugin's code): Qwen2/2.5 interpolate the frame times at
    `patches` evenly spaced points (np.interp(linspace)), Qwen3 takes each patch's first and last frame's mean,
    LLaVA-OV one time per frame."""
    times = np.asarray(indices, dtype=np.float64) / fps
    if model_type == "llava_onevision":
        return times.tolist()
    if model_type.startswith("qwen3"):
        padded = np.concatenate([times, np.repeat(times[-1:], 2 * patches - len(times))]).reshape(patches, 2)
        return ((padded[:, 0] + padded[:, 1]) / 2).tolist()
    return np.interp(np.linspace(0, len(times) - 1, patches), np.arange(len(times)), times).tolist()


class _Runs(dict):
    """One stock and one Tango `LLM` per family (the Tango one with the report and the capture on), each run on
    first use."""

    def __init__(self, python, work):
        super().__init__()
        self.python, self.work = python, work

    def __missing__(self, model_type):
        self[model_type] = _family_runs(self.python, self.work, model_type)
        return self[model_type]


@pytest.fixture(scope="module")
def runs(vllm_python, work):
    return _Runs(vllm_python, work)


def _family_runs(vllm_python, work, model_type) -> dict:
    arch, style = FAMILIES[model_type]
    model = work["checkpoints"][model_type]
    video = _video(work)
    image = {"pixels": work["image"]}
    stock = drive(vllm_python, work, f"stock-{model_type}", model, _llm_kwargs(),
                  [[{"name": "video", "prompt": prompt(style), "video": video},
                    {"name": "image_only", "prompt": prompt(style, video=False, image=True), "image": image},
                    {"name": "image_and_video", "prompt": prompt(style, image=True), "video": video,
                     "image": image}],
                   [{"name": "tango_knob", "prompt": prompt(style), "video": video,
                     "mm_processor_kwargs": {"tango_ratio": 0.5}}]])
    report = work["root"] / f"report-{model_type}.jsonl"
    capture = work["root"] / f"capture-{model_type}"
    section = {"tango_ratio": 0.25, "tango_report": str(report), "tango_capture": str(capture),
               "tango_strategy": STRATEGY.get(model_type, "tango")}
    one = _video(work, "one_frame")
    tango = drive(vllm_python, work, f"tango-{model_type}", model, _llm_kwargs(section), [
        [{"name": "default", "prompt": prompt(style), "video": video},
         {"name": "half", "prompt": prompt(style), "video": video, "mm_processor_kwargs": {"tango_ratio": 0.5}},
         {"name": "off", "prompt": prompt(style), "video": video, "mm_processor_kwargs": {"tango": False}},
         {"name": "tiny_ratio", "prompt": prompt(style), "video": video,
          "mm_processor_kwargs": {"tango_ratio": 0.001}}],
        [{"name": "one_frame", "prompt": prompt(style), "video": one}],
        [{"name": "image_and_video", "prompt": prompt(style, image=True), "video": video,
          "image": {"pixels": work["image"]}}],
        [{"name": "image_only", "prompt": prompt(style, video=False, image=True),
          "image": {"pixels": work["image"]}}],
        [{"name": "bad_knob", "prompt": prompt(style), "video": video,
          "mm_processor_kwargs": {"tango_strategy": "topk"}}],
        [{"name": "bad_ratio", "prompt": prompt(style), "video": video, "mm_processor_kwargs": {"tango_ratio": 2}}],
        # two videos of different lengths in one request, pruned and not (vLLM's own LLaVA-OV fails on this one)
        [{"name": "two_videos", "prompt": prompt(style, question="and " + VIDEO[style] + "what?"),
          "videos": [video, _video(work, "half_frames")]},
         {"name": "two_videos_off", "prompt": prompt(style, question="and " + VIDEO[style] + "what?"),
          "videos": [video, _video(work, "half_frames")], "mm_processor_kwargs": {"tango": False}}],
    ])
    return {"stock": stock, "tango": tango, "report": report, "capture": capture}


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_offline_counts_outputs_and_report(runs, model_type):
    arch, _ = FAMILIES[model_type]
    stock, tango = runs[model_type]["stock"], runs[model_type]["tango"]
    assert stock["load_error"] is None and tango["load_error"] is None, (stock["load_error"], tango["load_error"])
    req = tango["requests"]
    for name in ("default", "half", "off", "tiny_ratio", "image_and_video", "image_only"):
        assert req[name]["error"] is None, (name, req[name]["error"])
    records = [r for r in _records(runs[model_type]["report"]) if r["rank"] == 0]
    by_ratio = {}
    for r in records:
        by_ratio.setdefault(r["ratio"], r)
    assert {0.25, 0.5, 1.0, 0.001} <= set(by_ratio), by_ratio.keys()
    full = by_ratio[1.0]
    T, (rows, cols) = full["frames"], full["grid"]
    L = rows * cols
    newline = 1 if model_type == "llava_onevision" else 0
    # the grid the model saw is the processor's (Qwen: 2 frames a temporal patch, 112 px -> 4 x 4 merged tokens;
    # Qwen3: 16-pixel patches, 96 px -> 3 x 3; LLaVA-OV: every frame, 8 x 8 patches pooled to 4 x 4)
    assert T == (FRAMES if model_type == "llava_onevision" else FRAMES // 2)
    assert L == (9 if model_type.startswith("qwen3") else 16)
    stock_tokens = stock["requests"]["video"]["prompt_tokens"]
    # ratio 1.0 (tango=false) is exactly the stock prompt and the stock greedy output
    assert req["off"]["prompt_tokens"] == stock_tokens
    assert req["off"]["output"] == stock["requests"]["video"]["output"]
    if not model_type.startswith("qwen3"):  # Qwen3-VL lays a video's span out as one block the model fills
        assert req["off"]["prompt_token_ids"] == stock["requests"]["video"]["prompt_token_ids"]
    for name, r in (("default", 0.25), ("half", 0.5), ("tiny_ratio", 0.001)):
        assert req[name]["prompt_tokens"] == stock_tokens - T * L + expected_count(T, L, r), name
        rec = by_ratio[r]
        assert rec["tokens_before"] == T * L + newline and rec["kept_by_strategy"] == expected_count(T, L, r)
        assert rec["pruned"] and rec["strategy"] == STRATEGY.get(model_type, "tango")
        assert rec["saliency_source"] == "global_query"
        assert rec["architecture"] == arch
    assert not full["pruned"] and full["tokens_after"] == T * L + newline
    # exact frame times: the frames' indices / fps, reduced per temporal patch by the family's rule
    expected_times = _patch_times(model_type, range(FRAMES), FPS, T)
    assert by_ratio[0.25]["timestamps_source"] == "video metadata (frames_indices / fps)"
    np.testing.assert_allclose(by_ratio[0.25]["video_timestamps"], expected_times, rtol=0, atol=1e-12)
    # a one-frame video is one temporal patch (Qwen2 / 2.5 pad it to two frames) and keeps max(1, ceil(L r))
    # tokens; Qwen3-VL's own video processor refuses it (transformers: "t:1 must be larger than temporal_factor:2",
    # with or without the plugin)
    if model_type.startswith("qwen3"):
        assert "must be larger than temporal_factor" in req["one_frame"]["error"]
    else:
        assert req["one_frame"]["error"] is None, req["one_frame"]["error"]
        one = [r for r in records if r["frames"] == 1]
        assert one and one[0]["kept_by_strategy"] == expected_count(1, L, 0.25)
        assert req["one_frame"]["prompt_tokens"] == stock_tokens - T * L + expected_count(1, L, 0.25)
    # images pass through unpruned, alone (exactly the stock request) and next to a pruned video
    for key in ("prompt_token_ids", "output"):
        assert req["image_only"][key] == stock["requests"]["image_only"][key]
    assert req["image_and_video"]["prompt_tokens"] == (stock["requests"]["image_and_video"]["prompt_tokens"]
                                                       - T * L + expected_count(T, L, 0.25))
    # two videos in one request, each with its own count (the second has half the frames)
    assert req["two_videos"]["error"] is None and req["two_videos_off"]["error"] is None, req["two_videos"]["error"]
    # (the first video is the earlier requests' video: vLLM's encoder cache gives its embeddings, pruned at the same
    # ratio; the processor may size the shorter video's frames differently: its own grid from the report)
    half = [r for r in records if r["ratio"] == 0.25 and r["frames"] == T // 2][-1]
    assert half["kept_by_strategy"] == expected_count(T // 2, half["grid"][0] * half["grid"][1], 0.25)
    saved = sum(r["tokens_before"] - r["tokens_after"] for r in (by_ratio[0.25], half))
    assert req["two_videos"]["prompt_tokens"] == req["two_videos_off"]["prompt_tokens"] - saved
    # bad per-request knobs are refused with the knob named; the other requests ran
    assert "not per-request knobs" in req["bad_knob"]["error"] and "tango_strategy" in req["bad_knob"]["error"]
    assert "tango_ratio" in req["bad_ratio"]["error"] and "(0.0, 1.0]" in req["bad_ratio"]["error"]
    # the model served without a section refuses a tango knob instead of ignoring it
    assert "served without Tango" in stock["requests"]["tango_knob"]["error"]
    # the plugin said what it changed, in the worker's log
    assert "tango: pruning on for " + arch in tango["log"]


def test_the_decision_is_the_transformers_one_on_the_same_inputs(runs, work):
    """Parity: the engine inputs the vLLM worker captured, run through tango_plugin's strategy call here, give the
    same kept set and features; and the transformers adapter on the same checkpoint and frames reaches the same
    kept set from its own vision tower (reported: how close the two towers' features and scores are)."""
    from tango_plugin import TangoConfig, VisualTokens, run_strategy

    for model_type in ("qwen2_5_vl", "llava_onevision"):
        files = sorted(runs[model_type]["capture"].glob("*.pt"))
        assert files, f"no capture for {model_type}"
        captured = [torch.load(f, weights_only=False) for f in files]
        ours = next(c for c in captured if c["record"]["ratio"] == 0.25 and c["features"].shape[0] > 1)
        cfg = TangoConfig.from_dict(ours["config"])
        tokens = VisualTokens(features=ours["features"], saliency=ours["saliency"], grid_hw=ours["grid_hw"],
                              timestamps=ours["timestamps"], sink_positions=ours["sink_positions"])
        plan = run_strategy(tokens, cfg)
        assert torch.equal(plan.kept_indices, ours["kept_indices"])
        assert torch.equal(plan.features, ours["plan_features"])
        hf = _transformers_plan(work, model_type, cfg)
        assert torch.allclose(hf.tokens.features.float(), ours["features"].float(), atol=1e-4, rtol=1e-4)
        assert torch.allclose(hf.tokens.saliency.float(), ours["saliency"].float(), atol=1e-5, rtol=1e-4)
        assert torch.equal(hf.tokens.timestamps.double(), ours["timestamps"].double())
        assert set(hf.plan.kept_indices.tolist()) == set(ours["kept_indices"].tolist())


def _transformers_plan(work, model_type: str, cfg):
    """The transformers adapter's first strategy call on the same checkpoint, frames and frame times."""
    import transformers as tf

    import tango_plugin as tango

    folder = work["checkpoints"][model_type]
    processor = tf.AutoProcessor.from_pretrained(folder)
    model = tf.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    frames = np.load(work["frames"])
    meta = tf.video_utils.VideoMetadata(total_num_frames=FRAMES, fps=FPS, frames_indices=list(range(FRAMES)))
    style = FAMILIES[model_type][1]
    inputs = processor(text=[prompt(style)], videos=[frames], video_metadata=[meta], return_tensors="pt",
                       do_sample_frames=False)
    handle = tango.enable(model, cfg, record_plans=True)
    with torch.no_grad():
        model.generate(**inputs, tango_video_timestamps=[meta], max_new_tokens=2, do_sample=False)
    record = handle.plans()[0]
    handle.remove()
    return record


# ============================================================================================ load-time checks
@pytest.mark.parametrize("overrides,fragments", [
    ({"tango": {"tango_ratio": 1.5}}, ["tango_ratio", "1.5", "(0.0, 1.0]"]),
    ({"tango": {"tango_intra_llm_layer": 1}}, ["intra-LLM", "not supported in vLLM"]),
    # an architecture the plugin does not prune (the same weights read as a text-only Qwen2 LM)
    ({"tango": {"tango_ratio": 0.2}, "architectures": ["Qwen2ForCausalLM"]},
     ["does not support", "Qwen2ForCausalLM", "Qwen2_5_VLForConditionalGeneration"]),
])
def test_a_bad_section_fails_at_load_naming_what_is_allowed(vllm_python, work, overrides, fragments):
    name = "load-" + "-".join(sorted(overrides["tango"]))[:40] + ("-arch" if "architectures" in overrides else "")
    result = drive(vllm_python, work, name, work["checkpoints"]["qwen2_5_vl"],
                   {**_llm_kwargs(), "hf_overrides": overrides}, [])
    assert result["load_error"] is not None, "the model loaded"
    for fragment in fragments:
        assert fragment in result["load_error"], result["load_error"][-2000:]


def test_tango_and_vllm_pruning_rate_together_are_refused(vllm_python, work):
    result = drive(vllm_python, work, "load-conflict", work["checkpoints"]["qwen2_5_vl"],
                   _llm_kwargs({"tango_ratio": 0.25}, video_pruning_rate=0.5), [])
    assert result["load_error"] is not None and "two pruning methods" in result["log"]


# ============================================================================================ stock behaviour
def test_without_the_plugin_the_stock_run_is_the_same_and_vllm_evs_runs_on_the_cpu(vllm_python, work, runs):
    """The plugin installed but no section == vLLM without the plugin (VLLM_PLUGINS excludes it). And vLLM's own
    EVS, which crashes on vLLM's CPU runner without the plugin's runner fix, keeps max(L, int(T L (1 - q))) tokens
    with it (T = 8 patches, L = 16)."""
    video = _video(work)
    stock = runs["qwen2_5_vl"]["stock"]["requests"]["video"]
    os.environ["VLLM_PLUGINS"] = "lora_filesystem_resolver"
    try:
        plain = drive(vllm_python, work, "no-plugin", work["checkpoints"]["qwen2_5_vl"], _llm_kwargs(),
                      [[{"name": "video", "prompt": prompt("qwen"), "video": video}]])
    finally:
        del os.environ["VLLM_PLUGINS"]
    assert plain["applied"] == [] and plain["requests"]["video"]["error"] is None
    assert plain["requests"]["video"]["prompt_token_ids"] == stock["prompt_token_ids"]
    assert plain["requests"]["video"]["output"] == stock["output"]
    evs = drive(vllm_python, work, "evs", work["checkpoints"]["qwen2_5_vl"], _llm_kwargs(video_pruning_rate=0.75),
                [[{"name": "video", "prompt": prompt("qwen"), "video": video}]])
    assert evs["requests"]["video"]["error"] is None, evs["requests"]["video"]["error"]
    T, L = FRAMES // 2, 16
    assert evs["requests"]["video"]["prompt_tokens"] == stock["prompt_tokens"] - T * L + max(L, int(T * L * 0.25))
    assert any("CPUModelRunner.load_model" in line for line in evs["applied"])


# ============================================================================================ tensor parallel
def test_tensor_parallel_2_gives_the_same_tokens_and_every_rank_the_same_decision(vllm_python, work, runs):
    one = runs["qwen2_5_vl"]
    report = work["root"] / "report-tp2.jsonl"
    video = _video(work)
    os.environ.update(VLLM_CPU_OMP_THREADS_BIND="0|1", VLLM_HOST_IP="127.0.0.1")
    try:
        tp2 = drive(vllm_python, work, "tp2", work["checkpoints"]["qwen2_5_vl"],
                    _llm_kwargs({"tango_ratio": 0.25, "tango_report": str(report)}, tensor_parallel_size=2,
                                distributed_executor_backend="mp"),
                    [[{"name": "default", "prompt": prompt("qwen"), "video": video},
                      {"name": "half", "prompt": prompt("qwen"), "video": video,
                       "mm_processor_kwargs": {"tango_ratio": 0.5}}]], timeout=900)
    finally:
        for key in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_HOST_IP"):
            os.environ.pop(key, None)
    assert tp2["load_error"] is None, tp2["load_error"]
    for name in ("default", "half"):
        assert tp2["requests"][name]["error"] is None, tp2["requests"][name]["error"]
        assert tp2["requests"][name]["output"] == one["tango"]["requests"][name]["output"]
        assert tp2["requests"][name]["prompt_tokens"] == one["tango"]["requests"][name]["prompt_tokens"]
    records = _records(report)
    assert {r["rank"] for r in records} == {0, 1}, "the plugin did not run in both workers"
    for ratio in (0.25, 0.5):
        digests = {r["rank"]: r["kept_sha1"] for r in records if r["ratio"] == ratio}
        single = [r["kept_sha1"] for r in _records(one["report"]) if r["ratio"] == ratio and r["frames"] > 1]
        assert digests[0] == digests[1] == single[0]  # both ranks and the single-GPU run kept the same tokens


# ============================================================================================ the server
def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_real_server_prunes_each_request_at_its_own_ratio(vllm_python, work):
    from tango_plugin.testing.vllm_server import vllm_server

    media = work["root"] / "media"
    media.mkdir(exist_ok=True)
    clip = media / "clip.mp4"
    _write_mp4(clip, np.load(work["frames"]), FPS)
    report = work["root"] / "report-server.jsonl"
    args = ["--max-model-len", "4096", "--enforce-eager", "--dtype", "float32", "--allowed-local-media-path",
            str(media), "--limit-mm-per-prompt", json.dumps({"video": 1}),
            "--media-io-kwargs", json.dumps({"video": {"num_frames": FRAMES}}), "--trust-request-mm-kwargs"]
    ratios = {"r10": 0.1, "r25": 0.25, "r50": 0.5, "r100": 1.0}
    with vllm_server(vllm_python, work["checkpoints"]["qwen2_5_vl"], tango={"tango_report": str(report)},
                     extra_args=args, env=_env(), log_path=work["root"] / "serve.log") as server:
        spec = {"base_url": server["base_url"], "model": work["checkpoints"]["qwen2_5_vl"], "requests": [
            {"name": name, "video_url": clip.as_uri(), "mm_processor_kwargs": {"tango_ratio": r}, "max_tokens": 4}
            for name, r in ratios.items()] + [
            {"name": "default", "video_url": clip.as_uri(), "max_tokens": 4},
            {"name": "bad", "video_url": clip.as_uri(), "mm_processor_kwargs": {"tango_ratio": 7}}]}
        (work["root"] / "client.json").write_text(json.dumps(spec))
        proc = subprocess.run([vllm_python, "-m", "tango_plugin.testing.vllm_client",
                               str(work["root"] / "client.json"), str(work["root"] / "client.out.json")],
                              env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        served = json.loads((work["root"] / "client.out.json").read_text())["requests"]
    for name in [*ratios, "default"]:
        assert served[name]["error"] is None, (name, served[name]["error"])
        assert served[name]["answer"] and served[name]["completion_tokens"] == 4
    records = _records(report)
    # the server decodes the clip itself and samples it the Qwen way, 2 frames a second: frames 0, 2, ..., 14 of
    # the 4-fps clip, i.e. 4 temporal patches of 4 x 4 tokens
    T, L = 4, 16
    assert {(r["frames"], tuple(r["grid"])) for r in records} == {(T, (4, 4))}
    unpruned = served["r100"]["prompt_tokens"]
    for name, r in ratios.items():  # concurrent requests, each with its own count
        assert served[name]["prompt_tokens"] == unpruned - T * L + expected_count(T, L, r), name
    assert served["default"]["prompt_tokens"] == served["r10"]["prompt_tokens"]  # the section's default, 0.1
    assert "tango_ratio" in served["bad"]["error"] and "(0.0, 1.0]" in served["bad"]["error"]
    assert {r["ratio"] for r in records if r["pruned"]} == {0.1, 0.25, 0.5}
    # the frame times reach the engine from the metadata the server's loader produced
    expected = _patch_times("qwen2_5_vl", range(0, FRAMES, 2), FPS, T)
    for r in records:
        assert r["timestamps_source"] == "video metadata (frames_indices / fps)"
        np.testing.assert_allclose(r["video_timestamps"], expected, rtol=0, atol=1e-9)


# ============================================================================================ EVS, vLLM's own
def test_the_evs_strategy_is_vllms_evs_bit_for_bit(vllm_python):
    """tango_plugin's `evs` strategy against vLLM's `compute_retention_mask` on the same embeddings (several shapes,
    rates, float32 and bfloat16, random and repetitive content), in vLLM's environment."""
    code = r"""
import torch
from vllm.multimodal.video_prune.evs import compute_retention_mask
from tango_plugin import TangoConfig, VisualTokens, run_strategy
checked = 0
for seed, (T, H, W, D) in enumerate([(4, 4, 4, 16), (8, 6, 4, 32), (16, 8, 8, 64), (1, 4, 4, 8)]):
    for dtype in (torch.float32, torch.bfloat16):
        for q in (0.0, 0.5, 0.7, 0.75, 0.9):
            g = torch.Generator().manual_seed(seed)
            emb = torch.randn(T * H * W // 4, D, generator=g).to(dtype)
            if seed % 2:  # repetitive content: many exact ties
                emb = emb.reshape(T, -1, D)[:1].expand(T, -1, -1).reshape(-1, D).clone()
                emb[::7] += 1
            mask = compute_retention_mask(emb, (T, H, W), spatial_merge_size=2, q=q)
            tokens = VisualTokens(features=emb.reshape(T, H * W // 4, D), saliency=torch.rand(T, H * W // 4),
                                  grid_hw=(H // 2, W // 2))
            cfg = TangoConfig(retention_ratio=1.0 if q == 0.0 else 0.5, strategy="evs",
                              strategy_options={"pruning_rate": q})
            ours = run_strategy(tokens, cfg).kept_indices if q > 0 else torch.arange(mask.numel())
            assert torch.equal(mask.nonzero().flatten(), ours), (T, H, W, dtype, q)
            checked += 1
print("checked", checked)
"""
    proc = subprocess.run([vllm_python, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checked 40" in proc.stdout
