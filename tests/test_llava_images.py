"""LLaVA-OneVision still images with `prune_images=True`: the base-resolution grid is pruned as one frame, the
high-res part (unpadded crops, one newline per row) reaches the LLM as the model packed it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from adapter_testers import TESTERS, gen
from tango_plugin.model_zoo.llava_onevision import LlavaOnevisionAdapter

import tango_plugin as tango
from tango_plugin import testing as tiny
from tango_plugin.engine.saliency import global_query_saliency
from tango_plugin.strategies import PruningStrategy, get_strategy, register_strategy

T = TESTERS["llava_onevision"]
SIDE = 8  # 112 px / 14 px patches: the base grid is 8 x 8 = 64 tokens, not pooled
BASE = SIDE * SIDE
TAIL = SIDE * (SIDE + 1)  # one 112 px crop: 8 rows of 8 tokens, each followed by a newline


def cfg(r: float, **kw) -> tango.TangoConfig:
    # explicit empty sinks: the preset's sinks are for the 14 x 14 video grid and would only add a warning here
    return tango.TangoConfig(retention_ratio=r, prune_images=True, sink_positions=kw.pop("sink_positions", []), **kw)


def image_inputs(model, media, prompts, **kw):
    """`tiny.video_inputs`, with each image's high-res crop made different from its base tile (tiny repeats the
    base tile), so that using the wrong crop shows."""
    inputs = T.inputs(model, media, prompts, **kw)
    if "pixel_values" in inputs:
        g = torch.Generator().manual_seed(7)
        pv = inputs["pixel_values"].clone()
        pv[:, 1] = torch.rand(pv[:, 1].shape, generator=g) * 2 - 1
        inputs["pixel_values"] = pv
    return inputs


class Seen:
    """What the inner `LlavaOnevisionModel.forward` received (input ids and image features), per call."""

    def __init__(self, model):
        self.calls = []
        self._h = model.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, mod, args, kwargs):
        self.calls.append(kwargs)

    def remove(self):
        self._h.remove()


_PLANS: list = []


@register_strategy("test_llava_images_spy", exist_ok=True)
class _Spy(PruningStrategy):
    """The tango strategy, recording what it was given and what it kept."""

    def select(self, tokens, config):
        plan = get_strategy("tango").select(tokens, config)
        _PLANS.append((tokens, plan))
        return plan


# ----------------------------------------------------------------------------------------------- retention 1.0
@pytest.mark.parametrize("highres", ["keep", "prune"])
@torch.no_grad()
def test_retention_one_with_images_equals_unpruned(highres):
    model = T.model()
    media = [[tiny.ImageSpec()], [tiny.VideoSpec(8, seed=2)], [tiny.ImageSpec(seed=3), tiny.VideoSpec(8, seed=4)]]
    prompts = ["an image?", "a video?", "compare the image and the video."]
    inputs = image_inputs(model, media, prompts)
    ref_logits = model(**inputs).logits
    ref_tokens = gen(model, inputs)
    with tango.enabled(model, cfg(1.0), image_highres=highres) as h:
        logits = model(**inputs).logits
        rows = h.report()["samples"]
        tokens = gen(model, inputs)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    assert [r["images"] for r in rows] == [1, 0, 1]
    assert [r["image_tokens_before"] for r in rows] == [BASE + TAIL, 0, BASE + TAIL]
    assert [r["image_tokens_after"] for r in rows] == [r["image_tokens_before"] for r in rows]


# ----------------------------------------------------------------------------------------------- counts, layout
@pytest.mark.parametrize("r", [0.25, 0.1])
@torch.no_grad()
def test_base_grid_keeps_ceil_and_high_res_part_is_intact(r):
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    image_id = model.config.image_token_id
    full = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                          return_dict=True).pooler_output[0]
    assert full.shape[0] == BASE + TAIL == int((inputs["input_ids"] == image_id).sum())
    _PLANS.clear()
    seen = Seen(model)
    try:
        with tango.enabled(model, cfg(r, strategy="test_llava_images_spy")) as h:
            logits = model(**inputs).logits
            row = h.report()["samples"][0]
    finally:
        seen.remove()
    keep = math.ceil(BASE * r)
    (tokens, plan), = _PLANS
    assert tokens.features.shape == (1, BASE, full.shape[1]) and tokens.grid_hw == (SIDE, SIDE)
    torch.testing.assert_close(tokens.features[0], full[:BASE], rtol=0, atol=0)  # the base grid, unpooled
    assert plan.kept_indices.numel() == keep
    # the LLM got ceil(64 r) base tokens, then the high-res rows and their newlines exactly as the model packs them
    call = seen.calls[-1]
    assert int((call["input_ids"] == image_id).sum()) == keep + TAIL
    sent = torch.cat(list(call["mm_encoder_outputs"]["image"].pooler_output))
    assert sent.shape[0] == keep + TAIL
    torch.testing.assert_close(sent[keep:], full[BASE:], rtol=0, atol=0)
    newline = model.model.image_newline
    assert all(torch.equal(sent[keep + i * (SIDE + 1) + SIDE], newline) for i in range(SIDE))
    assert row["images"] == 1 and row["image_tokens_before"] == BASE + TAIL
    assert row["image_tokens_after"] == keep + TAIL and row["pruned"]
    assert logits.shape[1] == inputs["input_ids"].shape[1] - (BASE - keep)


@torch.no_grad()
def test_topk_keeps_base_features_untouched():
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    full = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                          return_dict=True).pooler_output[0]
    _PLANS.clear()
    seen = Seen(model)
    try:
        with tango.enabled(model, cfg(0.3, strategy="topk")):
            model(**inputs)
    finally:
        seen.remove()
    sent = torch.cat(list(seen.calls[-1]["mm_encoder_outputs"]["image"].pooler_output))
    keep = math.ceil(BASE * 0.3)
    kept_rows = [int((full[:BASE] == v).all(-1).nonzero()[0]) for v in sent[:keep]]
    assert kept_rows == sorted(kept_rows) and len(set(kept_rows)) == keep  # raster order, no duplicates


@torch.no_grad()
def test_image_saliency_is_global_query_of_the_base_crop():
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    _PLANS.clear()
    with tango.enabled(model, cfg(0.25, strategy="test_llava_images_spy")):
        model(**inputs)
    (tokens, _), = _PLANS
    tower = model.model.vision_tower
    layer = tower.encoder.layers[-1]

    def expected(crop):
        hs = tower(inputs["pixel_values"][:, crop], output_hidden_states=True).hidden_states[-2]
        x = layer.layer_norm1(hs)
        q = layer.self_attn.q_proj(x).view(1, BASE, 4, -1).transpose(1, 2)
        k = layer.self_attn.k_proj(x).view(1, BASE, 4, -1).transpose(1, 2)
        return global_query_saliency(q, k)

    torch.testing.assert_close(tokens.saliency, expected(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tokens.saliency, expected(1))  # not the high-res crop's scores


@pytest.mark.parametrize("source", ["attention_received", "global_query"])
@torch.no_grad()
def test_image_pruning_with_each_hook_source(source):
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    with tango.enabled(model, cfg(0.25, saliency_source=source)) as h:
        out = gen(model, inputs, n=3)
        row = h.report()["samples"][0]
    assert row["saliency_source"] == source and row["image_tokens_after"] == math.ceil(BASE * 0.25) + TAIL
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


# ----------------------------------------------------------------------------------------------- crop-less images
def _multi_image_inputs(model, tok, n_images: int = 2):
    """Several images in one prompt (`batch_num_images=[n]`): LLaVA-OV packs each as its base crop plus ONE newline."""
    per_image = BASE + 1
    text = ("<|im_start|>user\n" + "<image>" * (per_image * n_images) + "compare them.<|im_end|>\n"
            "<|im_start|>assistant\n")
    enc = tok([text], return_tensors="pt")
    g = torch.Generator().manual_seed(11)
    pv = torch.rand(n_images, 2, 3, 112, 112, generator=g) * 2 - 1  # 2 slots per image, only the base one used
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": pv,
            "image_sizes": torch.tensor([[112, 112]] * n_images), "batch_num_images": torch.tensor([n_images])}


@torch.no_grad()
def test_multi_image_prompt_without_crops():
    model = T.model()
    inputs = _multi_image_inputs(model, T.tokenizer())
    ref = model(**inputs).logits
    ref_tokens = gen(model, inputs)
    with tango.enabled(model, cfg(1.0)):
        same = model(**inputs).logits
        same_tokens = gen(model, inputs)
    torch.testing.assert_close(same, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(same_tokens, ref_tokens)
    seen = Seen(model)
    try:
        with tango.enabled(model, cfg(0.25)) as h:
            model(**inputs)
            row = h.report()["samples"][0]
            out = gen(model, inputs, n=3)
    finally:
        seen.remove()
    keep = math.ceil(BASE * 0.25)
    assert row["images"] == 2 and row["image_tokens_before"] == 2 * (BASE + 1)
    assert row["image_tokens_after"] == 2 * (keep + 1)
    sent = seen.calls[0]["mm_encoder_outputs"]["image"].pooler_output
    newline = model.model.image_newline
    assert [s.shape[0] for s in sent] == [keep + 1] * 2 and all(torch.equal(s[-1], newline) for s in sent)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


# ----------------------------------------------------------------------------------------------- batches, generate
@torch.no_grad()
def test_batch_mixing_image_and_video_requests_equals_single_samples():
    model = T.model()
    media = [[tiny.ImageSpec(seed=5)], [tiny.VideoSpec(8, seed=1)]]
    prompts = ["describe the scene in detail.", "what happens?"]
    batch = image_inputs(model, media, prompts)
    with tango.enabled(model, cfg(0.25)) as h:
        out = gen(model, batch, n=4, return_dict_in_generate=True, output_logits=True)
        rows = h.report()["samples"]
        singles = []
        for m, p in zip(media, prompts):
            one = image_inputs(model, [m], [p])
            singles.append((one, gen(model, one, n=4, return_dict_in_generate=True, output_logits=True),
                            h.report()["samples"][0]))
    L = batch["input_ids"].shape[1]
    assert rows[0]["image_tokens_after"] == math.ceil(BASE * 0.25) + TAIL and rows[0]["videos"] == 0
    assert rows[1]["videos"] == 1 and rows[1]["visual_tokens_after"] < rows[1]["visual_tokens_before"]
    for b, (one, single, row) in enumerate(singles):
        for key in ("image_tokens_after", "visual_tokens_after", "kept_by_strategy"):
            assert rows[b][key] == row[key], key
        assert torch.equal(out.sequences[b, L:], single.sequences[0, one["input_ids"].shape[1]:])
        for step_b, step_1 in zip(out.logits, single.logits):
            torch.testing.assert_close(step_b[b], step_1[0], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_generate_returns_prompt_and_new_tokens():
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    with tango.enabled(model, cfg(0.2)) as h:
        out = gen(model, inputs, n=6)
        row = h.report()["samples"][0]
    L = inputs["input_ids"].shape[1]
    assert out.shape == (1, L + 6) and torch.equal(out[:, :L], inputs["input_ids"])
    assert row["pruned"] and row["image_tokens_after"] < row["image_tokens_before"]


# ----------------------------------------------------------------------------------------------- warnings
@torch.no_grad()
def test_no_prune_images_warning_any_more():
    model = T.model()
    inputs = image_inputs(model, [[tiny.VideoSpec(8), tiny.ImageSpec()]], ["what?"])
    with tango.enabled(model, cfg(0.2), fps=1.0) as h:  # times given: no warning of any kind
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(**inputs)
        row = h.report()["samples"][0]
    assert row["images"] == 1 and row["image_tokens_after"] < row["image_tokens_before"]


@torch.no_grad()
def test_preset_sinks_on_the_image_grid_are_skipped_with_a_note():
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    with pytest.warns(UserWarning, match="64 tokens per frame, so no sink positions"):
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.2, prune_images=True)) as h:
            model(**inputs)
    assert "no sink positions" in h.report()["samples"][0]["note"]


@torch.no_grad()
def test_adapter_without_image_support_still_warns(monkeypatch):
    monkeypatch.setattr(LlavaOnevisionAdapter, "supports_image_pruning", False)
    model = T.model()
    inputs = image_inputs(model, [[tiny.VideoSpec(8), tiny.ImageSpec()]], ["what?"])
    with tango.enabled(model, cfg(0.2)) as h:
        with pytest.warns(UserWarning, match="prunes videos only"):
            model(**inputs)
        assert h.report()["samples"][0]["images"] == 0


# ----------------------------------------------------------------------------------------------- image_highres="prune"
@pytest.mark.parametrize("r", [0.25, 0.1])
@torch.no_grad()
def test_highres_prune_layout_and_counts(r):
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    full = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                          return_dict=True).pooler_output[0]
    _PLANS.clear()
    seen = Seen(model)
    try:
        with tango.enabled(model, cfg(r, strategy="test_llava_images_spy"), image_highres="prune") as h:
            model(**inputs)
            row = h.report()["samples"][0]
    finally:
        seen.remove()
    (base_tokens, base_plan), (hr_tokens, hr_plan) = _PLANS
    assert base_tokens.grid_hw == hr_tokens.grid_hw == (SIDE, SIDE)  # one 112 px crop: an 8 x 8 high-res grid
    hr_grid = full[BASE:].reshape(SIDE, SIDE + 1, -1)
    torch.testing.assert_close(hr_tokens.features[0], hr_grid[:, :SIDE].reshape(BASE, -1), rtol=0, atol=0)
    keep = math.ceil(BASE * r)
    assert base_plan.kept_indices.numel() == hr_plan.kept_indices.numel() == keep
    # expected high-res block: kept tokens in raster order, a newline after the last kept token of each row
    newline = model.model.image_newline
    expected, kept_rows = [], hr_plan.kept_indices // SIDE
    for j, feat in enumerate(hr_plan.features):
        expected.append(feat)
        if j + 1 == len(kept_rows) or kept_rows[j + 1] != kept_rows[j]:
            expected.append(newline)
    expected = torch.stack(expected)
    n_rows = torch.unique(kept_rows).numel()
    sent = torch.cat(list(seen.calls[-1]["mm_encoder_outputs"]["image"].pooler_output))
    assert sent.shape[0] == 2 * keep + n_rows == row["image_tokens_after"]
    torch.testing.assert_close(sent[:keep], base_plan.features, rtol=0, atol=0)
    torch.testing.assert_close(sent[keep:], expected, rtol=0, atol=0)
    assert int((seen.calls[-1]["input_ids"] == model.config.image_token_id).sum()) == sent.shape[0]


@torch.no_grad()
def test_highres_saliency_is_the_crops_global_query():
    model = T.model()
    inputs = image_inputs(model, [[tiny.ImageSpec()]], ["an image?"])
    _PLANS.clear()
    with tango.enabled(model, cfg(0.25, strategy="test_llava_images_spy"), image_highres="prune"):
        model(**inputs)
    (base_tokens, _), (hr_tokens, _) = _PLANS
    tower = model.model.vision_tower
    layer = tower.encoder.layers[-1]
    hs = tower(inputs["pixel_values"][0], output_hidden_states=True).hidden_states[-2]  # base crop, high-res crop
    x = layer.layer_norm1(hs)
    q = layer.self_attn.q_proj(x).view(2, BASE, 4, -1).transpose(1, 2)
    k = layer.self_attn.k_proj(x).view(2, BASE, 4, -1).transpose(1, 2)
    expected = global_query_saliency(q, k)
    torch.testing.assert_close(base_tokens.saliency[0], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hr_tokens.saliency[0], expected[1], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_highres_prune_batch_equals_single_samples():
    model = T.model()
    media = [[tiny.ImageSpec(seed=5)], [tiny.VideoSpec(8, seed=1)]]
    prompts = ["describe the scene in detail.", "what happens?"]
    batch = image_inputs(model, media, prompts)
    with tango.enabled(model, cfg(0.25), image_highres="prune") as h:
        out = gen(model, batch, n=4)
        rows = h.report()["samples"]
        singles = []
        for m, p in zip(media, prompts):
            one = image_inputs(model, [m], [p])
            singles.append((one, gen(model, one, n=4), h.report()["samples"][0]))
    L = batch["input_ids"].shape[1]
    assert rows[0]["image_tokens_after"] < math.ceil(BASE * 0.25) + TAIL
    for b, (one, single, row) in enumerate(singles):
        assert rows[b]["image_tokens_after"] == row["image_tokens_after"]
        assert torch.equal(out[b, L:], single[0, one["input_ids"].shape[1]:])


def test_bad_image_highres_option_fails_at_enable():
    model = T.model()
    with pytest.raises(ValueError, match="image_highres"):
        tango.enable(model, cfg(0.25), image_highres="drop")
    assert "forward" not in model.__dict__


# ----------------------------------------------------------------------------------------------- real processor
def _processor_inputs(model, tok):
    """Two non-square images through the real LlavaOnevisionProcessor: several crops, unpadded high-res grids."""
    pytest.importorskip("torchvision")
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    pins = [[112, 112], [112, 224], [224, 112], [224, 224]]
    model.config.image_grid_pinpoints = pins
    size = {"height": 112, "width": 112}
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pins), tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=BASE,
        vision_feature_select_strategy="full")
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, 100, 190, generator=g) * 255).to(torch.uint8),
              (torch.rand(3, 150, 90, generator=g) * 255).to(torch.uint8)]
    return proc(text=["<image>what is it?", "<image>and this one?"], images=images, return_tensors="pt",
                padding=True)


@pytest.mark.parametrize("highres", ["keep", "prune"])
@torch.no_grad()
def test_processor_images_with_several_crops(highres):
    tok = T.tokenizer()
    model = tiny.build_model("llava_onevision", tok)
    inputs = _processor_inputs(model, tok)
    assert inputs["pixel_values"].shape[1] == 3  # base + 2 crops each
    before = (inputs["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    assert before[0] != before[1]  # different unpadded high-res grids
    ref = model(**inputs).logits
    ref_tokens = gen(model, inputs, n=3)
    with tango.enabled(model, cfg(1.0), image_highres=highres):
        same = model(**inputs).logits
        same_tokens = gen(model, inputs, n=3)
    torch.testing.assert_close(same, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(same_tokens, ref_tokens)
    with tango.enabled(model, cfg(0.25), image_highres=highres) as h:
        out = gen(model, inputs, n=3)
        rows = h.report()["samples"]
    keep = math.ceil(BASE * 0.25)
    assert [r["image_tokens_before"] for r in rows] == before
    if highres == "keep":
        assert [r["image_tokens_after"] for r in rows] == [n - BASE + keep for n in before]
    else:
        assert all(r["image_tokens_after"] < n - BASE + keep for r, n in zip(rows, before))
    L = inputs["input_ids"].shape[1]
    assert out.shape == (2, L + 3) and torch.equal(out[:, :L], inputs["input_ids"])


@torch.no_grad()
def test_highres_prune_on_a_resized_grid():
    """16 crops: past `anyres_max_9` the model shrinks the stitched grid bilinearly; the scores follow the same way."""
    pytest.importorskip("torchvision")
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    tok = T.tokenizer()
    model = tiny.build_model("llava_onevision", tok)
    pins = [[448, 448]]
    model.config.image_grid_pinpoints = pins
    size = {"height": 112, "width": 112}
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pins), tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=BASE,
        vision_feature_select_strategy="full")
    image = (torch.rand(3, 400, 430, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    inputs = proc(text=["<image>what is it?"], images=[image], return_tensors="pt")
    full = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                          batch_num_images=inputs["batch_num_images"]).pooler_output[0]
    tail = full[BASE:]
    rows = int((tail == model.model.image_newline).all(-1).sum())
    cols = tail.shape[0] // rows - 1
    assert rows * cols < 30 * 32  # resized: smaller than the unpadded 4 x 4 crops' grid
    ref = model(**inputs).logits
    with tango.enabled(model, cfg(1.0), image_highres="prune"):
        torch.testing.assert_close(model(**inputs).logits, ref, rtol=1e-5, atol=1e-5)
    _PLANS.clear()
    with tango.enabled(model, cfg(0.2, strategy="test_llava_images_spy"), image_highres="prune") as h:
        model(**inputs)
        row = h.report()["samples"][0]
    (_, base_plan), (hr_tokens, hr_plan) = _PLANS
    assert hr_tokens.grid_hw == (rows, cols) and hr_tokens.saliency.shape == (1, rows * cols)
    assert hr_plan.kept_indices.numel() == math.ceil(rows * cols * 0.2)
    kept_rows = torch.unique(hr_plan.kept_indices // cols).numel()
    assert row["image_tokens_after"] == math.ceil(BASE * 0.2) + hr_plan.kept_indices.numel() + kept_rows
