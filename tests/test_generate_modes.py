"""Every generate mode on every registered adapter: exactly the unpruned model at retention 1.0, the documented
behaviour below it (README "Generate modes"). Each test names the bug it guards against (issue 9)."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from adapter_testers import TESTERS

import tango_plugin as tango
from tango_plugin import testing as tiny

pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. (preset sink positions|no video timestamps|Qwen3-VL)")

NAMES = sorted(TESTERS)
QWEN = [n for n in NAMES if n.startswith("qwen")]


def cfg(r: float = 0.25, **kw) -> tango.TangoConfig:
    return tango.TangoConfig(retention_ratio=r, **kw)


def _pair(t):
    """The two-video batch of the tester: different videos, different prompt lengths (left padded)."""
    model = t.model()
    media = [[tiny.VideoSpec(t.batch_frames[0], seed=1)], [tiny.VideoSpec(t.batch_frames[1], seed=2)]]
    return model, media, ["what happens?", "describe the scene in detail please."]


def _greedy(model, inputs, n=4, **kw):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


# ----------------------------------------------------------------------------------------------- sampling, beams
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_num_return_sequences_sampling(name):
    """Bug 2: the B-row prompt was joined to the B x n-row output."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    L = inputs["input_ids"].shape[1]

    def sample():
        torch.manual_seed(0)
        return model.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=2)

    ref = sample()
    with tango.enabled(model, cfg(1.0), **t.options):
        same = sample()
    with tango.enabled(model, cfg(0.25), **t.options):
        pruned = sample()
    if t.matches_stock:  # (LLaVA-Video options are something the stock HF class cannot express)
        assert torch.equal(same, ref)
    assert pruned.shape == (2, L + 3) and torch.equal(pruned[:, :L], inputs["input_ids"].expand(2, -1))


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_beam_search_batch_of_different_videos_equals_single_samples(name):
    """Bug 7: generate's expansion gave LLaVA-OV's beam rows the other sample's video ([A, B, A, B])."""
    t = TESTERS[name]
    model, media, prompts = _pair(t)
    batch = t.inputs(model, media, prompts)
    L = batch["input_ids"].shape[1]
    kw = dict(max_new_tokens=3, num_beams=2, do_sample=False, return_dict_in_generate=True, output_scores=True)
    ref = model.generate(**batch, **kw)
    with tango.enabled(model, cfg(1.0), **t.options):
        same = model.generate(**batch, **kw)
    if t.matches_stock:
        assert torch.equal(same.sequences, ref.sequences)
        torch.testing.assert_close(same.sequences_scores, ref.sequences_scores)
    with tango.enabled(model, cfg(0.25), **t.options):
        out = model.generate(**batch, **kw)
        singles = [model.generate(**t.inputs(model, [m], [p]), **kw) for m, p in zip(media, prompts)]
    for b, single in enumerate(singles):
        n = single.sequences.shape[1] - 3
        assert torch.equal(out.sequences[b, L:], single.sequences[0, n:]), f"row {b} decoded another video"
        torch.testing.assert_close(out.sequences_scores[b], single.sequences_scores[0], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- assisted decoding
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_assisted_decoding_with_an_assistant_model_is_exact(name):
    """Bug 3: the spliced features carried autograd history that the candidate generator could not deep-copy."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    assistant = t.fresh_model(1)
    with tango.enabled(model, cfg(1.0), **t.options):
        same = _greedy(model, inputs, assistant_model=assistant)
    if t.matches_stock:
        assert torch.equal(same, _greedy(model, inputs))
    with tango.enabled(model, cfg(0.25), **t.options):
        plain = _greedy(model, inputs)
        assisted = _greedy(model, inputs, assistant_model=assistant)
    assert torch.equal(assisted, plain)  # assisted greedy decoding gives the model's own greedy tokens


def _outcome(fn):
    try:
        return fn()
    except ValueError as exc:  # transformers' own error, compared by type and first clause
        return type(exc), str(exc).split(",")[0]


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_prompt_lookup_behaves_as_without_the_plugin(name):
    """Prompt-lookup decoding of a video prompt fails in transformers itself (its candidates copy video placeholder
    ids out of the prompt); with the plugin at 1.0 the outcome is exactly the stock one, and pruning adds no error
    of its own (the features carry no autograd history)."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    stock = _outcome(lambda: _greedy(model, inputs, prompt_lookup_num_tokens=2))
    with tango.enabled(model, cfg(1.0), **t.options):
        same = _outcome(lambda: _greedy(model, inputs, prompt_lookup_num_tokens=2))
    if isinstance(stock, torch.Tensor):
        assert torch.equal(same, stock) or not t.matches_stock
    else:
        assert same == stock
    with tango.enabled(model, cfg(0.25), **t.options):
        pruned = _outcome(lambda: _greedy(model, inputs, prompt_lookup_num_tokens=2))
    assert isinstance(pruned, torch.Tensor) or pruned[1] == "Video features and video tokens do not match"


# ----------------------------------------------------------------------------------------------- compile, caches
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_compiled_forward_fullgraph_never_recompiles(name):
    """Bug 1: a Python counter incremented in the patched forward made every decode step recompile."""
    import torch._dynamo

    t = TESTERS[name]
    model = t.fresh_model()
    inputs = t.single(model)
    with tango.enabled(model, cfg(0.25), **t.options) as h:
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
        cache, last = out.past_key_values, out.sequences[:, -1:]
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(3):  # decode-style steps: the same shapes every time -> one graph, no recompilation
                logits = compiled(input_ids=last, past_key_values=copy.deepcopy(cache), use_cache=True).logits
        ref = model(input_ids=last, past_key_values=copy.deepcopy(cache), use_cache=True).logits
        calls = h.report()["calls"]
    torch.testing.assert_close(logits, ref)
    assert calls == 2  # generate and the eager reference call; compiled calls leave the counters alone


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_static_cache(name):
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    ref = _greedy(model, inputs, cache_implementation="static")
    with tango.enabled(model, cfg(1.0), **t.options):
        same = _greedy(model, inputs, cache_implementation="static")
    assert torch.equal(same, ref) or not t.matches_stock
    with tango.enabled(model, cfg(0.25), **t.options):
        static = _greedy(model, inputs, cache_implementation="static")
        dynamic = _greedy(model, inputs)
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_max_length_counts_the_callers_prompt(name):
    """Bug 8: max_length counted against the pruned prompt (more new tokens than asked for)."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    L = inputs["input_ids"].shape[1]
    ref = model.generate(**inputs, max_length=L + 4, do_sample=False)
    with tango.enabled(model, cfg(0.5), **t.options):
        out = model.generate(**inputs, max_length=L + 4, do_sample=False)
        at_least = model.generate(**inputs, max_new_tokens=6, min_length=L + 6, do_sample=False)
        with pytest.raises(ValueError, match="max_length"):
            model.generate(**inputs, max_length=L, do_sample=False)
    assert out.shape == ref.shape == (1, L + 4)
    assert at_least.shape == (1, L + 6)


# ----------------------------------------------------------------------------------------------- multi-turn
NEXT_TURN = "<|im_end|>\n<|im_start|>user\nand then?<|im_end|>\n<|im_start|>assistant\n"


def _token_types_for(inputs: dict, ids: torch.Tensor) -> dict:
    """`mm_token_type_ids` of `inputs` extended with text (0) up to `ids`' length, for the models that take it."""
    if "mm_token_type_ids" not in inputs:
        return {}
    types = inputs["mm_token_type_ids"]
    pad = torch.zeros(1, ids.shape[1] - inputs["input_ids"].shape[1], dtype=types.dtype)
    return {"mm_token_type_ids": torch.cat([types, pad], dim=1)}


def _two_turns(model, tok, inputs: dict, keep: tuple = ()):
    """Generate 3 tokens, append a user turn and continue 3 more from the returned cache (keeping the `keep` inputs,
    no pixels). Returns (the second call's input ids, its output)."""
    turn = tok([NEXT_TURN], return_tensors="pt").input_ids
    first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    ids = torch.cat([first.sequences, turn], dim=1)
    kw = {k: v for k, v in inputs.items() if k in keep}
    kw.update(attention_mask=torch.ones_like(ids), **_token_types_for(inputs, ids))
    second = model.generate(input_ids=ids, past_key_values=first.past_key_values, max_new_tokens=3, do_sample=False,
                            **kw)
    return ids, second


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_continuation_from_the_returned_cache(name):
    """Bug 6: the returned sequences held the full prompt while the cache held the pruned one."""
    t = TESTERS[name]
    model = t.model()
    tok = t.tokenizer()
    inputs = t.single(model)

    def two_turns():
        return _two_turns(model, tok, inputs)

    ids, ref = two_turns()
    with tango.enabled(model, cfg(1.0), **t.options):
        _, same = two_turns()
    assert torch.equal(same, ref) or not t.matches_stock
    with tango.enabled(model, cfg(0.25), **t.options):
        ids, cont = two_turns()
        # the same conversation in one fresh call: the video is pruned the same way, so greedy agrees
        fresh_inputs = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids),
                            **_token_types_for(inputs, ids))
        fresh = model.generate(**fresh_inputs, max_new_tokens=3, do_sample=False)
        with pytest.raises(ValueError, match="start with exactly the sequences"):
            model.generate(input_ids=ids[:, 1:], past_key_values=copy.deepcopy(
                model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True).past_key_values),
                max_new_tokens=1)
    assert torch.equal(cont[:, :ids.shape[1]], ids)
    assert torch.equal(cont, fresh)


