"""The intra-LLM stage (`TangoConfig.intra_llm_layer`): config checks, exactness against a layer-by-layer
recomputation written here, batch == single, remove(), reports, errors at enable()."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from adapter_testers import gen, hooks_of

import tango_plugin as tango
from tango_plugin import testing as tiny
from tango_plugin.engine.intra_llm import intra_llm_merge

pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. preset sink positions")

LAYERS = 4
K = 2
VARIANTS = {
    "llava_onevision": ("llava_onevision", {}),
    "llava_onevision[average,grid]": ("llava_onevision", {"pool_mode": "average", "newline": "grid"}),
    "qwen2_vl": ("qwen2_vl", {}),
    "qwen2_5_vl": ("qwen2_5_vl", {}),
    "qwen3_vl": ("qwen3_vl", {}),
}


def _style(model_type: str) -> str:
    return "llava" if model_type == "llava_onevision" else "qwen"


def _build(model_type: str, layers: int = LAYERS, **vision):
    tok = tiny.build_tokenizer(_style(model_type))
    return tiny.build_model(model_type, tok, text_overrides={"num_hidden_layers": layers}, **vision), tok


def _cfg(r: float = 0.5, k: int = K, ratio: float = 0.5, **kw) -> tango.TangoConfig:
    return tango.TangoConfig(retention_ratio=r, intra_llm_layer=k, intra_llm_ratio=ratio, **kw)


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [("intra_llm_layer", 0), ("intra_llm_layer", -3), ("intra_llm_layer", 1.5),
                                         ("intra_llm_layer", True), ("intra_llm_ratio", 0.0),
                                         ("intra_llm_ratio", 1.5)])
def test_bad_intra_llm_fields_name_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        tango.TangoConfig(**{field: value})


@pytest.mark.parametrize("target,expected", [(0.1, "0.121739"), (0.15, "0.182609"), (0.2, "0.243478")])
def test_pre_llm_retention_reproduces_the_run_scripts(target, expected):
    # docs/algorithm.md §6: the run scripts print 28 r / 23 with six significant digits
    assert f"{tango.pre_llm_retention(target, 28, 18, 0.5):.6g}" == expected
    assert tango.pre_llm_retention(0.9, 28, 18, 0.5) == 1.0  # capped at 1


def test_pre_llm_retention_bad_layer():
    with pytest.raises(ValueError, match="intra_llm_layer=28"):
        tango.pre_llm_retention(0.1, 28, 28)


def test_llava_video_preset_carries_the_intra_llm_stage():
    cfg = tango.TangoConfig.from_preset("llava-video")
    assert (cfg.intra_llm_layer, cfg.intra_llm_ratio) == (18, 0.5)
    assert f"{tango.pre_llm_retention(0.1, 28, cfg.intra_llm_layer, 0.5):.6g}" == \
        f"{cfg.retention_ratio:.6g}"


# ----------------------------------------------------------------------------------------------- enable() errors
def _nothing_left(model) -> bool:
    text_cfg = model.config.get_text_config()
    layers = model.model.language_model.layers
    return all(layer.self_attn.config is text_cfg for layer in layers) and \
        all(len(layer._forward_pre_hooks) == 0 for layer in layers)


@pytest.mark.parametrize("k", [2, 5])
def test_layer_beyond_depth_fails_at_enable(k):
    model, _ = _build("qwen2_vl", layers=2)
    with pytest.raises(ValueError, match=rf"intra_llm_layer={k} .* 2 decoder layers.* 1\.\.1"):
        tango.enable(model, _cfg(k=k))
    assert _nothing_left(model) and "_tango_handle" not in model.__dict__


def test_llava_video_preset_on_a_shallow_model_fails_at_enable():
    model, _ = _build("llava_onevision", layers=2)
    with pytest.raises(ValueError, match="intra_llm_layer=18"):
        tango.enable(model, tango.TangoConfig.from_preset("llava-video"), pool_mode="average", newline="grid")


def test_qwen3_layer_inside_the_deepstack_fails_at_enable():
    model, _ = _build("qwen3_vl", deepstack_visual_indexes=[0, 1])
    with pytest.raises(ValueError, match=r"intra_llm_layer=1 .* allowed values are 2\.\.3"):
        tango.enable(model, _cfg(k=1))
    tango.enable(model, _cfg(k=2)).remove()


def test_unsupported_attention_implementation_fails_at_enable():
    model, _ = _build("qwen2_vl")
    model.config.get_text_config()._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2'"):
        tango.enable(model, _cfg())
    assert _nothing_left(model)


# ----------------------------------------------------------------------------------------------- exactness
class _Capture:
    """Record the inner model's input_ids and the language model's inputs on every call."""

    def __init__(self, model):
        self.calls, ids = [], []
        self.hooks = [
            model.model.register_forward_pre_hook(lambda m, a, kw: ids.append(kw.get("input_ids")), with_kwargs=True),
            model.model.language_model.register_forward_pre_hook(self._llm, with_kwargs=True)]
        self.ids = ids

    def _llm(self, module, args, kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("inputs_embeds", "position_ids", "deepstack_visual_embeds",
                                                      "visual_pos_masks")})
        self.calls[-1]["input_ids"] = self.ids[-1]

    def remove(self):
        for h in self.hooks:
            h.remove()


def _split_positions(pos, length, qwen):
    """(rope positions, text positions) as the text model derives them; None -> 0..length-1."""
    if pos is None:
        pos = torch.arange(length)[None]
    if not qwen:
        return pos, pos
    if pos.ndim == 2:
        pos = pos[None].expand(4, *pos.shape)
    return (pos[1:], pos[0]) if pos.shape[0] == 4 else (pos, None)


def _last_row_scores(layer, h, pe, L):
    """Layer `layer`'s attention of the prompt's last token to every prompt token, from a full causal matrix."""
    attn = layer.self_attn
    x = layer.input_layernorm(h[:, :L])
    shape = (1, L, -1, attn.head_dim)
    q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, k = rope(q, k, pe[0][..., :L, :], pe[1][..., :L, :])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = q @ k.transpose(-1, -2) * attn.scaling
    logits = logits.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1)[0, :, -1].mean(0)


@torch.no_grad()
def _manual_logits(model, calls, spans, ratio):
    """Teacher-forced recomputation: layers < K on prompt + generated tokens, the reduction by hand before layer K,
    layers >= K on the reduced prompt + generated tokens. Returns logits at the positions that predicted each token."""
    lm = model.model.language_model
    qwen = model.config.model_type != "llava_onevision"
    x = torch.cat([c["inputs_embeds"] for c in calls], dim=1)
    L = calls[0]["inputs_embeds"].shape[1]
    if calls[0]["position_ids"] is None:
        pos = None
    else:
        pos = torch.cat([c["position_ids"] for c in calls], dim=-1)
    rope_pos, text_pos = _split_positions(pos, x.shape[1], qwen)
    pe = lm.rotary_emb(x, rope_pos)
    deep, vis = calls[0]["deepstack_visual_embeds"], calls[0]["visual_pos_masks"]
    h = x
    for i in range(K):
        if i == K - 1:
            scores = _last_row_scores(lm.layers[i], h, pe, L)
        h = lm.layers[i](h, attention_mask=None, position_embeddings=pe, position_ids=text_pos)
        if deep is not None and i < len(deep):
            prompt = h[:, :L].clone()
            prompt[vis] = prompt[vis] + deep[i]
            h = torch.cat([prompt, h[:, L:]], dim=1)
    dropped = torch.zeros(L, dtype=torch.bool)
    row = h[0].clone()
    for span in spans:
        kept, merged = intra_llm_merge(h[0, span], scores[span], ratio)
        dropped[span] = True
        dropped[span[kept]] = False
        row[span[kept]] = merged
    keep = torch.cat([(~dropped).nonzero(as_tuple=True)[0], torch.arange(L, x.shape[1])])
    h = row[keep][None]
    pe = tuple(t[..., keep, :] for t in pe)
    text_pos = None if text_pos is None else text_pos[..., keep]
    for layer in lm.layers[K:]:
        h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=text_pos)
    logits = model.lm_head(lm.norm(h))[0]
    Lr = int((~dropped).sum())
    return logits[Lr - 1:], Lr


@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.no_grad()
def test_generate_equals_layer_by_layer_recomputation(name):
    model_type, options = VARIANTS[name]
    model, tok = _build(model_type)
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=3)]], ["what happens in this video?"])
    with tango.enabled(model, _cfg(0.5), **options) as h:
        capture = _Capture(model)
        out = gen(model, inputs, n=3, return_dict_in_generate=True, output_logits=True)
        capture.remove()
        calls = capture.calls
        row = h.report()["samples"][0]
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.5), **options):
        no_intra = gen(model, inputs, n=1, return_dict_in_generate=True, output_logits=True)
    # the video's tokens in the shortened prompt (newline tokens included), from the ids the inner model received
    short_ids = calls[0]["input_ids"][0]
    short_len = short_ids.numel()
    n_block = row["visual_tokens_after"]
    spans = [(short_ids == model.config.video_token_id).nonzero(as_tuple=True)[0]]
    assert spans[0].numel() == n_block
    expected, reduced_len = _manual_logits(model, calls, spans, 0.5)
    assert row["intra_llm_tokens_after"] == round(n_block * 0.5)
    assert reduced_len == short_len - (n_block - round(n_block * 0.5))
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits[0], expected[step], rtol=1e-4, atol=1e-4)
    # and the stage changed something: the first-token logits differ from Tango without it
    assert not torch.allclose(out.logits[0], no_intra.logits[0], atol=1e-3)


# ----------------------------------------------------------------------------------------------- batch == single
@pytest.mark.parametrize("name,implementation", [("llava_onevision", "sdpa"), ("qwen2_vl", "sdpa"),
                                                 ("qwen2_vl", "eager"), ("qwen3_vl", "sdpa"),
                                                 ("llava_onevision[average,grid]", "sdpa")])
@torch.no_grad()
def test_batch_equals_single_samples(name, implementation):
    model_type, options = VARIANTS[name]
    model, tok = _build(model_type)
    model.config._attn_implementation = implementation
    frames = (8, 8) if model_type == "llava_onevision" else (8, 6)
    media = [[tiny.VideoSpec(frames[0], seed=1)], [tiny.VideoSpec(frames[1], seed=2)], []]
    prompts = ["what happens?", "how many people are there? describe the scene in detail.", "just text here"]
    batch = tiny.video_inputs(model, tok, media, prompts)
    with tango.enabled(model, _cfg(0.5), **options) as h:
        out = gen(model, batch, n=4, return_dict_in_generate=True, output_logits=True)
        rows = h.report()["samples"]
        singles = []
        for m, p in zip(media, prompts):
            one = tiny.video_inputs(model, tok, [m], [p])
            singles.append((one, gen(model, one, n=4, return_dict_in_generate=True, output_logits=True),
                            h.report()["samples"][0]))
    L = batch["input_ids"].shape[1]
    assert rows[0]["intra_llm_tokens_after"] != rows[1]["intra_llm_tokens_after"] or \
        rows[0]["visual_tokens_after"] != rows[1]["visual_tokens_after"] or frames[0] == frames[1]
    for b, (one, single, row) in enumerate(singles):
        if b < 2:
            assert rows[b]["intra_llm_tokens_after"] == row["intra_llm_tokens_after"] > 0
        assert torch.equal(out.sequences[b, L:], single.sequences[0, one["input_ids"].shape[1]:])
        for step_b, step_1 in zip(out.logits, single.logits):
            torch.testing.assert_close(step_b[b], step_1[0], rtol=1e-4, atol=1e-4)
    assert rows[2]["intra_llm_tokens_after"] == 0  # the text-only row has no video to reduce


# ----------------------------------------------------------------------------------------------- lifecycle
@torch.no_grad()
def test_remove_restores_bit_equal_and_detaches_hooks():
    model, tok = _build("qwen2_vl")
    twin, _ = _build("qwen2_vl")
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["what is going on?"])
    hooks_before = hooks_of(model)
    h = tango.enable(model, _cfg(0.5))
    assert not _nothing_left(model)  # scoring config and reduction hooks are attached while enabled
    gen(model, inputs)
    h.remove()
    assert _nothing_left(model)
    assert hooks_of(model) == hooks_of(twin) or hooks_of(model) == hooks_before
    assert torch.equal(model(**inputs).logits, twin(**inputs).logits)
    assert torch.equal(gen(model, inputs), gen(twin, inputs))


@torch.no_grad()
def test_forward_runs_without_the_stage_and_says_so():
    model, tok = _build("llava_onevision")
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["what is going on?"])
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.5)):
        plain = model(**inputs).logits
    with tango.enabled(model, _cfg(0.5)) as h:
        with pytest.warns(UserWarning, match="intra_llm_layer is applied in generate only"):
            logits = model(**inputs).logits
        assert h.report()["samples"][0]["intra_llm_tokens_after"] is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(**inputs)  # warned once per handle
    assert torch.equal(logits, plain)


@torch.no_grad()
def test_repeated_generate_calls_are_independent():
    model, tok = _build("qwen2_vl")
    a = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["first question"])
    b = tiny.video_inputs(model, tok, [[tiny.VideoSpec(6, seed=5)]], ["a second, longer question about it"])
    with tango.enabled(model, _cfg(0.5)):
        first = gen(model, a)
        gen(model, b)
        gen(model, tiny.video_inputs(model, tok, [[]], ["no video at all"]))
        again = gen(model, a)
    assert torch.equal(first, again)


@torch.no_grad()
def test_intra_llm_ratio_one_keeps_every_token_and_changes_nothing():
    # ratio 1.0: nothing is dropped and the merge is a no-op, so the result equals Tango without the stage
    model, tok = _build("qwen2_vl")
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["what is going on?"])
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.5)):
        ref = gen(model, inputs, return_dict_in_generate=True, output_logits=True)
    with tango.enabled(model, _cfg(0.5, ratio=1.0)) as h:
        out = gen(model, inputs, return_dict_in_generate=True, output_logits=True)
        row = h.report()["samples"][0]
    assert row["intra_llm_tokens_after"] == row["visual_tokens_after"]
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_peft_lora_generate_with_the_stage():
    peft = pytest.importorskip("peft")
    model, tok = _build("llava_onevision")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["what is going on?"])
    with torch.no_grad(), tango.enabled(lora, _cfg(0.5)) as h:
        out = lora.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert h.report()["samples"][0]["intra_llm_tokens_after"] == round(
            h.report()["samples"][0]["visual_tokens_after"] * 0.5)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


# ----------------------------------------------------------------------------------------------- mask building
def _stage_with_reduction(implementation="sdpa"):
    from tango_plugin.integration.intra_llm import IntraLLMStage, Reduction

    stage = IntraLLMStage(layers=[], first_reduced_layer=1, ratio=0.5)
    stage._implementation = implementation
    keep = torch.tensor([[0, 0, 2, 4], [0, 1, 3, 4]])  # row 0 kept 3 of 5 tokens (one padding slot), row 1 kept 4
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    stage.reduction = Reduction(keep=keep, valid=valid, full_length=5, hidden=torch.zeros(2, 4, 8), mask=None)
    return stage, keep, valid


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_masks_without_a_given_mask_equal_masks_from_an_all_visible_one(implementation):
    # the decoder hands layers None when nothing is padded; our masks must then equal those built from an explicit
    # causal (prefill) / all-visible (decode) mask, with the padding slots we add masked out
    stage, keep, valid = _stage_with_reduction(implementation)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    assert torch.equal(stage._prefill_mask(None, keep, valid, 5, torch.float32),
                       stage._as_format(stage._prefill_mask(causal, keep, valid, 5, torch.float32),
                                        stage._mask_format(None, torch.float32))
                       if implementation == "eager" else stage._prefill_mask(causal, keep, valid, 5, torch.float32))
    stage._decoded = 2  # second decode step: the reduced cache holds 4 + 2 entries
    hidden = torch.zeros(2, 1, 8)
    from_none = stage._decode_mask(None, hidden)
    visible = torch.ones(2, 1, 1, 5 + 2, dtype=torch.bool)
    from_given = stage._decode_mask(visible, hidden)
    expected = torch.tensor([[False, True, True, True, True, True], [True] * 6])[:, None, None]
    assert torch.equal(from_given, expected)
    allowed = from_none if from_none.dtype == torch.bool else from_none == 0
    assert torch.equal(allowed, expected)


def test_prefill_mask_padding_rows_attend_to_themselves_only():
    stage, keep, valid = _stage_with_reduction()
    mask = stage._prefill_mask(None, keep, valid, 5, torch.float32)[:, 0]
    assert mask[0, 0].tolist() == [True, False, False, False]  # the added slot: itself only, so no NaN
    assert mask[0, 1].tolist() == [False, True, False, False]  # real tokens never see it
    assert torch.equal(mask[1], torch.ones(4, 4, dtype=torch.bool).tril())


@torch.no_grad()
def test_static_cache_runs_without_the_stage_and_says_so():
    model, tok = _build("qwen2_vl")
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["what is going on?"])
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.5)):
        ref = gen(model, inputs, cache_implementation="static")
    with tango.enabled(model, _cfg(0.5)) as h:
        with pytest.warns(UserWarning, match="needs a dynamic cache.*'static'"):
            out = gen(model, inputs, cache_implementation="static")
        assert h.report()["samples"][0]["intra_llm_tokens_after"] is None
    assert torch.equal(out, ref)


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_vl"])
@torch.no_grad()
def test_beam_search_batch_equals_single_samples(model_type):
    # generate repeats each prompt once per beam; every copy is reduced like its prompt
    model, tok = _build(model_type)
    media = [[tiny.VideoSpec(8, seed=1)], [tiny.VideoSpec(8, seed=2)]]
    prompts = ["what is it?", "a much longer question about the whole video"]
    batch = tiny.video_inputs(model, tok, media, prompts)
    with tango.enabled(model, _cfg(0.5)) as h:
        out = gen(model, batch, n=4, num_beams=2)
        rows = h.report()["samples"]
        singles = [(gen(model, one, n=4, num_beams=2), one, h.report()["samples"][0]) for one in
                   (tiny.video_inputs(model, tok, [m], [p]) for m, p in zip(media, prompts))]
    L = batch["input_ids"].shape[1]
    for b, (single, one, row) in enumerate(singles):
        assert rows[b]["intra_llm_tokens_after"] == row["intra_llm_tokens_after"] > 0
        assert torch.equal(out[b, L:], single[0, one["input_ids"].shape[1]:])


@torch.no_grad()
def test_beam_search_at_retention_one_without_the_stage_equals_unpruned():
    model, tok = _build("qwen2_vl")
    batch = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=1)], [tiny.VideoSpec(6, seed=2)]],
                              ["what is it?", "a much longer question about the whole video"])
    ref = gen(model, batch, n=4, num_beams=2)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=1.0)):
        assert torch.equal(gen(model, batch, n=4, num_beams=2), ref)


@torch.no_grad()
def test_switching_attention_after_enable_is_followed_or_refused():
    model, tok = _build("qwen2_vl")
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8, seed=0)]], ["what is going on?"])
    with tango.enabled(model, _cfg(0.5)):
        sdpa = gen(model, inputs, return_dict_in_generate=True, output_logits=True)
    with tango.enabled(model, _cfg(0.5)) as h:
        model.config._attn_implementation = "eager"  # the scoring layer follows the model's current choice
        eager = gen(model, inputs, return_dict_in_generate=True, output_logits=True)
        assert torch.equal(eager.sequences, sdpa.sequences)
        torch.testing.assert_close(eager.logits[0], sdpa.logits[0], rtol=1e-4, atol=1e-4)
        model.config.get_text_config()._attn_implementation_internal = "flash_attention_2"
        with pytest.warns(UserWarning, match="switched to another implementation"):
            with pytest.raises((ImportError, ValueError, RuntimeError, KeyError)):  # no flash-attn here: HF fails
                gen(model, inputs)
        assert h.report()["samples"][0]["intra_llm_tokens_after"] is None
