"""Frame times through the one per-call channel: seconds or video metadata in `tango_video_timestamps`, the times
and their source in the report, and a warning when Qwen2.5-VL's times come from its processor's 24-fps default."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_processors import QWEN_TEXTS, VIDEO, _metadata, _qwen2_processor

import tango_plugin as tango
from tango_plugin import testing as tiny

pytest.importorskip("torchvision")


def test_timestamps_from_metadata():
    meta = _metadata(total_num_frames=100, fps=25.0, frames_indices=[0, 10, 99])
    torch.testing.assert_close(tango.timestamps_from_metadata(meta), torch.tensor([0.0, 0.4, 3.96],
                                                                                  dtype=torch.float64))
    both = tango.timestamps_from_metadata([meta, {"frames_indices": np.array([0, 3]), "fps": 3}])
    assert [t.tolist() for t in both] == [[0.0, 0.4, 3.96], [0.0, 1.0]]
    with pytest.raises(ValueError, match="no frames_indices and fps"):
        tango.timestamps_from_metadata({"fps": 3})
    with pytest.raises(ValueError, match="fps=0.0"):
        tango.timestamps_from_metadata({"frames_indices": [0], "fps": 0})


@torch.no_grad()
def test_metadata_in_the_per_call_channel_gives_exact_times_and_the_report_says_so():
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen2_vl", tok)
    proc = _qwen2_processor(tok)
    inputs = proc(text=QWEN_TEXTS[:1], videos=[VIDEO], return_tensors="pt")
    # 8 frames taken at indices 0, 3, ..., 21 of a 30-fps clip: frame k at indices[k] / 30 s
    meta = {"frames_indices": list(range(0, 24, 3)), "fps": 30.0}
    truth = np.arange(0, 24, 3) / 30.0
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25), on_plan=seen.append) as h:
            model.generate(**inputs, tango_video_timestamps=[meta], max_new_tokens=2, do_sample=False)
            row = h.report()["samples"][0]
    # Qwen2-VL: one time per 2-frame temporal patch, the paper's interpolation from the first to the last frame
    expected = np.interp(np.linspace(0, 7, 4), np.arange(8), truth)
    torch.testing.assert_close(seen[0].tokens.timestamps, torch.from_numpy(expected), rtol=0, atol=0)
    assert row["video_timestamps"] == [expected.tolist()]
    assert row["timestamps_source"] == "tango_video_timestamps (per call)"
    assert not [w for w in caught if "timestamps" in str(w.message)]


@torch.no_grad()
def test_qwen2_5_processor_default_fps_is_never_used_silently():
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen2_5_vl", tok)
    proc = _qwen2_processor(tok, "Qwen2_5_VLProcessor")
    # the model card's call: no video_metadata -> second_per_grid_ts from the processor's 24-fps default
    inputs = proc(text=QWEN_TEXTS[:1], videos=[VIDEO], return_tensors="pt")
    torch.testing.assert_close(torch.as_tensor(inputs["second_per_grid_ts"], dtype=torch.float64),
                               torch.tensor([2 / 24], dtype=torch.float64))
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
        with pytest.warns(UserWarning, match="24-fps default"):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        row = h.report()["samples"][0]
    assert row["timestamps_source"] == "second_per_grid_ts (processor)"
    # with the true times per call: no warning, and those times are used
    truth = torch.arange(8, dtype=torch.float64) / 4.0  # sampled at 4 fps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
            model.generate(**inputs, tango_video_timestamps=[truth], max_new_tokens=2, do_sample=False)
            row = h.report()["samples"][0]
    assert not [w for w in caught if "24-fps" in str(w.message)]
    assert row["video_timestamps"][0] == np.interp(np.linspace(0, 7, 4), np.arange(8), truth.numpy()).tolist()


@torch.no_grad()
def test_times_of_the_wrong_length_or_count_are_a_clear_error():
    tok = tiny.build_tokenizer("llava")
    model = tiny.build_model("llava_onevision", tok)
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(4)]], ["what happens?"])
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)):
        with pytest.raises(ValueError, match="has 3 values; the video has 4 frames"):
            model(**inputs, tango_video_timestamps=[torch.arange(3.0)])
        with pytest.raises(ValueError, match="1 entries, but this call has a video 1"):
            two = tiny.video_inputs(model, tok, [[tiny.VideoSpec(4)], [tiny.VideoSpec(4, seed=2)]], ["a", "b"])
            model(**two, tango_video_timestamps=[torch.arange(4.0)[None]])