# ----------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_return_dict_scores_and_attentions(name):
    """Item 11: prefill attentions cover the kept keys only; handle.layout() maps them to the caller's positions."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    kw = dict(max_new_tokens=2, do_sample=False, return_dict_in_generate=True, output_scores=True,
              output_attentions=True)
    model.config._attn_implementation = "eager"
    try:
        ref = model.generate(**inputs, **kw)
        with tango.enabled(model, cfg(1.0), **t.options):
            same = model.generate(**inputs, **kw)
        with tango.enabled(model, cfg(0.25), **t.options) as h:
            pruned = model.generate(**inputs, **kw)
            layout = h.layout()
    finally:
        model.config._attn_implementation = "sdpa"
    if t.matches_stock:
        assert torch.equal(same.sequences, ref.sequences)
        for a, b in zip(same.scores, ref.scores):
            torch.testing.assert_close(a, b)
        for a, b in zip(same.attentions[0], ref.attentions[0]):
            torch.testing.assert_close(a, b)
    kept = layout["kept_positions"][0]
    assert pruned.attentions[0][0].shape[-1] == layout["length"] == kept.numel()
    ids = inputs["input_ids"][0]
    # in order (a grid newline reuses the slot of the token before it, so a position may repeat)
    assert bool((kept[1:] >= kept[:-1]).all()) and torch.unique(kept).numel() < ids.numel()
    # every text token of the prompt is kept, at the position the layout says
    text = ids != (model.config.video_token_id)
    assert set(text.nonzero().flatten().tolist()) <= set(kept.tolist())


# ----------------------------------------------------------------------------------------------- odd inputs
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_input_ids_with_inputs_embeds(name):
    """Bug 4: the ids were shortened, the embeddings were not."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    both = dict(inputs, inputs_embeds=model.get_input_embeddings()(inputs["input_ids"]))
    ref = _greedy(model, both)
    with tango.enabled(model, cfg(1.0), **t.options):
        same = _greedy(model, both)
    assert torch.equal(same, ref) or not t.matches_stock
    with tango.enabled(model, cfg(0.25), **t.options):
        assert torch.equal(_greedy(model, both), _greedy(model, inputs))


