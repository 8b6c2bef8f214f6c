"""The Qwen model cards' route: qwen-vl-utils (decord backend) reads a real video file, the real processor of a tiny
saved checkpoint makes the inputs, and `generate` runs with Tango on; every family, with the exact times checked.

The user code is the model card's (`process_vision_info(..., return_video_kwargs=True, return_video_metadata=True)`,
then the processor with `video_metadata=`) plus one argument, `generate(..., tango_video_timestamps=video_metadatas)`
(docs/qwen_vl_utils.md). The expected frame indices come from qwen-vl-utils' published rule (2 fps,
`round(linspace(0, n - 1, k))`, `_qwen_vl_utils_indices`), not from the library; each sampled frame is at
index / file fps, and the engine's times per engine frame are:

- LLaVA-OneVision: one per sampled frame, index / fps;
- Qwen2-VL / Qwen2.5-VL: one per temporal patch (2 frames), the paper's `np.interp(linspace(0, n - 1, T), arange(n),
  frame_times)`;
- Qwen3-VL: one per temporal patch, the mean of its two frames' times (what its processor writes into the prompt).

Without the extra argument the library says so: Qwen2-VL / Qwen3-VL warn that no times reach the model, Qwen2.5-VL
warns when its `second_per_grid_ts` is the processor's 24-fps default (the Qwen2.5-VL card's call, which passes no
metadata).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("qwen_vl_utils")
pytest.importorskip("decord")
pytest.importorskip("av")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from tango_plugin.model_zoo.llava_onevision import LlavaOnevisionAdapter  # noqa: E402
from tango_plugin.model_zoo.qwen_vl import (  # noqa: E402
    DEFAULT_FPS_NOTE,
    SECOND_PER_GRID_NOTE,
    Qwen2VLAdapter,
    Qwen3VLAdapter,
)
from test_lmms_eval import _qwen_vl_utils_indices, _save_checkpoint, _write_clip  # noqa: E402

import tango_plugin as tango  # noqa: E402

CLIPS = {"a.mp4": (20, 5), "b.mp4": (16, 8), "c.mp4": (40, 10)}  # name -> (frames, fps): 8, 4, 8 frames at 2 fps
# two videos of different frame rates in one call (LLaVA-OV's processor stacks videos: the same frame count)
BATCH = {"llava_onevision": ("a.mp4", "c.mp4"), "qwen2_vl": ("a.mp4", "b.mp4"), "qwen2_5_vl": ("a.mp4", "b.mp4"),
         "qwen3_vl": ("a.mp4", "b.mp4")}
FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
NEW_TOKENS = 2
CFG = dict(retention_ratio=0.25, sink_positions=[])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import qwen_vl_utils.vision_process as vp

    root = tmp_path_factory.mktemp("qwen_vl_utils")
    for name, (frames, fps) in CLIPS.items():
        _write_clip(root / name, frames, fps)
    # qwen-vl-utils reads FORCE_QWENVL_VIDEO_READER at import and caches its choice: force decord here
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vp, "FORCE_QWENVL_VIDEO_READER", "decord")
        vp.get_video_reader_backend.cache_clear()
        yield {"root": root, "checkpoints": {}}
    vp.get_video_reader_backend.cache_clear()


def _load(env, family: str):
    import transformers as tf

    if family not in env["checkpoints"]:
        env["checkpoints"][family] = _save_checkpoint(env["root"] / family, family)
    folder = env["checkpoints"][family]
    return tf.AutoProcessor.from_pretrained(folder), tf.AutoModelForImageTextToText.from_pretrained(folder).eval()


def _messages(env, family: str, clip: str) -> list:
    # the tiny processors take 112 px frames (Qwen3-VL: 128 px, a multiple of its 32-pixel factor)
    side = 128 if family == "qwen3_vl" else 112
    video = {"type": "video", "video": str(env["root"] / clip), "min_pixels": 56 * 56, "max_pixels": side * side}
    return [{"role": "user", "content": [video, {"type": "text", "text": "What happens?"}]}]


def _texts(proc, family: str, conversations: list) -> list:
    if family == "llava_onevision":  # the saved tiny LLaVA-OV processor has no chat template
        return ["<video>What happens?"] * len(conversations)
    return [proc.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


def _vision_info(conversations: list, family: str, **kw):
    from qwen_vl_utils import process_vision_info

    return process_vision_info(conversations, return_video_kwargs=True,
                               image_patch_size=16 if family == "qwen3_vl" else 14, **kw)


def _frame_seconds(clip: str) -> np.ndarray:
    frames, fps = CLIPS[clip]
    return np.asarray(_qwen_vl_utils_indices(frames, fps), dtype=np.float64) / fps


def _engine_times(family: str, seconds: np.ndarray) -> list:
    """The times the engine must get per engine frame, from the sampled frames' seconds."""
    if family == "llava_onevision":
        return seconds.tolist()
    n = seconds.size
    if family == "qwen3_vl":
        return ((seconds[0::2] + seconds[1::2]) / 2).tolist()
    return np.interp(np.linspace(0, n - 1, n // 2), np.arange(n), seconds).tolist()


def _time_warnings(caught) -> list:
    return [str(w.message) for w in caught if "timestamps" in str(w.message) or "24-fps" in str(w.message)]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_model_card_code_gives_the_engine_the_exact_frame_times(env, family):
    proc, model = _load(env, family)
    clips = BATCH[family]
    conversations = [_messages(env, family, c) for c in clips]
    images, videos, video_kwargs = _vision_info(conversations, family, return_video_metadata=True)
    videos, video_metadatas = zip(*videos)
    videos, video_metadatas = list(videos), list(video_metadatas)
    # what qwen-vl-utils 0.0.14 returns with return_video_metadata=True: no fps list, the metadata per video
    assert images is None and video_kwargs == {"do_sample_frames": False}
    for clip, meta in zip(clips, video_metadatas):
        frames, fps = CLIPS[clip]
        assert meta["video_backend"] == "decord"  # not its silent torchvision fallback
        assert meta["frames_indices"] == _qwen_vl_utils_indices(frames, fps) and meta["fps"] == fps
    assert video_metadatas[0]["frames_indices"] == [0, 3, 5, 8, 11, 14, 16, 19]  # the rule, written out
    inputs = proc(text=_texts(proc, family, conversations), images=images, videos=videos,
                  video_metadata=video_metadatas, padding=True, return_tensors="pt", **video_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tango.enabled(model, tango.TangoConfig(**CFG)) as h:
            out = model.generate(**inputs, tango_video_timestamps=video_metadatas, max_new_tokens=NEW_TOKENS,
                                 do_sample=False)
            rows = h.report()["samples"]
    assert not _time_warnings(caught)
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    for clip, row in zip(clips, rows):
        assert row["pruned"] and row["videos"] == 1
        assert row["timestamps_source"] == "tango_video_timestamps (per call)"
        assert row["video_timestamps"] == [_engine_times(family, _frame_seconds(clip))]
    if family == "qwen3_vl":
        # the same times as the processor's prompt text ("<0.3 seconds>", one decimal)
        for ids, row in zip(inputs["input_ids"], rows):
            text = [float(x) for x in re.findall(r"<(\d+\.\d) seconds>", proc.tokenizer.decode(ids))]
            assert text == [round(x, 1) for x in row["video_timestamps"][0]]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_model_card_code_without_the_extra_argument(env, family):
    proc, model = _load(env, family)
    conversations = [_messages(env, family, "a.mp4")]
    seconds = _frame_seconds("a.mp4")
    if family == "qwen2_5_vl":
        # The Qwen2.5-VL card: no metadata, and video_kwargs with a list-valued fps, which transformers 5 refuses
        images, videos, video_kwargs = _vision_info(conversations, family)
        assert video_kwargs == {"do_sample_frames": False, "fps": [2.0]}
        texts = _texts(proc, family, conversations)
        with pytest.raises(Exception, match="fps"):
            proc(text=texts, images=images, videos=videos, padding=True, return_tensors="pt", **video_kwargs)
        video_kwargs.pop("fps")  # (a scalar fps=2.0 gives the same: it only matters when the processor samples)
        inputs = proc(text=texts, images=images, videos=videos, padding=True, return_tensors="pt", **video_kwargs)
        spg = float(inputs["second_per_grid_ts"][0])
        assert spg == pytest.approx(2 / 24)
        with tango.enabled(model, tango.TangoConfig(**CFG)) as h:
            with pytest.warns(UserWarning, match=re.escape(DEFAULT_FPS_NOTE)):
                model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            row = h.report()["samples"][0]
        assert row["timestamps_source"] == "second_per_grid_ts (processor)"
        n = seconds.size
        assert row["video_timestamps"] == [np.interp(np.linspace(0, n - 1, n // 2), np.arange(n),
                                                     np.arange(n) * spg / 2).tolist()]  # 24 fps: wrong times
        # With the metadata given to the processor only: second_per_grid_ts = 2 / sampled fps, evenly spaced frames
        # (k * 0.5 s here), still not the true times, so a warning says so; only tango_video_timestamps gives them.
        images, videos, video_kwargs = _vision_info(conversations, family, return_video_metadata=True)
        videos, video_metadatas = zip(*videos)
        inputs = proc(text=texts, images=images, videos=list(videos), video_metadata=list(video_metadatas),
                      padding=True, return_tensors="pt", **video_kwargs)
        assert float(inputs["second_per_grid_ts"][0]) == 1.0  # 8 of 20 frames at 5 fps: 2 fps sampled
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with tango.enabled(model, tango.TangoConfig(**CFG)) as h:
                model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
                row = h.report()["samples"][0]
        assert _time_warnings(caught) == [f"tango_plugin: {SECOND_PER_GRID_NOTE}"]
        even = np.interp(np.linspace(0, n - 1, n // 2), np.arange(n), np.arange(n) * 0.5).tolist()
        assert row["video_timestamps"] == [even] != [_engine_times(family, seconds)]
        assert row["timestamps_source"] == "second_per_grid_ts (processor)"
        return
    # The other cards pass the metadata to the processor, but none of it reaches the model's inputs.
    images, videos, video_kwargs = _vision_info(conversations, family, return_video_metadata=True)
    videos, video_metadatas = zip(*videos)
    inputs = proc(text=_texts(proc, family, conversations), images=images, videos=list(videos),
                  video_metadata=list(video_metadatas), padding=True, return_tensors="pt", **video_kwargs)
    assert not {k for k in inputs if "second" in k or "fps" in k or "metadata" in k}
    note = {"qwen2_vl": Qwen2VLAdapter.missing_timestamps_note, "qwen3_vl": Qwen3VLAdapter.missing_timestamps_note,
            "llava_onevision": LlavaOnevisionAdapter.missing_timestamps_note}
    with tango.enabled(model, tango.TangoConfig(**CFG)) as h:
        with pytest.warns(UserWarning, match=re.escape(note[family])):
            model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        row = h.report()["samples"][0]
    assert row["pruned"] and row["timestamps_source"] == "none: frame index"
    assert row["video_timestamps"] == [None]


def test_the_documented_code_runs_as_written(tmp_path):
    """docs/qwen_vl_utils.md: its setup block and its code block, verbatim, in a scratch folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "qwen_vl_utils.md").read_text()
    start = page.index("```bash", page.index("## The code"))
    setup = page[start + len("```bash"):page.index("```", start + 7)].strip()
    start = page.index("```python", start)
    code = page[start + len("```python"):page.index("```", start + 9)].strip()
    code += "\nprint('TIMES', handle.report()['samples'][0]['video_timestamps'], " \
            "handle.report()['samples'][0]['timestamps_source'])"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", setup], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TIMES"))
    # 20 frames at 5 fps read at 2 fps: frames round(linspace(0, 19, 8)) at 0, 0.6, ..., 3.8 s, one per patch
    assert "tango_video_timestamps (per call)" in line and "[[0.0, " in line
