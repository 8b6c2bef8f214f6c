"""Tango on LLaVA-NeXT's own `llava` package (`LlavaQwenForCausalLM`, model_zoo/llava_next.py).

`llava` is not on PyPI and runs on transformers 4.x only, so this module is skipped where it cannot be imported (the
project's own venv has transformers 5). It runs where llava is importable next to this project, in a transformers
4.x environment (docs/llava_next.md says what that needs).

The models are tiny and random, built from configs with no download: a 2-layer Qwen2 LLM and a 3-layer SigLIP tower
(384 px, patch 14, so the 27 x 27 grid llava asserts) saved to a temporary folder and loaded through llava's own
`SigLipVisionTower.load_model`, which deletes its last layer and head; the full saved checkpoint is the SigLIP head
for `saliency_source="siglip_head"`, as in the paper. The intra-LLM stage runs on the 2-layer LLM with K = 1.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llava", reason="LLaVA-NeXT's `llava` package is not installed (it is not on PyPI and needs "
                                    "transformers 4.x; see docs/llava_next.md)")
try:  # llava's package __init__ swallows import errors of its models; import the one we test for real
    from llava.model.language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"llava is installed but its llava_qwen model does not import here: {exc}", allow_module_level=True)

from tango_plugin.model_zoo.llava_next import IMAGE_TOKEN_INDEX, LlavaNextAdapter  # noqa: E402

import tango_plugin as tango  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. no frame times")

OV = {"mm_spatial_pool_mode": "bilinear", "mm_newline_position": "one_token"}  # LLaVA-OneVision
VIDEO = {"mm_spatial_pool_mode": "average", "mm_newline_position": "grid"}  # LLaVA-Video
MODES = {"ov": OV, "video": VIDEO,  # and the two other combinations llava's config allows
         "bilinear_grid": {"mm_spatial_pool_mode": "bilinear", "mm_newline_position": "grid"},
         "average_one_token": {"mm_spatial_pool_mode": "average", "mm_newline_position": "one_token"}}
SIDE = {"ov": 14, "video": 13, "bilinear_grid": 14, "average_one_token": 13}


# ----------------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                             image_size=384, patch_size=14)
    path = tmp_path_factory.mktemp("siglip")
    SiglipVisionModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def build(siglip_dir):
    def make(mode: str = "ov", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        attn = overrides.pop("attn_implementation", "eager")
        cfg = LlavaQwenConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=8192, mm_vision_tower="siglip-tiny-test", delay_load=True,
            mm_hidden_size=32, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad",
            mm_spatial_pool_stride=2, image_aspect_ratio="anyres_max_9", tokenizer_padding_side="left",
            attn_implementation=attn, **{**MODES[mode], **overrides})
        model = LlavaQwenForCausalLM(cfg)
        tower = model.get_vision_tower()
        tower.vision_tower_name = siglip_dir  # llava's own loader: drops the last layer and the head
        tower.load_model()
        torch.nn.init.normal_(model.get_model().image_newline, std=0.5)  # llava leaves it uninitialised
        return model.eval()

    return make


def frames(T: int, seed: int) -> "torch.Tensor":
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, 384, 384, generator=g)
    # neighbouring frames alike, so the temporal segmentation has something to merge
    return (base + 0.3 * torch.randn(T, 3, 384, 384, generator=g)).clamp(-1, 1)


def prompt(n_before: int = 3, n_after: int = 4, seed: int = 0) -> "torch.Tensor":
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 250, (n_before + n_after,), generator=g)
    return torch.cat([ids[:n_before], torch.tensor([IMAGE_TOKEN_INDEX]), ids[n_before:]])[None]


def logits(model, ids, video, **kw):
    with torch.no_grad():
        return model(input_ids=ids, images=[video], modalities=["video"], **kw).logits


def cfg(r: float = 0.25, **kw) -> tango.TangoConfig:
    return tango.TangoConfig(retention_ratio=r, **kw)


@contextlib.contextmanager
def llm_inputs(model):
    """The `inputs_embeds` the LLM gets (a pre-hook on the Qwen2 decoder)."""
    seen = []

    def hook(mod, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        if emb is not None and emb.shape[1] > 1:
            seen.append(emb.detach().clone())

    handle = model.get_model().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------- registry / identity
def test_registered_for_llava_qwen(build):
    model = build("ov")
    assert model.config.model_type == "llava_qwen"
    assert tango.get_adapter("llava_qwen") is LlavaNextAdapter
    with tango.enabled(model, cfg()) as handle:
        assert isinstance(handle.adapter, LlavaNextAdapter)
        assert handle.report()["model_type"] == "llava_qwen"


@pytest.mark.parametrize("mode", ["ov", "video"])
def test_ratio_one_is_bit_equal_to_unpatched(build, mode):
    model = build(mode)
    ids, video = prompt(), frames(5, seed=1)
    ref = logits(model, ids, video)
    ref_gen = model.generate(ids, images=[video], modalities=["video"], max_new_tokens=4, do_sample=False)
    T = video.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all at 1.0 (times are not needed when nothing is pruned)
        with tango.enabled(model, cfg(1.0)) as handle:
            out = logits(model, ids, video)
            gen = model.generate(ids, images=[video], modalities=["video"], max_new_tokens=4, do_sample=False)
            row = handle.report()["samples"][0]
    assert torch.equal(out, ref) and torch.equal(gen, ref_gen)
    side = SIDE[mode]
    before = T * side * side + (1 if mode == "ov" else T * side)
    assert ref.shape[1] == 7 + before
    assert (row["visual_tokens_before"], row["visual_tokens_after"], row["pruned"]) == (before, before, False)
    assert row["saliency_source"] == "none"


def test_remove_restores_bit_equal_and_leaves_nothing(build):
    model = build("video")
    ids, video = prompt(), frames(4, seed=2)
    ref = logits(model, ids, video)
    dict_before = set(model.__dict__)
    handle = tango.enable(model, cfg(0.2), fps=2.0)
    names = {e["name"] for e in handle.hooks()}
    assert {"llava:prepare_inputs_labels_for_multimodal", "llava:encode_images", "llava:get_2dPool",
            "llava:add_token_per_grid", "method:forward", "method:generate"} <= names
    pruned = logits(model, ids, video)
    assert pruned.shape[1] < ref.shape[1]
    handle.remove()
    assert handle.hooks() == [] and set(model.__dict__) == dict_before
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert torch.equal(logits(model, ids, video), ref)
    assert tango.disable(model) is False


# ----------------------------------------------------------------------------------------------- kept tokens
@pytest.mark.parametrize("mode", sorted(MODES))
def test_kept_tokens_and_newlines_reach_the_llm(build, mode):
    model = build(mode)
    ids, video = prompt(), frames(6, seed=3)
    T, side = video.shape[0], SIDE[mode]
    with tango.enabled(model, cfg(0.2), record_plans=True, fps=1.0) as handle, llm_inputs(model) as seen:
        out = logits(model, ids, video)
        (rec,) = handle.plans()
        row = handle.report()["samples"][0]
    kept, feats = rec.plan.kept_indices, rec.plan.features
    assert rec.tokens.grid_hw == (side, side) and tuple(rec.tokens.features.shape[:2]) == (T, side * side)
    newline = model.get_model().image_newline
    one_token = MODES[mode]["mm_newline_position"] == "one_token"
    if one_token:
        expected = torch.cat([feats, newline[None]])  # one newline per video, after every kept token
    else:
        rows = kept // side
        parts = []
        for r in torch.unique(rows):  # a newline after each (frame, row) that kept a token
            parts += [feats[rows == r], newline[None]]
        expected = torch.cat(parts)
    assert out.shape[1] == 7 + expected.shape[0]
    emb = seen[0][0]
    assert torch.equal(emb[3:3 + expected.shape[0]], expected.to(emb.dtype))
    assert row["kept_by_strategy"] == kept.numel() and row["visual_tokens_after"] == expected.shape[0]
    assert row["visual_tokens_before"] == T * side * side + (1 if one_token else T * side)
    assert row["pruned"] is True and row["saliency_source"] == "global_query"
    assert math.isclose(row["ratio_kept"], expected.shape[0] / row["visual_tokens_before"])


@pytest.mark.parametrize("mode", ["ov", "video"])
def test_kept_counts_follow_the_plan_with_topk(build, mode):
    """topk keeps max(1, ceil(L * r)) per frame (docs/algorithm.md §4.6): the LLM gets that plus the newlines."""
    model = build(mode)
    ids, video = prompt(), frames(3, seed=4)
    side = SIDE[mode]
    with tango.enabled(model, cfg(0.1, strategy="topk"), record_plans=True, fps=1.0) as handle:
        out = logits(model, ids, video)
        (rec,) = handle.plans()
    per_frame = math.ceil(side * side * 0.1)
    assert rec.plan.kept_indices.numel() == 3 * per_frame
    newlines = 1 if mode == "ov" else torch.unique(rec.plan.kept_indices // side).numel()
    assert out.shape[1] == 7 + 3 * per_frame + newlines


@pytest.mark.parametrize("mode,preset", [("ov", "llava-onevision"), ("video", "llava-video")])
def test_preset_sinks_on_the_matching_grid(build, mode, preset):
    model = build(mode)
    with tango.enabled(model, cfg(0.2), record_plans=True, fps=1.0) as handle:
        logits(model, prompt(), frames(3, seed=5))
        (rec,) = handle.plans()
    assert list(rec.tokens.sink_positions) == tango.get_preset(preset)["sink_positions"]
    assert rec.tokens.features.shape[1] == (196 if mode == "ov" else 169)


def test_explicit_sinks_win_and_must_fit_the_grid(build):
    model = build("video")
    with tango.enabled(model, cfg(0.2, sink_positions=[0, 168]), record_plans=True, fps=1.0) as handle:
        logits(model, prompt(), frames(2, seed=6))
        assert handle.plans()[0].tokens.sink_positions == (0, 168)
    with pytest.raises(ValueError, match="outside the 169-token frame grid"):
        tango.enable(model, cfg(0.2, sink_positions=[169]))


# ----------------------------------------------------------------------------------------------- saliency
def _tower_features(model, video):
    tower = model.get_vision_tower()
    with torch.no_grad():
        out = tower.vision_tower(video, output_hidden_states=True)
    return out.hidden_states


def test_global_query_saliency_is_the_feature_layers_qk(build):
    from tango_plugin.engine.saliency import global_query_saliency

    model = build("ov")
    video = frames(3, seed=7)
    with tango.enabled(model, cfg(0.2), record_plans=True, fps=1.0) as handle:
        logits(model, prompt(), video)
        got = handle.plans()[0].tokens.saliency
    layer = model.get_vision_tower().vision_tower.vision_model.encoder.layers[-1]
    with torch.no_grad():
        hs = layer.layer_norm1(_tower_features(model, video)[-2])
        att = layer.self_attn
        q = att.q_proj(hs).view(3, 729, -1, att.head_dim).transpose(1, 2)
        k = att.k_proj(hs).view(3, 729, -1, att.head_dim).transpose(1, 2)
        want = model.get_2dPool(global_query_saliency(q, k)[..., None]).squeeze(-1)
    assert got.shape == (3, 196) and torch.allclose(got, want, atol=1e-6)


def test_siglip_head_saliency_from_the_full_local_checkpoint(build, siglip_dir):
    from transformers import SiglipVisionModel

    model = build("video")
    video = frames(3, seed=8)
    config = cfg(0.2, saliency_source="siglip_head", siglip_head_path=siglip_dir)
    with tango.enabled(model, config, record_plans=True, fps=1.0) as handle:
        logits(model, prompt(), video)
        got = handle.plans()[0].tokens.saliency
        assert handle.report()["samples"][0]["saliency_source"] == "siglip_head"
    full = SiglipVisionModel.from_pretrained(siglip_dir).vision_model
    with torch.no_grad():
        z = full.post_layernorm(_tower_features(model, video)[-1])  # the layer llava uses, as in the paper
        _, w = full.head.attention(full.head.probe.repeat(3, 1, 1), z, z, need_weights=True)
        want = model.get_2dPool(w[:, 0][..., None]).squeeze(-1)
    assert got.shape == (3, 169) and torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="needs siglip_head_path"):
        tango.enable(model, cfg(0.2, saliency_source="siglip_head"))


@pytest.mark.parametrize("kind,match", [("no_head", "has no attention-pooling head"),
                                        ("wide", "head width 48 does not match the model's vision tower width 32"),
                                        ("missing", "cannot load a SigLIP vision checkpoint")])
def test_bad_siglip_head_checkpoints_are_refused(build, tmp_path, kind, match):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if kind != "missing":
        width = 48 if kind == "wide" else 32
        SiglipVisionModel(SiglipVisionConfig(hidden_size=width, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, image_size=384, patch_size=14,
                                             vision_use_head=kind != "no_head")).save_pretrained(tmp_path)
    model = build("ov")
    with pytest.raises(ValueError, match=match):
        tango.enable(model, cfg(0.2, saliency_source="siglip_head", siglip_head_path=str(tmp_path)))
    assert "_tango_handle" not in model.__dict__


# ----------------------------------------------------------------------------------------------- frame times
def test_frame_times_reach_the_strategy_exactly(build):
    model = build("ov")
    ids, video = prompt(), frames(4, seed=9)
    true = torch.tensor([0.0, 1.0 / 3.0, 2.6, 7.9], dtype=torch.float64)  # e.g. frame indices / fps of a file
    seen = []
    with tango.enabled(model, cfg(0.2), on_plan=lambda rec: seen.append(rec.tokens.timestamps)) as handle:
        model.generate(ids, images=[video], modalities=["video"], max_new_tokens=2, do_sample=False,
                       tango_video_timestamps=[true])
        logits(model, ids, video, tango_video_timestamps=true.tolist())
        row = handle.report()["samples"][0]
        assert row["pruned"] is True
        # the report states the times the engine used and where they came from, as every adapter's does
        assert row["video_timestamps"] == [true.tolist()]
        assert row["timestamps_source"] == "tango_video_timestamps (per call)"
    assert len(seen) == 2 and all(torch.equal(t, true) for t in seen)
    print("frame times the engine got:", [t.tolist() for t in seen], "true:", true.tolist())


def test_frame_times_from_enable_options(build):
    model = build("video")
    ids, video = prompt(), frames(4, seed=10)
    seen = []
    with tango.enabled(model, cfg(0.2), fps=2.0, on_plan=lambda rec: seen.append(rec.tokens.timestamps)):
        logits(model, ids, video)
    given = torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64)
    record = lambda rec: seen.append(rec.tokens.timestamps)  # noqa: E731
    with tango.enabled(model, cfg(0.2), video_timestamps=given, on_plan=record):
        logits(model, ids, video)
        with pytest.raises(ValueError, match="has 3 values; the video has 4 frames"):
            logits(model, ids, video, tango_video_timestamps=[[0.0, 1.0, 2.0]])
    assert torch.equal(seen[0], torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64))
    assert torch.equal(seen[1], given)


def test_missing_frame_times_warn_once_and_the_report_says_so(build):
    model = build("ov")
    ids, video = prompt(), frames(3, seed=11)
    seen = []
    with tango.enabled(model, cfg(0.2), on_plan=lambda rec: seen.append(rec.tokens.timestamps)) as handle:
        with pytest.warns(UserWarning, match="no frame times"):
            logits(model, ids, video)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            logits(model, ids, video)  # once per handle
        row = handle.report()["samples"][0]
        assert "no frame times given" in row["note"]
        assert row["video_timestamps"] == [None] and row["timestamps_source"] == "none: frame index"
    assert seen == [None, None]


# ----------------------------------------------------------------------------------------------- refused modes
@pytest.mark.parametrize("change,match", [
    ({"mm_newline_position": "frame"}, "mm_newline_position='frame' is not supported"),
    ({"add_faster_video": True}, "add_faster_video=True"),
    ({"mm_spatial_pool_mode": "max"}, "mm_spatial_pool_mode='max' is not supported"),
])
def test_unsupported_modes_are_refused_at_enable(build, change, match):
    model = build("video")
    for key, value in change.items():
        setattr(model.config, key, value)
    with pytest.raises(ValueError, match=match):
        tango.enable(model, cfg())
    assert "_tango_handle" not in model.__dict__ and not any(m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------------------------- intra-LLM stage
@contextlib.contextmanager
def layer_inputs(model):
    """Sequence length each decoder layer gets in the prefill (hooks registered after the stage's, so they see what
    the layer really runs on)."""
    seen = {}

    def hook(i):
        def run(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] > 1:
                seen.setdefault(i, hidden.shape[1])
        return run

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(model.get_model().layers)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("mode,attn", [("video", "eager"), ("ov", "sdpa")])
def test_intra_llm_stage_drops_the_expected_tokens_at_the_layer(build, mode, attn):
    model = build(mode, attn_implementation=attn)
    ids, video = prompt(), frames(4, seed=20)
    config = cfg(0.25, intra_llm_layer=1, intra_llm_ratio=0.5)
    with tango.enabled(model, config, fps=1.0) as handle, layer_inputs(model) as seen:
        out = model.generate(ids, images=[video], modalities=["video"], max_new_tokens=4, do_sample=False)
        row = handle.report()["samples"][0]
    after = row["visual_tokens_after"]  # video tokens (newlines included) the LLM gets from the pre-LLM stage
    assert row["pruned"] and row["intra_llm_tokens_after"] == round(after * 0.5)
    assert seen[0] == 7 + after  # layer 0 sees the whole (Tango-pruned) prompt
    assert seen[1] == 7 + round(after * 0.5)  # layer 1 (= intra_llm_layer) runs on the reduced one
    assert out.shape == (1, 4)


def test_intra_llm_ratio_one_equals_no_stage(build):
    model = build("video")
    ids, video = prompt(), frames(4, seed=21)
    kw = dict(images=[video], modalities=["video"], max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
              output_logits=True)
    with tango.enabled(model, cfg(0.25), fps=1.0):
        ref = model.generate(ids, **kw)
    with tango.enabled(model, cfg(0.25, intra_llm_layer=1, intra_llm_ratio=1.0), fps=1.0) as handle:
        out = model.generate(ids, **kw)
        row = handle.report()["samples"][0]
    assert row["intra_llm_tokens_after"] == row["visual_tokens_after"]
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_intra_llm_stage_changes_the_answer_path_and_batches(build):
    model = build("video")
    p1, p2 = prompt(3, 4, seed=1), prompt(5, 2, seed=2)
    v1, v2 = frames(4, seed=22), frames(3, seed=23)
    ids, mask = _pad_left([p1, p2])
    config = cfg(0.25, intra_llm_layer=1, intra_llm_ratio=0.5)
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with tango.enabled(model, cfg(0.25), fps=1.0):
        plain = model.generate(p1, images=[v1], modalities=["video"], **kw)
    with tango.enabled(model, config, fps=1.0) as handle:
        single = model.generate(p1, images=[v1], modalities=["video"], **kw)
        out = model.generate(ids, attention_mask=mask, images=[v1, v2], modalities=["video", "video"],
                             max_new_tokens=4, do_sample=False)
        rows = handle.report()["samples"]
    assert not torch.allclose(single.logits[0], plain.logits[0])  # the stage really acted on the prefill
    assert out.shape == (2, 4)
    for row in rows:
        assert row["pruned"] and row["intra_llm_tokens_after"] == round(row["visual_tokens_after"] * 0.5)


def test_intra_llm_stage_is_generate_only_and_checked_at_enable(build):
    model = build("video")
    ids, video = prompt(), frames(3, seed=24)
    with tango.enabled(model, cfg(0.25), fps=1.0):
        ref = logits(model, ids, video)
    with tango.enabled(model, cfg(0.25, intra_llm_layer=1), fps=1.0):
        with pytest.warns(UserWarning, match="applied in generate only"):
            out = logits(model, ids, video)
    assert torch.equal(out, ref)  # forward runs without the stage
    with pytest.raises(ValueError, match="intra_llm_layer=2 does not fit this model"):
        tango.enable(model, cfg(0.2, intra_llm_layer=2))
    model.config._attn_implementation_internal = "flash_attention_2"  # no validation: flash-attn is not needed
    with pytest.raises(ValueError, match="needs the language model on one of"):
        tango.enable(model, cfg(0.2, intra_llm_layer=1))
    assert "_tango_handle" not in model.__dict__


def test_intra_llm_stage_skips_calls_with_still_images(build):
    model = build("ov")
    image, video = frames(1, seed=25)[0], frames(3, seed=26)
    ids, mask = _pad_left([prompt(seed=3), prompt(seed=4)])
    with tango.enabled(model, cfg(0.2, intra_llm_layer=1), fps=1.0) as handle:
        with pytest.warns(UserWarning, match="still images next to its videos"):
            model.generate(ids, attention_mask=mask, images=[video, image], modalities=["video", "image"],
                           max_new_tokens=2, do_sample=False)
        assert handle.report()["samples"][0]["intra_llm_tokens_after"] is None


def test_mode_changed_after_enable_passes_through_with_a_reason(build):
    model = build("ov")
    ids, video = prompt(), frames(2, seed=12)
    with tango.enabled(model, cfg(0.2), fps=1.0) as handle:
        model.config.mm_newline_position = "frame"
        with pytest.warns(UserWarning, match="video passed through unpruned: mm_newline_position='frame'"):
            out = logits(model, ids, video)
        row = handle.report()["samples"][0]
    ref = logits(model, ids, video)
    assert torch.equal(out, ref)
    assert row["pruned"] is False and "mm_newline_position='frame'" in row["note"]


# ----------------------------------------------------------------------------------------- batches, images, generate
def _pad_left(rows, pad=0):
    n = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - r.shape[1]:] = r[0]
        mask[i, n - r.shape[1]:] = 1
    return ids, mask


@pytest.mark.parametrize("mode", ["ov", "video"])
def test_batch_of_two_equals_singles(build, mode):
    model = build(mode)
    p1, p2 = prompt(3, 4, seed=1), prompt(5, 2, seed=2)
    v1, v2 = frames(4, seed=13), frames(3, seed=14)
    t1 = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64)
    t2 = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64)
    singles, plans = [], []
    with tango.enabled(model, cfg(0.2), on_plan=plans.append) as handle:
        for p, v, t in ((p1, v1, t1), (p2, v2, t2)):
            singles.append(model.generate(p, images=[v], modalities=["video"], max_new_tokens=5, do_sample=False,
                                          tango_video_timestamps=[t]))
        single_rows = [handle.report()["samples"][0]]
        ids, mask = _pad_left([p1, p2])
        batched = model.generate(ids, attention_mask=mask, images=[v1, v2], modalities=["video", "video"],
                                 max_new_tokens=5, do_sample=False, tango_video_timestamps=[t1, t2])
        rows = handle.report()["samples"]
    assert torch.equal(batched, torch.cat(singles))
    assert [p.row for p in plans[2:]] == [0, 1] and [p.index for p in plans[2:]] == [0, 1]
    for single, both in zip(plans[:2], plans[2:]):
        assert torch.equal(single.plan.kept_indices, both.plan.kept_indices)
        assert torch.equal(single.tokens.timestamps, both.tokens.timestamps)
        assert torch.allclose(single.plan.features, both.plan.features, atol=1e-5)
    assert [r["sample"] for r in rows] == [0, 1] and all(r["pruned"] for r in rows)
    assert rows[1]["visual_tokens_after"] == single_rows[0]["visual_tokens_after"]


def test_still_image_next_to_a_video_passes_through(build):
    model = build("ov")
    image = frames(1, seed=15)[0]  # one 3-D image
    video = frames(3, seed=16)
    ids, mask = _pad_left([prompt(seed=3), prompt(seed=4)])
    with tango.enabled(model, cfg(0.2, prune_images=True), record_plans=True, fps=1.0) as handle, \
            llm_inputs(model) as seen:
        with torch.no_grad(), pytest.warns(UserWarning, match="prunes videos only"):
            model(input_ids=ids, attention_mask=mask, images=[video, image], modalities=["video", "image"])
        rows = handle.report()["samples"]
        assert len(handle.plans()) == 1
    assert rows[0]["pruned"] and rows[0]["videos"] == 1 and rows[0]["video_indices"] == [0]
    assert rows[1]["videos"] == 0 and rows[1]["note"] == "no video in this row" and rows[1]["video_indices"] == []
    # the image row holds the unpruned image: 729 tokens + llava's newline, and its text
    assert int(mask[1].sum()) - 1 + 730 <= seen[0].shape[1]


def test_generate_prunes_the_prefill_and_decodes(build):
    model = build("video")
    ids, video = prompt(), frames(4, seed=17)
    with tango.enabled(model, cfg(0.15), fps=1.0) as handle:
        out = model.generate(ids, images=[video], modalities=["video"], max_new_tokens=6, do_sample=False)
        report = handle.report()
    assert out.shape == (1, 6)
    row = report["samples"][0]
    assert row["pruned"] and row["visual_tokens_after"] < row["visual_tokens_before"]
    assert report["pruned_calls"] == 1  # the decode steps did not overwrite the prefill's rows
    with tango.enabled(model, cfg(0.15), fps=1.0) as handle:
        model.generate(ids[ids != IMAGE_TOKEN_INDEX][None], max_new_tokens=2, do_sample=False)  # text only
        assert handle.report()["samples"][0]["note"] == "no video in this call"


def test_the_call_lmms_eval_llava_vid_makes(build):
    """lmms-eval's `llava_vid` calls `generate(inputs=..., images=[video], attention_mask=..., modalities="video")`."""
    model = build("video")
    ids, video = prompt(), frames(3, seed=18)
    true = [0.0, 1.25, 2.5]
    seen = []
    with tango.enabled(model, cfg(0.2), on_plan=lambda rec: seen.append(rec.tokens.timestamps)) as handle:
        out = model.generate(inputs=ids, images=[video.half().float()], attention_mask=torch.ones_like(ids),
                             modalities="video", use_cache=True, do_sample=False, num_beams=1, max_new_tokens=3,
                             tango_video_timestamps=true)
        row = handle.report()["samples"][0]
    assert out.shape == (1, 3) and row["pruned"] and row["visual_tokens_after"] < row["visual_tokens_before"]
    assert seen[0].tolist() == true


@pytest.mark.parametrize("source", ["global_query", "attention_received"])
def test_saliency_reads_the_towers_own_q_and_k(build, source, monkeypatch):
    """The hooks take the attention's q_proj / k_proj outputs (no second projection): the scores equal those of q
    and k recomputed with the layer's own projections on the layer's input, bit for bit."""
    import tango_plugin.model_zoo.vision_towers as towers

    from tango_plugin.engine.saliency import score

    scored = []
    monkeypatch.setattr(towers, "score", lambda *a, **k: scored.append(score(*a, **k)) or scored[-1])
    model = build("ov")
    attn = model.get_vision_tower().vision_tower.vision_model.encoder.layers[-1].self_attn
    seen = []
    hook = attn.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True)
    try:
        with tango.enabled(model, cfg(0.25, saliency_source=source), fps=1.0):
            logits(model, prompt(), frames(3, seed=21))
    finally:
        hook.remove()
    (hs,) = seen
    with torch.no_grad():
        assert len(scored) == 1 and torch.equal(scored[0], score(source, *towers.project_qk(attn, hs)))