@pytest.mark.parametrize("name", QWEN)
@torch.no_grad()
def test_grid_without_pixels_is_passed_through(name):
    """Bug 5: a grid with past_key_values (or precomputed features) raised KeyError('pixel_values_videos')."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.single(model)
    with tango.enabled(model, cfg(0.25), **t.options) as h:
        first = model(**inputs, use_cache=True)
        nxt = dict(input_ids=inputs["input_ids"][:, -1:], video_grid_thw=inputs["video_grid_thw"],
                   mm_token_type_ids=inputs["mm_token_type_ids"][:, -1:], past_key_values=first.past_key_values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(**nxt)
        assert h.report()["samples"][0]["note"] == "no video in this call"
        with pytest.warns(UserWarning, match="non-empty cache"):  # the deprecated alias counts as a cache too
            model(**dict(inputs, past_key_values=first.past_key_values))


@torch.no_grad()
def test_stray_video_token_in_an_image_only_prompt():
    """Bug 10: with prune_images=True a video-token id in an image-only prompt raised 'the videos need 0 ...'."""
    t = TESTERS["qwen2_vl"]
    model = t.model()
    inputs = t.inputs(model, [[tiny.ImageSpec()]], ["look at this."])
    ids = inputs["input_ids"].clone()
    ids[0, -3] = model.config.video_token_id  # a stray id in the text
    inputs = dict(inputs, input_ids=ids)
    ref = model(**inputs).logits
    with tango.enabled(model, cfg(1.0, prune_images=True)):
        same = model(**inputs).logits
    with tango.enabled(model, cfg(0.25, prune_images=True)) as h:
        pruned = model(**inputs).logits
        row = h.report()["samples"][0]
    assert torch.equal(same, ref)
    assert row["images"] == 1 and pruned.shape[1] == ref.shape[1] - row["image_tokens_before"] + \
        row["image_tokens_after"]


# ----------------------------------------------------------------------------------------------- copies
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_deepcopy_and_pickle_carry_their_own_working_patch(name, tmp_path):
    """Bug 9: a deep copy of an enabled model ran the original's weights (closures copied by reference)."""
    t = TESTERS[name]
    model, twin = t.fresh_model(), t.fresh_model()
    inputs = t.single(model)
    handle = tango.enable(model, cfg(0.25, strategy="uniform"), **t.options)  # the same layout for both copies
    path = tmp_path / "model.pt"
    torch.save(model, path)  # before any call: transformers' own output-capturing hooks (added then) do not pickle
    loaded = torch.load(path, weights_only=False)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)  # the copy has other weights now
    pruned = model(**inputs).logits
    copied = clone(**inputs).logits
    assert not torch.allclose(pruned, copied)  # the copy runs its own weights ...
    clone_handle = clone.__dict__["_tango_handle"]
    assert clone_handle is not handle and clone_handle.model is clone
    assert copied.shape == pruned.shape  # ... pruned by its own patch
    assert tango.disable(clone) and handle.active  # removing the copy's patch leaves the original's alone
    assert torch.equal(model(**inputs).logits, pruned)
    assert torch.equal(loaded(**inputs).logits, pruned) and loaded.__dict__["_tango_handle"].model is loaded
    assert pickle.loads(pickle.dumps(handle.config)) == handle.config
    handle.remove()
    assert torch.equal(model(**inputs).logits, twin(**inputs).logits)


