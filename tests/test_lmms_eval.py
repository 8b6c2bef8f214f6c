"""The lmms-eval plugin: knobs, frame tracing, and the real lmms-eval CLI on tiny saved checkpoints.

The CLI tests run `python -m lmms_eval` of a separate environment (lmms-eval 0.7.3 pins clash with ours: `av<16`,
`filelock<4`) whose python `TANGO_LMMS_PYTHON` names; `.ci/run` builds it at `build/lmms-venv`. Without it those
tests skip. lmms-eval's CLI exits 0 even when the evaluation raised, so every run is judged by its results
file and the Tango report, never by the exit code alone.

Expected frame times are computed here from the published sampling rules, not from the plugin:
qwen-vl-utils (2 fps, `round(linspace(0, n - 1, k))`), lmms-eval's re-sampling (`unique(linspace(0, k - 1, max,
dtype=int))`), `llava_hf.load_video` and `llava_onevision.load_video` (`linspace(0, n - 1, max, dtype=int)`),
`llava_vid.load_video` (every `round(fps / video_fps)`-th frame, or that linspace when there are more than max), each
frame at index / file fps. The `llava` wrappers' runs skip where the lmms-eval python has no LLaVA-NeXT `llava`
(CI's has none), also under TANGO_REQUIRE_LMMS=1.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tango_plugin import TangoConfig
from tango_plugin.knobs import allowed_knobs, config_from_knobs, knobs_help, split_knobs

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lmms_eval"
CLIPS = {"clip_a.mp4": (16, 8), "clip_b.mp4": (20, 5)}  # name -> (frames, fps)
QUESTIONS = {"a": "clip_a.mp4", "b": "clip_b.mp4"}
SIDE = 112


# ============================================================================================ knobs (no lmms-eval)
def test_split_knobs_keeps_everything_else():
    knobs, rest = split_knobs({"pretrained": "x", "tango": "true", "tango_ratio": 0.2, "device": "cpu",
                               "tangoish": 1})
    assert knobs == {"tango": "true", "tango_ratio": 0.2}
    assert rest == {"pretrained": "x", "device": "cpu", "tangoish": 1}  # only `tango` and `tango_*` are knobs


def test_knob_text_is_parsed_to_the_field_type():
    cfg, options, extras = config_from_knobs({
        "tango_ratio": "0.25", "tango_num_neighbors": "5", "tango_prune_images": "yes",
        "tango_similarity_threshold": "none", "tango_sink_positions": "3;1;4", "tango_strategy": "topk",
        "tango_fps": "2", "tango_pool_mode": "average", "tango_report": "out/r.json"})
    assert cfg.retention_ratio == 0.25 and cfg.num_neighbors == 5 and cfg.prune_images is True
    assert cfg.similarity_threshold == 0.8  # "none" -> the paper's rule for r > 0.1
    assert cfg.sink_positions == [3, 1, 4] and cfg.strategy == "topk"
    assert options == {"fps": 2.0, "pool_mode": "average"}
    assert extras == {"enabled": True, "report": "out/r.json", "capture": None}
    # values typed by lmms-eval's own parser (ints, floats, bools) and JSON lists work the same
    cfg, _, extras = config_from_knobs({"tango": False, "tango_ratio": 1, "tango_sink_positions": "[0, 7]",
                                        "tango_reference_merge_order": 1})
    assert cfg.retention_ratio == 1.0 and cfg.sink_positions == [0, 7] and cfg.reference_merge_order is True
    assert extras["enabled"] is False


def test_preset_knob_and_overrides():
    cfg, _, _ = config_from_knobs({"tango_preset": "llava-video", "tango_ratio": "0.2"})
    preset = TangoConfig.from_preset("llava-video")
    assert cfg.retention_ratio == 0.2 and cfg.intra_llm_layer == preset.intra_llm_layer == 18
    assert cfg.sink_positions == preset.sink_positions
    cfg, _, _ = config_from_knobs({}, default_preset="qwen2-vl")
    assert cfg.sink_positions == [] and cfg.retention_ratio == 0.1


@pytest.mark.parametrize("knobs,fragments", [
    ({"tango_ratoi": "0.2"}, ["tango_ratoi", "'0.2'", "tango_ratio", "tango_retention_ratio"]),
    ({"tango_ratio": "abc"}, ["tango_ratio='abc'", "a number"]),
    ({"tango_ratio": "1.5"}, ["tango_ratio", "retention_ratio=1.5", "(0.0, 1.0]"]),
    ({"tango_num_neighbors": "2.5"}, ["tango_num_neighbors='2.5'", "an integer"]),
    ({"tango_prune_images": "maybe"}, ["tango_prune_images='maybe'", "true or false"]),
    ({"tango_segmentation": "kmeans"}, ["tango_segmentation", "'kmeans'", "holitom", "fastvid"]),
    ({"tango_sink_positions": "[1, x]"}, ["tango_sink_positions", "list of integers"]),
    ({"tango_pool_mode": "max"}, ["tango_pool_mode='max'", "'bilinear'", "'average'"]),
    ({"tango_fps": "-3"}, ["tango_fps='-3'", "> 0"]),
    ({"tango_preset": "llava-next"}, ["tango_preset='llava-next'", "qwen2-vl", "llava-onevision"]),
    ({"tango": "perhaps"}, ["tango='perhaps'", "true or false"]),
    ({"tango_ratio": 0.2, "tango_retention_ratio": 0.3}, ["tango_retention_ratio", "already given as tango_ratio"]),
])
def test_bad_knob_names_it_its_value_and_the_allowed_ones(knobs, fragments):
    with pytest.raises(ValueError) as err:
        config_from_knobs(knobs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_every_config_field_is_a_knob_with_help():
    names = allowed_knobs()
    for field in TangoConfig.help():
        assert f"tango_{field}" in names
    assert {"tango", "tango_ratio", "tango_preset", "tango_fps", "tango_report"} <= set(names)
    assert set(knobs_help()) == set(names)


# ============================================================================ frame tracing (no lmms-eval needed)
def test_marked_frames_follow_the_wrappers_resampling():
    from tango_plugin.patches._frames import FrameBook, VideoFrames, mark, unmark

    video = torch.arange(8 * 3 * 2 * 2, dtype=torch.float32).reshape(8, 3, 2, 2)
    frames = VideoFrames([0, 3, 5, 8, 11, 14, 16, 19], 5.0, "test")
    marked = mark(video, frames)
    picked = marked[np.unique(np.linspace(0, 7, 3, dtype=int))]  # what lmms-eval's qwen2_vl does
    assert picked.shape[0] == 3 and picked.tango_frames.frame_indices == [0, 8, 19]
    assert torch.equal(unmark(picked), video[[0, 3, 7]]) and type(unmark(picked)) is torch.Tensor
    assert marked[1:3].tango_frames.frame_indices == [3, 5]
    assert type(marked.float() * 2) is torch.Tensor  # any other operation drops the mark
    assert FrameBook().resolve(picked).frame_times == [0.0, 1.6, 3.8]


def test_frame_book_matches_plain_frames_and_refuses_ambiguous_ones():
    from tango_plugin.patches._frames import FrameBook, VideoFrames

    book = FrameBook()
    decoded = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 3), dtype=np.uint8)
    book.add(decoded, VideoFrames([0, 2, 4, 6, 8, 10], 4.0, "test"))
    found = book.resolve(decoded[[1, 4]].copy())  # a re-sampled copy: found frame by frame
    assert found.frame_indices == [2, 8] and found.traced == "equal frames" and found.frame_times == [0.5, 2.0]
    assert len(book) == 0  # the processor got it: the decoded video is not kept any longer
    book.add(decoded, VideoFrames([0, 2, 4, 6, 8, 10], 4.0, "test"))
    assert book.resolve(decoded).traced == "same object" and len(book) == 0
    book.add(decoded, VideoFrames([0, 2, 4, 6, 8, 10], 4.0, "test"))
    still = decoded.copy()
    still[3] = still[1]  # two equal frames: a copy of frame 1 could be either, so it is not guessed
    book.add(still, VideoFrames([0, 1, 2, 3, 4, 5], 1.0, "test"))
    assert book.resolve(still[[1]].copy()) is None
    assert book.resolve(np.zeros((2, 4, 4, 3), dtype=np.uint8)) is None
    assert len(book) == 2  # nothing was used


# ==================================================================================== the real lmms-eval CLI
def _lmms_python() -> str:
    # TANGO_REQUIRE_LMMS=1 (set by .ci/run once it built the environment) turns a missing one into a failure
    give_up = pytest.fail if os.environ.get("TANGO_REQUIRE_LMMS") == "1" else pytest.skip
    python = os.environ.get("TANGO_LMMS_PYTHON")
    if not python:  # opt-in: these runs take minutes, a plain `pytest` of the project should not start them
        give_up("TANGO_LMMS_PYTHON is not set (the python of an environment with lmms-eval; .ci/run builds one)")
    python = os.path.abspath(python)  # not resolved: a venv's python is a symlink out of the venv
    if not os.path.exists(python):
        give_up(f"TANGO_LMMS_PYTHON={python} does not exist")
    probe = subprocess.run([python, "-c", "import lmms_eval, decord, qwen_vl_utils, tango_plugin.patches.lmms_eval"],
                           capture_output=True)
    if probe.returncode != 0:
        give_up(f"{python} cannot import lmms_eval, decord, qwen_vl_utils and tango_plugin: "
                f"{probe.stderr.decode()[-300:]}")
    return python


def _write_clip(path: Path, frames: int, fps: int) -> None:
    """An MPEG-4 clip of a random pattern sliding right by 4 pixels a frame: every frame differs
    (`tango-plugin clip`, which the docs' commands use)."""
    pytest.importorskip("av")
    from tango_plugin.testing.clips import write_clip

    write_clip(str(path), frames, fps, side=SIDE)


def _save_checkpoint(folder: Path, model_type: str) -> str:
    """A tiny random model with a real processor of its family, saved as a checkpoint folder (`tango-plugin tiny`)."""
    from tango_plugin.testing.checkpoints import save_tiny_checkpoint

    return save_tiny_checkpoint(str(folder), model_type, side=SIDE)


@pytest.fixture(scope="module")
def lmms(tmp_path_factory):
    python = _lmms_python()
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("lmms")
    videos = root / "videos"
    videos.mkdir()
    for name, (frames, fps) in CLIPS.items():
        _write_clip(videos / name, frames, fps)
    return {"python": python, "root": root, "videos": str(videos), "checkpoints": {}}


def _checkpoint(lmms, model_type: str) -> str:
    if model_type not in lmms["checkpoints"]:
        lmms["checkpoints"][model_type] = _save_checkpoint(lmms["root"] / model_type, model_type)
    return lmms["checkpoints"][model_type]


def _run_cli(lmms, model: str, model_args: str, *, batch_size: int = 1, extra=()) -> tuple:
    """`python -m lmms_eval` on the tiny task; returns (results json, samples, report, output text)."""
    out = lmms["root"] / f"out_{model}_{abs(hash((model_args, batch_size, extra)))}"
    report = out / "tango_report.json"
    env = {**os.environ, "TANGO_TINY_VIDEO_DIR": lmms["videos"], "HF_HOME": str(lmms["root"] / "hf"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "FORCE_QWENVL_VIDEO_READER": "decord", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    cmd = [lmms["python"], "-m", "lmms_eval", "--model", model,
           "--model_args", f"{model_args},tango_report={report}", "--tasks", "tango_tiny_video",
           "--include_path", str(TASKS), "--limit", "2", "--batch_size", str(batch_size),
           "--output_path", str(out), "--log_samples", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=str(lmms["root"]))
    text = proc.stdout + proc.stderr
    results = sorted(glob.glob(str(out / "**" / "*_results.json"), recursive=True))
    assert proc.returncode == 0 and results, f"lmms-eval failed (rc {proc.returncode}):\n{text[-6000:]}"
    data = json.loads(Path(results[-1]).read_text())
    sample_files = glob.glob(str(out / "**" / "*_samples_tango_tiny_video.jsonl"), recursive=True)
    samples = [json.loads(line) for f in sample_files for line in Path(f).read_text().splitlines() if line]
    assert report.exists(), f"no Tango report at {report}:\n{text[-6000:]}"
    return data, samples, json.loads(report.read_text()), text


def _qwen_vl_utils_indices(frames: int, fps: float) -> list:
    # qwen-vl-utils 0.0.14 at its default 2 fps: k = total / fps * 2 clamped to [4, total], floored to even
    k = min(max(frames / fps * 2.0, 4), frames)
    k = int(k // 2 * 2)
    return torch.linspace(0, frames - 1, k).round().long().tolist()


def _resampled(indices: list, max_frames: int, append_last: bool = False) -> list:
    # lmms-eval's qwen2_vl / qwen2_5_vl keep unique(linspace(0, k - 1, max_num_frames, dtype=int)) of the decoded
    # frames (qwen2_5_vl also keeps the last one)
    keep = np.unique(np.linspace(0, len(indices) - 1, max_frames, dtype=int))
    if append_last and len(indices) - 1 not in keep:
        keep = np.append(keep, len(indices) - 1)
    return [indices[i] for i in keep]


def _check_run(data, samples, report, model: str, expected: dict, tokens_per_patch: int, ratio: float,
               temporal_patch: int = 2):
    """The run evaluated both documents, pruned, and the engine got the true frame times of each video."""
    task = data["results"]["tango_tiny_video"]
    assert isinstance(task["exact_match,none"], (int, float))  # the metric really was computed
    assert sorted(s["doc_id"] for s in samples) == [0, 1]  # both documents answered and scored
    assert all(isinstance(s["filtered_resps"], str) and "exact_match" in s for s in samples)
    assert report["model"] == model and report["enabled"] is True
    # the engine warns (caught into the report) when a video comes without times or pruning is skipped
    assert report["warnings"] == []
    assert report["config"]["retention_ratio"] == ratio
    rows = report["samples"]
    assert sorted(r["doc_id"] for r in rows) == [0, 1]
    seen = {}
    for row in rows:
        assert row["pruned"] is True, row["note"]
        (video,) = row["videos"]
        name = os.path.basename(video["path"])
        # the row's request (from lmms-eval's batches) and its video (from the adapter) are the same document's
        assert name == list(QUESTIONS.values())[row["doc_id"]], (row["doc_id"], name)
        frames, fps = CLIPS[name]
        want = expected[name]
        assert video["frame_indices"] == want and video["video_fps"] == pytest.approx(fps)
        assert video["frame_times"] == pytest.approx([i / fps for i in want], abs=1e-12)
        assert video["passed_to_engine"] is True and row["warnings"] == []
        patches = math.ceil(len(want) / temporal_patch)
        if tokens_per_patch:  # Qwen: the unpruned count follows from the number of frames kept
            assert row["visual_tokens_before"] == patches * tokens_per_patch
            assert row["visual_tokens_after"] == math.ceil(row["visual_tokens_before"] * ratio)
        assert row["visual_tokens_after"] < row["visual_tokens_before"]
        seen[name] = video["frame_times"]
    assert set(seen) == set(CLIPS)
    # every generate call's prefill was timed, and the rows are the two documents (one call each, or one of two)
    prefill = report["prefill"]
    assert prefill["calls"] == report["generate_calls"] >= 1 and prefill["rows"] == 2
    assert prefill["seconds"] > 0 and prefill["seconds_per_row"] == pytest.approx(prefill["seconds"] / 2)
    print(f"\n{model}: frame times the engine got {seen}")
    return seen


def test_cli_tango_qwen2_vl_prunes_with_the_true_frame_times(lmms):
    ckpt = _checkpoint(lmms, "qwen2_vl")
    args = f"pretrained={ckpt},device=cpu,device_map=cpu,max_pixels={SIDE * SIDE},max_num_frames=3,tango_ratio=0.25"
    data, samples, report, text = _run_cli(lmms, "tango_qwen2_vl", args)
    expected = {n: _resampled(_qwen_vl_utils_indices(*CLIPS[n]), 3) for n in CLIPS}
    assert expected == {"clip_a.mp4": [0, 5, 15], "clip_b.mp4": [0, 8, 19]}  # the rules, written out
    _check_run(data, samples, report, "tango_qwen2_vl", expected, tokens_per_patch=16, ratio=0.25)
    # one Tango line in the run's own output says what happened
    before = sum(r["visual_tokens_before"] for r in report["samples"])
    after = sum(r["visual_tokens_after"] for r in report["samples"])
    line = f"tango: tango_qwen2_vl: 2 of 2 videos pruned in 2 calls, visual tokens {before} -> {after}"
    assert line in text and "frame times: qwen-vl-utils" in text, text[-3000:]


def test_cli_a_failure_inside_the_model_is_visible_although_lmms_eval_exits_0(lmms):
    """lmms-eval logs an evaluation error and exits with status 0; the plugin's final line says the results are
    missing (here a sink position outside the 16-token grid, refused when the first video is pruned)."""
    ckpt = _checkpoint(lmms, "qwen2_vl")
    env = {**os.environ, "TANGO_TINY_VIDEO_DIR": lmms["videos"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(lmms["root"] / "hf"), "WANDB_MODE": "disabled", "FORCE_QWENVL_VIDEO_READER": "decord"}
    proc = subprocess.run([lmms["python"], "-m", "lmms_eval", "--model", "tango_qwen2_vl", "--model_args",
                           f"pretrained={ckpt},device=cpu,device_map=cpu,max_pixels={SIDE * SIDE},max_num_frames=3,"
                           "tango_sink_positions=[999]", "--tasks", "tango_tiny_video", "--include_path",
                           str(TASKS), "--limit", "1", "--output_path", str(lmms["root"] / "out_fail")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=str(lmms["root"]))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0  # lmms-eval's own behaviour
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith("tango: tango_qwen2_vl: the evaluation failed inside this model (ValueError: "), last
    assert "outside the 16-token frame grid" in last and "results are missing or incomplete" in last


def test_cli_tango_qwen2_vl_batch_of_two(lmms):
    ckpt = _checkpoint(lmms, "qwen2_vl")
    args = f"pretrained={ckpt},device=cpu,device_map=cpu,max_pixels={SIDE * SIDE},max_num_frames=3,tango_ratio=0.5"
    data, samples, report, _ = _run_cli(lmms, "tango_qwen2_vl", args, batch_size=2)
    assert report["generate_calls"] == 1 and len(report["samples"]) == 2  # one call, two rows
    # lmms-eval's qwen2_vl re-samples only the first video of a batch (row 0: the prompt with the most tokens)
    first = next(r for r in report["samples"] if r["row"] == 0)["doc_id"]
    expected = {}
    for doc_id, name in enumerate(QUESTIONS.values()):
        decoded = _qwen_vl_utils_indices(*CLIPS[name])
        expected[name] = _resampled(decoded, 3) if doc_id == first else decoded
    _check_run(data, samples, report, "tango_qwen2_vl", expected, tokens_per_patch=16, ratio=0.5)


@pytest.mark.parametrize("force_simple,batch", [(False, 1), (True, 1), (False, 2)],
                         ids=["chat", "simple", "chat-batch2"])
def test_cli_tango_qwen2_5_vl(lmms, force_simple, batch):
    ckpt = _checkpoint(lmms, "qwen2_5_vl")
    args = (f"pretrained={ckpt},device=cpu,device_map=cpu,min_pixels=3136,max_pixels={SIDE * SIDE},"
            "max_num_frames=3,tango_ratio=0.25")
    extra = ("--force_simple",) if force_simple else ()
    data, samples, report, _ = _run_cli(lmms, "tango_qwen2_5_vl", args, extra=extra, batch_size=batch)
    assert report["generate_calls"] == 2 // batch  # the chat wrapper batches too (docs/lmms_eval.md)
    assert report["wrapper"].endswith("simple.qwen2_5_vl.Qwen2_5_VL" if force_simple else "chat.qwen2_5_vl.Qwen2_5_VL")
    if force_simple:  # qwen-vl-utils at 2 fps, then lmms-eval's re-sampling (which keeps the last frame)
        expected = {n: _resampled(_qwen_vl_utils_indices(*CLIPS[n]), 3, append_last=True) for n in CLIPS}
    else:  # the chat wrapper asks qwen-vl-utils for nframes = min(max_num_frames, total) floored to even: 2
        expected = {n: torch.linspace(0, CLIPS[n][0] - 1, 2).round().long().tolist() for n in CLIPS}
    _check_run(data, samples, report, "tango_qwen2_5_vl", expected, tokens_per_patch=16, ratio=0.25)
    for row in report["samples"]:  # what the wrapper's processor gave the model itself, for the record
        assert row["videos"][0]["model_second_per_grid_ts"] > 0


@pytest.mark.parametrize("force_simple", [False, True], ids=["chat", "simple-batch2"])
def test_cli_tango_qwen3_vl(lmms, force_simple):
    ckpt = _checkpoint(lmms, "qwen3_vl")
    args = (f"pretrained={ckpt},device=cpu,device_map=cpu,min_pixels=4096,max_pixels=16384,max_num_frames=4,"
            "tango_ratio=0.25")
    extra = ("--force_simple",) if force_simple else ()
    # the simple wrapper decodes in a worker thread, a batch ahead: batch 2 checks the times stay with their rows
    batch = 2 if force_simple else 1
    data, samples, report, _ = _run_cli(lmms, "tango_qwen3_vl", args, extra=extra, batch_size=batch)
    assert report["generate_calls"] == (1 if force_simple else 2)
    # both wrappers ask qwen-vl-utils for nframes = max_num_frames (4): round(linspace(0, n - 1, 4))
    expected = {n: torch.linspace(0, CLIPS[n][0] - 1, 4).round().long().tolist() for n in CLIPS}
    _check_run(data, samples, report, "tango_qwen3_vl", expected, tokens_per_patch=16, ratio=0.25)


def test_cli_tango_llava_hf(lmms):
    ckpt = _checkpoint(lmms, "llava_onevision")
    # the tiny tower's 4 x 4 grid does not fit the preset's sink positions (196-token grid): none, said explicitly
    args = f"pretrained={ckpt},device=cpu,device_map=cpu,max_frames_num=6,tango_ratio=0.25,tango_sink_positions=[]"
    data, samples, report, _ = _run_cli(lmms, "tango_llava_hf", args)
    expected = {n: np.linspace(0, CLIPS[n][0] - 1, 6, dtype=int).tolist() for n in CLIPS}  # llava_hf.load_video
    _check_run(data, samples, report, "tango_llava_hf", expected, tokens_per_patch=0, ratio=0.25)
    for row in report["samples"]:  # 6 frames of 4 x 4 pooled tokens plus LLaVA-OV's one newline
        assert row["visual_tokens_before"] == 6 * 16 + 1


# ------------------------------------------------------------------------- the `llava` wrappers (LLaVA-NeXT's package)
# A tiny `llava_qwen` checkpoint, built by the lmms-eval python itself (it needs `llava` and transformers 4.x): a
# 2-layer Qwen2 and a 3-layer SigLIP tower at 384 px / patch 14. llava's tower builder takes an existing folder for a
# CLIP tower, so the tower is a hub name ("siglip" in it) found in the offline HF cache that the runs use.
LLAVA_BUILDER = r"""
import os, sys
root, hf, mode = sys.argv[1:4]
os.environ.update(HF_HOME=hf, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel
from llava.model.language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
from tango_plugin import testing

rev = "0" * 40
repo = os.path.join(hf, "hub", "models--tango-test--tiny-siglip")
torch.manual_seed(0)
tower = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=384, patch_size=14)
SiglipVisionModel(tower).save_pretrained(os.path.join(repo, "snapshots", rev))
os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
open(os.path.join(repo, "refs", "main"), "w").write(rev)
tok = testing.build_tokenizer("qwen")
layout = ({"mm_spatial_pool_mode": "bilinear", "mm_newline_position": "one_token"} if mode == "ov" else
          {"mm_spatial_pool_mode": "average", "mm_newline_position": "grid"})
cfg = LlavaQwenConfig(
    vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=8192, mm_vision_tower="tango-test/tiny-siglip", mm_hidden_size=32,
    mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad", mm_spatial_pool_stride=2,
    mm_vision_select_layer=-1, image_aspect_ratio="anyres_max_9", mm_use_im_patch_token=False,
    mm_use_im_start_end=False, tokenizer_padding_side="left", eos_token_id=tok.eos_token_id,
    pad_token_id=tok.pad_token_id, **layout)
model = LlavaQwenForCausalLM(cfg)
torch.nn.init.normal_(model.get_model().image_newline, std=0.5)
model.save_pretrained(root)
tok.save_pretrained(root)
print("saved", root)
"""


def _llava_checkpoint(lmms, mode: str) -> str:
    key = f"llava_qwen_{mode}"
    if key not in lmms["checkpoints"]:
        probe = subprocess.run([lmms["python"], "-c", "from tango_plugin.patches.lmms_eval import llava_missing; "
                                                      "print('MISSING=' + llava_missing())"],
                               capture_output=True, text=True)  # llava prints notes of its own on import
        lines = [line for line in probe.stdout.splitlines() if line.startswith("MISSING=")]
        missing = lines[-1][len("MISSING="):].strip() if probe.returncode == 0 and lines else probe.stderr[-300:]
        if missing:  # CI's lmms-eval environment has no `llava` (not on PyPI): skip, even with TANGO_REQUIRE_LMMS
            pytest.skip(f"{lmms['python']}: {missing}")
        # llava picks the model class by the folder name: it must contain "llava" and "qwen"
        folder = lmms["root"] / f"llava-qwen-tiny-{mode}"
        proc = subprocess.run([lmms["python"], "-c", LLAVA_BUILDER, str(folder), str(lmms["root"] / "hf"), mode],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        lmms["checkpoints"][key] = str(folder)
    return lmms["checkpoints"][key]


def _llava_vid_indices(frames: int, fps: float, max_frames: int) -> list:
    # llava_vid.load_video at video_fps=1: every round(fps / 1)-th frame; more than max_frames (or force_sample):
    # linspace(0, n - 1, max_frames, dtype=int)
    step = round(fps / 1)
    picked = list(range(0, frames, step))
    return np.linspace(0, frames - 1, max_frames, dtype=int).tolist() if len(picked) > max_frames else picked


@pytest.mark.parametrize("model", ["tango_llava_onevision", "tango_llava_vid"])
def test_cli_tango_llava_wrappers(lmms, model):
    mode = "ov" if model == "tango_llava_onevision" else "video"
    ckpt = _llava_checkpoint(lmms, mode)
    common = f"pretrained={ckpt},device=cpu,device_map=auto,conv_template=qwen_1_5,tango_ratio=0.25"
    if model == "tango_llava_onevision":
        args = f"{common},max_frames_num=4,attn_implementation=sdpa"
        expected = {n: np.linspace(0, CLIPS[n][0] - 1, 4, dtype=int).tolist() for n in CLIPS}
        side, newlines = 14, 1  # bilinear: ceil(27 / 2) = 14 per side, one newline per video
    else:
        args = f"{common},max_frames_num=3,video_fps=1,mm_spatial_pool_mode=average,mm_newline_position=grid"
        expected = {n: _llava_vid_indices(*CLIPS[n], 3) for n in CLIPS}
        side, newlines = 13, None  # average: floor(27 / 2) = 13 per side, one newline per kept (frame, row)
    data, samples, report, _ = _run_cli(lmms, model, args)
    seen = _check_run(data, samples, report, model, expected, tokens_per_patch=0, ratio=0.25)
    assert report["wrapper"].endswith("llava_onevision.Llava_OneVision" if mode == "ov" else "llava_vid.LlavaVid")
    for row in report["samples"]:
        frames = len(row["videos"][0]["frame_indices"])
        grid = frames * side * side
        assert row["visual_tokens_before"] == grid + (newlines if newlines is not None else frames * side)
        assert row["saliency_source"] == "global_query"
    assert seen == {n: [i / CLIPS[n][1] for i in expected[n]] for n in CLIPS}


def test_cli_tango_llava_vid_intra_llm(lmms):
    ckpt = _llava_checkpoint(lmms, "video")
    args = (f"pretrained={ckpt},device=cpu,device_map=auto,conv_template=qwen_1_5,max_frames_num=3,video_fps=1,"
            "attn_implementation=sdpa,tango_ratio=0.25,tango_intra_llm_layer=1,tango_intra_llm_ratio=0.5")
    data, samples, report, _ = _run_cli(lmms, "tango_llava_vid", args)
    expected = {n: _llava_vid_indices(*CLIPS[n], 3) for n in CLIPS}
    _check_run(data, samples, report, "tango_llava_vid", expected, tokens_per_patch=0, ratio=0.25)
    for row in report["samples"]:
        assert row["intra_llm_tokens_after"] == round(row["visual_tokens_after"] * 0.5)


def test_cli_bad_knob_fails_before_loading(lmms):
    ckpt = _checkpoint(lmms, "qwen2_vl")
    env = {**os.environ, "TANGO_TINY_VIDEO_DIR": lmms["videos"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(lmms["root"] / "hf"), "WANDB_MODE": "disabled"}
    out = lmms["root"] / "out_bad"
    proc = subprocess.run([lmms["python"], "-m", "lmms_eval", "--model", "tango_qwen2_vl", "--model_args",
                           f"pretrained={ckpt},device=cpu,device_map=cpu,tango_ratoi=0.3", "--tasks",
                           "tango_tiny_video", "--include_path", str(TASKS), "--limit", "1", "--output_path",
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert "unknown tango knob tango_ratoi=0.3" in text and "tango_ratio" in text
    assert not glob.glob(str(out / "**" / "*_results.json"), recursive=True)


def test_entry_point_and_legacy_plugin_registration(lmms):
    # one interpreter for both routes (lmms-eval's import is the slow part): the deprecated LMMS_EVAL_PLUGINS
    # writes simple class paths into AVAILABLE_SIMPLE_MODELS; only the entry point registers the chat classes
    code = ("import lmms_eval.models as m\n"
            "from tango_plugin.patches.lmms_eval import unavailable_models\n"
            "names = sorted(n for n in m.list_available_models() if n.startswith('tango_'))\n"
            "print('TANGO', names)\n"
            "print('TANGO', [next(c for c in m.get_model(n, force_simple=True).__mro__\n"
            "            if c.__module__.startswith('lmms_eval.')).__name__ for n in names])\n"
            "print('TANGO', m.get_model_manifest('tango_qwen2_5_vl').chat_class_path)\n"
            "print('TANGO', m.AVAILABLE_SIMPLE_MODELS.get('tango_qwen2_vl'))\n"
            "print('TANGO', sorted(unavailable_models()))\n")
    env = {**os.environ, "LMMS_EVAL_PLUGINS": "tango_plugin.patches.lmms_eval"}
    proc = subprocess.run([lmms["python"], "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each answer on a line of its own (llava, when installed, prints notes on import)
    lines = [line[len("TANGO "):] for line in proc.stdout.splitlines() if line.startswith("TANGO ")]
    names, bases, chat, legacy, unavailable = lines
    assert names == str(["tango_llava_hf", "tango_llava_onevision", "tango_llava_vid", "tango_qwen2_5_vl",
                         "tango_qwen2_vl", "tango_qwen3_vl"])
    # subclasses of lmms-eval's own; without `llava`, tango_llava_vid is a stand-in (llava_vid imports llava)
    vid_base = "lmms" if "tango_llava_vid" in unavailable else "LlavaVid"
    assert bases == str(["LlavaHf", "Llava_OneVision", vid_base, "Qwen2_5_VL", "Qwen2_VL", "Qwen3_VL"])
    assert unavailable in (str([]), str(["tango_llava_onevision", "tango_llava_vid"]))
    assert chat.endswith("tango_qwen2_5_vl.TangoQwen2_5_VLChat")
    assert legacy.endswith("models.tango_qwen2_vl.TangoQwen2VL")


if __name__ == "__main__":  # pragma: no cover - `python tests/test_lmms_eval.py` runs this file alone
    sys.exit(pytest.main([__file__, "-v", "-s"]))


def _doc_block(path: Path, after: str) -> str:
    """The first ```bash block after the line containing `after` in a docs page."""
    text = path.read_text()
    start = text.index("```bash", text.index(after))
    return text[start + len("```bash"):text.index("```", start + 7)].strip()


def test_the_documented_tiny_run_works_as_written(lmms, tmp_path):
    """docs/lmms_eval.md's "By hand" block, verbatim, from a folder laid out like the repository root (tests/ and
    lmms-venv/ linked in, this environment's tango-plugin on PATH)."""
    block = _doc_block(ROOT / "docs" / "lmms_eval.md", "By hand")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    (tmp_path / "lmms-venv").symlink_to(Path(lmms["python"]).parents[1])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "HF_HOME": str(lmms["root"] / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    # lmms-eval names the results folder after the model path: "out/.__tiny-qwen2-vl/"
    results = glob.glob(str(tmp_path / "out" / "**" / "*_results.json"), recursive=True, include_hidden=True)
    assert results, text[-4000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["pruned"] for r in report["samples"]] == [True, True]
    assert "tango: tango_qwen2_vl: 2 of 2 videos pruned" in text
