"""The adapters on inputs made by the real Hugging Face processors (needs torchvision for the video processors).

Every family: a batch of a video request, a text-only request and (Qwen) an image request, straight from the
processor class, run through the tiny model of that family; retention 1.0 reproduces the unpruned tokens, 0.25 prunes
the video row only. Timestamps: Qwen2.5-VL's processor returns `second_per_grid_ts`, which reaches the strategy;
Qwen3-VL's processor writes the times into the prompt text only, so the adapter's options must reproduce them.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from adapter_testers import spy_strategy
from tango_plugin.model_zoo.qwen_vl import SECOND_PER_GRID_NOTE

import tango_plugin as tango
from tango_plugin import testing as tiny

pytest.importorskip("torchvision")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

VIDEO = (torch.rand(8, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
VIDEO16 = (torch.rand(16, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
IMAGE = (torch.rand(3, 112, 112, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
QWEN_TEXTS = ["<|vision_start|><|video_pad|><|vision_end|>what happens?", "describe it",
              "<|vision_start|><|image_pad|><|vision_end|>what is this?"]
NEW_TOKENS = 4


def _metadata(**kw):
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(**kw)


def _qwen2_processor(tok, cls_name="Qwen2VLProcessor"):
    import transformers as tf

    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    return getattr(tf, cls_name)(image_processor=tf.Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                                 video_processor=tf.Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=False))


def _qwen3_processor(tok):
    import transformers as tf

    # Qwen3-VL: 16-pixel patches, 2x2 merge (32-pixel factor); a 112 px frame is resized to 128 px (4 x 4 tokens)
    return tf.Qwen3VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32, max_pixels=128 * 128),
        tokenizer=tok, video_processor=tf.Qwen3VLVideoProcessor(
            size={"shortest_edge": 32 * 32 * 4, "longest_edge": 128 * 128 * 16}, cap_pixels_per_frame=False))


def _qwen_inputs(tok):
    return _qwen2_processor(tok)(text=QWEN_TEXTS, videos=[VIDEO], images=[IMAGE], return_tensors="pt", padding=True)


def _qwen2_5_inputs(tok):
    proc = _qwen2_processor(tok, "Qwen2_5_VLProcessor")
    return proc(text=QWEN_TEXTS, videos=[VIDEO], images=[IMAGE], return_tensors="pt", padding=True,
                videos_kwargs={"video_metadata": [_metadata(total_num_frames=8, fps=4.0)]})


def _qwen3_inputs(tok):
    # a 16-frame clip at 8 fps, sampled by the processor at 4 fps (8 frames, 4 temporal patches)
    return _qwen3_processor(tok)(text=QWEN_TEXTS, videos=[VIDEO16], images=[IMAGE], return_tensors="pt",
                                 padding=True, videos_kwargs={"video_metadata": [_metadata(total_num_frames=16,
                                                                                           fps=8.0)], "fps": 4})


def _llava_inputs(tok):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": 112, "width": 112}
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[112, 112]]), tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=64,
        vision_feature_select_strategy="full")
    return proc(text=["<video>what happens?", "describe it"], videos=[VIDEO], return_tensors="pt", padding=True)


@pytest.mark.parametrize("model_type,style,make", [("qwen2_vl", "qwen", _qwen_inputs),
                                                   ("qwen2_5_vl", "qwen", _qwen2_5_inputs),
                                                   ("qwen3_vl", "qwen", _qwen3_inputs),
                                                   ("llava_onevision", "llava", _llava_inputs)])
@torch.no_grad()
def test_processor_inputs(model_type, style, make):
    tok = tiny.build_tokenizer(style)
    model = tiny.build_model(model_type, tok)
    inputs = make(tok)
    n_in = inputs["input_ids"].shape[1]
    if style == "qwen":
        assert inputs["video_grid_thw"].shape[0] == 1 and inputs["image_grid_thw"].shape[0] == 1
        assert set(inputs["mm_token_type_ids"][2].tolist()) == {0, 1}  # the image row holds image tokens only
    ref = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=1.0)):
        same = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        rows = h.report()["samples"]
    assert torch.equal(same, ref)
    assert ref.shape[1] == n_in + NEW_TOKENS and out.shape == ref.shape
    assert torch.equal(out[:, :n_in], inputs["input_ids"])
    video_slots = int((inputs["input_ids"][0] == model.config.video_token_id).sum()) if style == "qwen" else None
    assert rows[0]["pruned"] and rows[0]["videos"] == 1
    assert rows[0]["visual_tokens_after"] < rows[0]["visual_tokens_before"]
    if video_slots is not None:
        assert rows[0]["visual_tokens_before"] == video_slots
        assert rows[0]["visual_tokens_after"] == -(-video_slots // 4)  # ceil(n * 0.25) for the Qwen adapters
    for row in rows[1:]:
        assert row["videos"] == 0 and not row["pruned"] and row["visual_tokens_before"] == 0
    if style == "qwen":
        # the image row's image went through unpruned (prune_images is off)
        assert rows[2]["images"] == 0 and rows[2]["image_tokens_before"] == 0


@pytest.mark.parametrize("model_type,make", [("qwen2_5_vl", _qwen2_5_inputs), ("qwen3_vl", _qwen3_inputs)])
@torch.no_grad()
def test_processor_inputs_prune_images(model_type, make):
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model(model_type, tok)
    inputs = make(tok)
    image_slots = int((inputs["input_ids"][2] == model.config.image_token_id).sum())
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25, prune_images=True), fps=4) as h:
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        rows = h.report()["samples"]
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert rows[2]["images"] == 1 and rows[2]["videos"] == 0 and rows[2]["pruned"]
    assert rows[2]["image_tokens_before"] == image_slots and 0 < rows[2]["image_tokens_after"] < image_slots
    assert rows[0]["images"] == 0 and rows[0]["visual_tokens_after"] < rows[0]["visual_tokens_before"]
    assert rows[1]["images"] == 0 and rows[1]["videos"] == 0 and not rows[1]["pruned"]


# ----------------------------------------------------------------------------------------------- timestamps
@torch.no_grad()
def test_qwen2_5_timestamps_from_processor_second_per_grid_ts(monkeypatch):
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen2_5_vl", tok)
    proc = _qwen2_processor(tok, "Qwen2_5_VLProcessor")
    # two videos of different frame rates in one batch, and a text-only row between them
    inputs = proc(text=[QWEN_TEXTS[0], "describe it", QWEN_TEXTS[0]], videos=[VIDEO, VIDEO[:4]],
                  videos_kwargs={"video_metadata": [_metadata(total_num_frames=8, fps=4.0),
                                                    _metadata(total_num_frames=4, fps=10.0)]},
                  return_tensors="pt", padding=True)
    spg = inputs["second_per_grid_ts"]
    torch.testing.assert_close(torch.as_tensor(spg, dtype=torch.float32), torch.tensor([2 / 4.0, 2 / 10.0]))
    grid_t = inputs["video_grid_thw"][:, 0].tolist()
    assert grid_t == [4, 2]
    seen = spy_strategy(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            rows = h.report()["samples"]
    assert len(seen) == 2
    for v, tokens in enumerate(seen):
        # the paper's Qwen times: frame times (k * spg / 2) interpolated from the first to the last frame
        n = 2 * grid_t[v]
        expected = np.interp(np.linspace(0, n - 1, grid_t[v]), np.arange(n), np.arange(n) * float(spg[v]) / 2)
        torch.testing.assert_close(tokens.timestamps, torch.from_numpy(expected), rtol=0, atol=0)
    # evenly spaced times from the processor's rate: used, with one warning that they are not the frames' own
    assert [str(w.message) for w in caught if "timestamps" in str(w.message)] == [
        f"tango_plugin: {SECOND_PER_GRID_NOTE}"]
    assert [r["videos"] for r in rows] == [1, 0, 1] and rows[0]["pruned"] and rows[2]["pruned"]
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


def _text_seconds(tok, ids) -> list:
    return [float(x) for x in re.findall(r"<(\d+\.\d) seconds>", tok.decode(ids))]


@torch.no_grad()
def test_qwen3_timestamps_only_in_the_text_options_reproduce_them(monkeypatch):
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen3_vl", tok)
    proc = _qwen3_processor(tok)
    inputs = _qwen3_inputs(tok)
    # What the processor does: sample 4 fps from the 8 fps clip, then one time per temporal patch (2 frames): the
    # mean of the patch's first and last frame time. Those times appear in the prompt text and nowhere else.
    indices = proc.video_processor.sample_frames(_metadata(total_num_frames=16, fps=8.0), fps=4)
    assert indices.tolist() == [0, 2, 4, 6, 9, 11, 13, 15]  # not evenly spaced
    expected = torch.tensor(proc._calculate_timestamps(indices, 8.0, 2), dtype=torch.float64)
    torch.testing.assert_close(expected, torch.tensor([0.125, 0.625, 1.25, 1.75], dtype=torch.float64))
    assert _text_seconds(tok, inputs["input_ids"][0]) == [float(f"{x:.1f}") for x in expected.tolist()]
    fwd = set(inputs.keys())
    assert fwd == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw",
                   "pixel_values", "image_grid_thw"}  # no fps, metadata or seconds reach the model
    seen = spy_strategy(monkeypatch)
    cfg = tango.TangoConfig(retention_ratio=0.25)

    # no option: the strategy gets no times (temporal-patch index), and the handle says so once, naming the options
    with tango.enabled(model, cfg):
        with pytest.warns(UserWarning, match=r"prompt text only.*fps=.*video_timestamps="):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert seen[0].timestamps is None and seen[1].timestamps is None
    assert not [w for w in again if "timestamps" in str(w.message)]

    # video_timestamps, one per sampled frame (frames_indices / fps) or one per temporal patch: the text's times
    per_frame = torch.tensor(indices, dtype=torch.float64) / 8.0
    for given in (per_frame, expected, [expected]):
        seen.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with tango.enabled(model, cfg, video_timestamps=given):
                model.generate(**inputs, max_new_tokens=2, do_sample=False)
        torch.testing.assert_close(seen[0].timestamps, expected)
        assert not [w for w in caught if "timestamps" in str(w.message)]
    # the same per call
    seen.clear()
    with tango.enabled(model, cfg):
        model.generate(**inputs, tango_video_timestamps=[per_frame], max_new_tokens=2, do_sample=False)
    torch.testing.assert_close(seen[0].timestamps, expected)


@torch.no_grad()
def test_qwen3_fps_option_matches_the_processor_text_for_evenly_sampled_frames(monkeypatch):
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen3_vl", tok)
    proc = _qwen3_processor(tok)
    # frames already sampled at 4 fps from an 8 fps source (every other frame): the fps option is 4
    meta = _metadata(total_num_frames=16, fps=8.0, frames_indices=list(range(0, 16, 2)))
    inputs = proc(text=QWEN_TEXTS[:2], videos=[VIDEO], videos_kwargs={"video_metadata": [meta],
                                                                       "do_sample_frames": False},
                  return_tensors="pt", padding=True)
    expected = torch.tensor(proc._calculate_timestamps(list(range(0, 16, 2)), 8.0, 2), dtype=torch.float64)
    torch.testing.assert_close(expected, torch.tensor([0.125, 0.625, 1.125, 1.625], dtype=torch.float64))
    assert _text_seconds(tok, inputs["input_ids"][0]) == [float(f"{x:.1f}") for x in expected.tolist()]
    seen = spy_strategy(monkeypatch)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25), fps=4) as h:
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        rows = h.report()["samples"]
    torch.testing.assert_close(seen[0].timestamps, expected)
    assert rows[0]["pruned"] and rows[1]["videos"] == 0
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


@torch.no_grad()
def test_qwen2_without_times_warns_once(monkeypatch):
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen2_vl", tok)
    inputs = _qwen_inputs(tok)
    seen = spy_strategy(monkeypatch)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)):
        with pytest.warns(UserWarning, match=r"no video timestamps.*fps=.*video_timestamps="):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert seen[0].timestamps is None
    seen.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25), fps=4):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        with tango.enabled(model, tango.TangoConfig(retention_ratio=1.0)):  # nothing pruned: times unused
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    # 8 frames at 4 fps (0 .. 1.75 s) interpolated over the 4 patches, first to last frame (the paper's np.interp)
    torch.testing.assert_close(seen[0].timestamps, torch.tensor([0.0, 7 / 12, 7 / 6, 1.75], dtype=torch.float64))
    assert not [w for w in caught if "timestamps" in str(w.message)]