# ----------------------------------------------------------------------------------------------- bad input at enable
def test_bad_enable_options_fail_at_enable_naming_them():
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    for bad in (float("nan"), float("inf"), 0, -1, True, "2"):
        with pytest.raises(ValueError, match=r"fps=.* is not allowed; expected a positive, finite number"):
            tango.enable(model, cfg(), fps=bad)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        tango.enable(model, cfg(strategy="nope"))
    lv = TESTERS["llava_onevision"]
    with pytest.raises(ValueError, match=r"sink_positions \[999\] are outside the 16-token frame grid"):
        tango.enable(lv.fresh_model(), cfg(sink_positions=[999]))
    assert tango.get_handle(model) is None


@torch.no_grad()
def test_a_strategy_returning_a_bad_plan_is_refused_naming_it():
    t = TESTERS["qwen2_vl"]
    model = t.model()

    @tango.register_strategy("test_unsorted")
    class Unsorted(tango.PruningStrategy):
        def select(self, tokens, config):
            plan = tango.get_strategy("topk").select(tokens, config)
            return tango.PrunePlan(plan.kept_indices.flip(0), plan.features.flip(0))

    try:
        with tango.enabled(model, cfg(strategy="test_unsorted")):
            with pytest.raises(ValueError, match="strategy 'test_unsorted' returned"):
                model(**t.single(model))
    finally:
        tango.unregister_strategy("test_unsorted")


IMAGE_PRUNERS = [n for n in ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "glm4v") if n in TESTERS]


@pytest.mark.parametrize("name", IMAGE_PRUNERS)
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_continuation_keeping_the_image_grid_without_pixels(name, ratio):
    """prune_images=True: the caller continues from the returned cache and keeps `image_grid_thw` / `image_sizes`
    but sends no pixels (transformers' own test_generate_continue_from_past_key_values does): it works, as for
    video and on the unpatched model (it was refused as 'new pruned image pixels' at every ratio)."""
    t = TESTERS[name]
    model = t.model()
    tok = t.tokenizer()
    inputs = t.inputs(model, [[tiny.ImageSpec()]], ["what is in this picture?"])

    def two_turns():  # image_grid_thw / image_sizes kept, no pixels
        return _two_turns(model, tok, inputs, keep=("image_grid_thw", "image_sizes"))

    with torch.no_grad():
        ids, ref = two_turns()
        with tango.enabled(model, cfg(ratio, prune_images=True), **t.options) as h:
            ids2, out = two_turns()
            assert h.report()["samples"][0]["note"] == "continued from a pruned cache"
    assert torch.equal(out[:, :ids2.shape[1]], ids2) and out.shape[1] == ids2.shape[1] + 3
    if ratio == 1.0:
        assert torch.equal(ids2, ids) and torch.equal(out, ref)
