"""The adapters on inputs made by the real Hugging Face processors (needs torchvision for the video processors)."""

from __future__ import annotations

import pytest
import torch
from tango_plugin.model_zoo import tiny

import tango_plugin as tango

pytest.importorskip("torchvision")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

VIDEO = (torch.rand(8, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def _qwen_inputs(tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                            video_processor=Qwen2VLVideoProcessor(**pixels))
    return proc(text=["<|vision_start|><|video_pad|><|vision_end|>what happens?", "describe it"],
                videos=[VIDEO], return_tensors="pt", padding=True)


def _llava_inputs(tok):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": 112, "width": 112}
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[112, 112]]), tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=64,
        vision_feature_select_strategy="full")
    return proc(text=["<video>what happens?", "describe it"], videos=[VIDEO], return_tensors="pt", padding=True)


@pytest.mark.parametrize("model_type,style,make", [("qwen2_vl", "qwen", _qwen_inputs),
                                                   ("llava_onevision", "llava", _llava_inputs)])
@torch.no_grad()
def test_processor_inputs(model_type, style, make):
    tok = tiny.build_tokenizer(style)
    model = tiny.build_model(model_type, tok)
    inputs = make(tok)
    ref = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=1.0)):
        same = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        rows = h.report()["samples"]
    assert torch.equal(same, ref)
    assert out.shape == ref.shape and torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert rows[0]["pruned"] and rows[0]["visual_tokens_after"] < rows[0]["visual_tokens_before"]
    assert rows[1]["videos"] == 0
