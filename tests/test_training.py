"""Fine-tuning with pruning in the loop (docs/training.md): losses, labels, gradients, PEFT in either order,
gradient checkpointing, merge_and_unload, LoRA targets, and what a training forward refuses."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from adapter_testers import TESTERS

import tango_plugin as tango
from tango_plugin import testing as tiny
from tango_plugin.strategies import PruningStrategy, register_strategy, run_strategy, unregister_strategy

NAMES = sorted(TESTERS)
FEW = ["llava_onevision", "qwen2_vl", "qwen3_vl"]


def cfg(r: float = 0.25, **kw) -> tango.TangoConfig:
    return tango.TangoConfig(retention_ratio=r, **kw)


def visual_ids(model) -> set:
    c = model.config
    return {v for k in ("image_token_id", "video_token_id", "image_token_index", "video_token_index")
            if (v := getattr(c, k, None)) is not None}


def text_only_labels(model, inputs: dict) -> torch.Tensor:
    """Labels on the text tokens whose previous token is text too (their logits depend on that token only in the
    frozen model below), -100 elsewhere."""
    ids = inputs["input_ids"]
    labels = inputs["labels"].clone()
    prev_visual = torch.isin(ids[:, :-1], torch.tensor(sorted(visual_ids(model))))
    labels[:, 1:][prev_visual] = -100
    labels[:, 0] = -100
    return labels


def frozen_residual(model) -> None:
    """Zero every decoder layer's output projections: the residual stream at a text position is then its own token
    embedding, so each text logit (and the loss on it) is known without running the model."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for name, p in layer.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")):  # MoE: a fused expert tensor
                    p.zero_()


def loss_by_hand(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    lm = model.model.language_model
    with torch.no_grad():
        logits = model.lm_head(lm.norm(model.get_input_embeddings()(input_ids)))
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


# ----------------------------------------------------------------------------------------------- labels and loss
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_loss_on_answer_tokens_is_known_with_and_without_pruning(name):
    """A shift between tokens and labels in the shortened sequence would pair a label with another token's logit:
    the loss would then differ from the one computed by hand."""
    t = TESTERS[name]
    model = t.fresh_model()
    frozen_residual(model)
    media = [[tiny.VideoSpec(t.batch_frames[0], seed=1)], [tiny.VideoSpec(t.batch_frames[1], seed=2)]]
    prompts = ["what colour is the ball? it is red", "how many people are there? two people walk in the park"]
    batch = t.inputs(model, media, prompts, padding_side="right", labels=True)
    batch["labels"] = text_only_labels(model, batch)
    assert int((batch["labels"] != -100).sum()) > 10
    expected = loss_by_hand(model, batch["input_ids"], batch["labels"])
    full = model(**batch).loss
    with tango.enabled(model, cfg(0.25), **t.options) as h:
        pruned = model(**batch)
        rows = h.report()["samples"]
    assert all(r["pruned"] and r["visual_tokens_after"] < r["visual_tokens_before"] for r in rows)
    assert rows[0]["visual_tokens_after"] != rows[1]["visual_tokens_after"] or t.batch_frames[0] == t.batch_frames[1]
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pruned.loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FEW)
@torch.no_grad()
def test_a_shifted_label_would_be_caught(name):
    """The control of the test above: the same check fails when the labels are off by one."""
    t = TESTERS[name]
    model = t.fresh_model()
    frozen_residual(model)
    batch = t.single(model, prompt="what colour is the ball? it is red and round", labels=True)
    batch["labels"] = text_only_labels(model, batch)
    shifted = dict(batch, labels=torch.roll(batch["labels"], 1, dims=1))
    with tango.enabled(model, cfg(0.25), **t.options):
        loss = model(**shifted).loss
    assert not torch.allclose(loss, loss_by_hand(model, batch["input_ids"], batch["labels"]), atol=1e-3)


# ----------------------------------------------------------------------------------------------- gradients
def _video(T=6, L=36, D=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, L, D, generator=g)
    feats = (base + 0.3 * torch.randn(T, L, D, generator=g)).to(dtype)  # some tokens static across frames
    feats[:, : L // 4] = base[:, : L // 4].to(dtype)
    return feats, torch.rand(T, L, generator=g)


@pytest.mark.parametrize("strategy", tango.list_strategies())
@pytest.mark.parametrize("exact", [False, True])
def test_gradients_flow_through_kept_and_merged_tokens(strategy, exact):
    """Kept and merged features are linear in the input features once the decisions are made, so the gradient of
    <plan.features, G> satisfies Euler's identity <grad, X> == <plan.features, G>; a merge that dropped its
    gradient (or a detached kept row) breaks it."""
    feats, sal = _video()
    x = feats.clone().requires_grad_(True)
    tokens = tango.VisualTokens(features=x, saliency=sal, grid_hw=(6, 6), timestamps=torch.arange(6.0))
    plan = run_strategy(tokens, cfg(0.25, strategy=strategy, exact_budget=exact))
    g = torch.randn_like(plan.features)
    inner = (plan.features * g).sum()
    inner.backward()
    torch.testing.assert_close((x.grad * x.detach()).sum(), inner.detach(), rtol=1e-4, atol=1e-4)
    touched = x.grad.reshape(-1, x.shape[-1]).abs().sum(dim=1) > 0
    assert bool(touched[plan.kept_indices].all())  # every kept token's own feature contributes
    with torch.no_grad():  # and the values are those of a plain run
        assert torch.equal(run_strategy(tokens, cfg(0.25, strategy=strategy, exact_budget=exact)).features,
                           plan.features.detach())


def _saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_selection_records_no_autograd_memory():
    """Under autograd, Tango records only its feature path: what autograd saves stays a small multiple of the
    video, while a strategy whose distances are recorded saves its distance matrices (and is warned about)."""
    feats, sal = _video(T=8, L=64, D=16)
    x = feats.clone().requires_grad_(True)
    tokens = tango.VisualTokens(features=x, saliency=sal, grid_hw=(8, 8))
    video_bytes = x.numel() * x.element_size()
    tango_saved = _saved_bytes(lambda: run_strategy(tokens, cfg(0.25)))
    assert tango_saved <= 2 * video_bytes

    @register_strategy("test_recorded_distances")
    class Recorded(PruningStrategy):
        def select(self, tokens, config):
            flat = tokens.features.reshape(-1, tokens.features.shape[-1])
            d = torch.cdist(flat, flat)  # recorded by autograd: (T L)^2 floats
            keep = torch.sort(d.sum(dim=1).topk(8).indices).values
            return tango.PrunePlan(kept_indices=keep, features=flat[keep] + 0 * d[keep, :1])

    try:
        with pytest.warns(UserWarning, match="does not declare feature_gradients"):
            recorded = _saved_bytes(lambda: run_strategy(tokens, cfg(0.25, strategy="test_recorded_distances")))
    finally:
        unregister_strategy("test_recorded_distances")
    assert recorded > 4 * video_bytes > tango_saved


@pytest.mark.parametrize("name", FEW)
def test_gradients_reach_lora_and_the_projector_only(name):
    peft = pytest.importorskip("peft")
    t = TESTERS[name]
    model = t.fresh_model()
    targets = tango.lora_target_modules(model, ["q_proj", "v_proj"], projector=True)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    pm.train()
    inputs = t.single(model, labels=True)
    with tango.enabled(pm, cfg(0.25), **t.options) as h:
        pm(**inputs).loss.backward()
        assert h.report()["samples"][0]["pruned"]
    grads = {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    projector = [n for n in grads if "language_model" not in n]
    assert projector and all(grads[n].abs().sum() > 0 for n in projector if "lora_B" in n)
    assert not [n for n, p in pm.named_parameters() if p.grad is not None and not p.requires_grad]


# ----------------------------------------------------------------------------------------------- PEFT
@pytest.mark.parametrize("name", NAMES)
def test_enable_renames_no_module(name):
    """LoRA targets are module names: enable() must not wrap or move a module (only methods are patched)."""
    t = TESTERS[name]
    model = t.fresh_model()
    before = [n for n, _ in model.named_modules()]
    with tango.enabled(model, cfg(), **t.options):
        assert [n for n, _ in model.named_modules()] == before


@pytest.mark.parametrize("name", FEW)
def test_peft_in_either_order(name):
    peft = pytest.importorskip("peft")
    t = TESTERS[name]
    inputs = t.single(t.model(), labels=True)

    def lora(model):
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=tango.lora_target_modules(model, ["q_proj"]))

    first = t.fresh_model()  # enable, then inject LoRA
    h_first = tango.enable(first, cfg(0.25), **t.options)
    pm_first = peft.get_peft_model(first, lora(first))
    out_first = pm_first(**inputs)
    out_first.loss.backward()
    assert h_first.report()["samples"][0]["pruned"]

    second = t.fresh_model()  # inject LoRA, then enable
    pm_second = peft.get_peft_model(second, lora(second))
    h_second = tango.enable(pm_second, cfg(0.25), **t.options)
    out_second = pm_second(**inputs)
    out_second.loss.backward()
    assert h_second.model is second

    torch.testing.assert_close(out_first.loss, out_second.loss)  # lora_B starts at 0: both equal the base model
    for pm in (pm_first, pm_second):
        grads = [p.grad for n, p in pm.named_parameters() if "lora_B" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    h_first.remove()  # removable while wrapped
    with torch.no_grad():
        assert pm_first(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("name", FEW)
def test_merge_and_unload_keeps_pruning_on(name):
    peft = pytest.importorskip("peft")
    t = TESTERS[name]
    model = t.fresh_model()
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                    target_modules=tango.lora_target_modules(model, ["q_proj"])))
    inputs = t.single(model)
    handle = tango.enable(pm, cfg(0.25), **t.options)
    with torch.no_grad():
        adapted = pm(**inputs).logits
        merged = pm.merge_and_unload()
        assert merged is model and tango.get_handle(merged) is handle
        out = merged(**inputs).logits
    assert handle.report()["samples"][0]["pruned"]
    torch.testing.assert_close(out, adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", FEW)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    peft = pytest.importorskip("peft")
    t = TESTERS[name]
    inputs = t.single(t.model(), labels=True)
    grads = []
    for checkpointing in (False, True):
        model = t.fresh_model()
        pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                        target_modules=tango.lora_target_modules(model)))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pm.train()
        with tango.enabled(pm, cfg(0.25), **t.options) as h:
            pm(**inputs, use_cache=False).loss.backward()
            assert h.report()["samples"][0]["pruned"]
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad})
    assert model.model.language_model.gradient_checkpointing
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- refusals
def test_intra_llm_stage_is_refused_in_training_and_warned_in_eval():
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    inputs = t.single(model, labels=True)
    with tango.enabled(model, cfg(0.25, intra_llm_layer=1, intra_llm_ratio=0.5)):
        model.train()
        with pytest.raises(ValueError, match=r"intra_llm_layer=1 applies in generate only.*intra_llm_layer=None"):
            model(**inputs)
        model.eval()
        with pytest.warns(UserWarning, match="intra_llm_layer is applied in generate only"), torch.no_grad():
            assert torch.isfinite(model(**inputs).loss)


def test_training_forward_with_a_filled_cache_is_refused():
    from transformers import DynamicCache

    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    inputs = t.single(model, labels=True)
    with torch.no_grad():
        cache = model(input_ids=inputs["input_ids"][:, :3], use_cache=True).past_key_values
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 3
    with tango.enabled(model, cfg(0.25)):
        model.train()
        with pytest.raises(ValueError, match="past_key_values holds a cache in a training forward"):
            model(**inputs, past_key_values=cache)
        assert torch.isfinite(model(**inputs, use_cache=False).loss)  # without a cache it trains


# ----------------------------------------------------------------------------------------------- LoRA targets
@pytest.mark.parametrize("name", NAMES)
def test_lora_targets_are_inside_the_language_model(name):
    t = TESTERS[name]
    model = t.fresh_model()
    targets = tango.lora_target_modules(model, ["q_proj", "v_proj"])
    modules = dict(model.named_modules())
    layers = len(model.model.language_model.layers)
    assert len(targets) == 2 * layers
    assert all(n.startswith("model.language_model.") and isinstance(modules[n], torch.nn.Linear) for n in targets)
    with_proj = tango.lora_target_modules(model, ["q_proj", "v_proj"], projector=True)
    extra = sorted(set(with_proj) - set(targets))
    assert extra and all(isinstance(modules[n], torch.nn.Linear) for n in extra)
    assert not any(n.startswith(("model.vision_tower", "model.visual.blocks")) for n in with_proj)


def test_a_bare_target_list_would_hit_the_vision_tower():
    """Why the helper exists: peft matches leaf names, and SigLIP's attention is named q_proj / v_proj too."""
    peft = pytest.importorskip("peft")
    t = TESTERS["llava_onevision"]
    bare = peft.get_peft_model(t.fresh_model(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert any("vision_tower" in n and "lora_A" in n for n, _ in bare.named_parameters())
    model = t.fresh_model()
    ours = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=tango.lora_target_modules(model)))
    lora = [n for n, _ in ours.named_parameters() if "lora_A" in n]
    assert lora and not any("vision_tower" in n for n in lora)


def test_lora_target_modules_bad_input():
    peft = pytest.importorskip("peft")
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    with pytest.raises(ValueError, match=r"\['qkv'\] match no linear layer of the language model.*q_proj"):
        tango.lora_target_modules(model, ["q_proj", "qkv"])
    with pytest.raises(ValueError, match="non-empty list of module leaf names"):
        tango.lora_target_modules(model, "q_proj")
    with pytest.raises(ValueError, match="non-empty list"):
        tango.lora_target_modules(model, [])
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=tango.lora_target_modules(model)))
    with pytest.raises(ValueError, match="not a PeftModel"):
        tango.lora_target_modules(pm)


def test_training_step_with_pruning_lowers_the_loss():
    """A few AdamW steps on one sample with pruning on: the pruned training loss falls (the pieces above, together)."""
    peft = pytest.importorskip("peft")
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    pm = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16,
                                                    target_modules=tango.lora_target_modules(model)))
    inputs = t.single(model, labels=True)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=3e-2)
    pm.train()
    losses = []
    with tango.enabled(pm, cfg(0.25), fps=2.0), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped or defaulted silently in a training step
        for _ in range(8):
            opt.zero_grad()
            loss = pm(**inputs, use_cache=False).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2  # random tiny model: about 6.28 -> 5.9 in 8 steps


def test_save_and_load_peft_adapter_round_trip_and_bad_input(tmp_path):
    peft = pytest.importorskip("peft")
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, init_lora_weights=False,
                                                    target_modules=tango.lora_target_modules(model)))
    with pytest.raises(ValueError, match="Tango is not enabled on this model"):
        tango.save_peft_adapter(pm, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="wants a peft.PeftModel"):
        tango.save_peft_adapter(model, str(tmp_path / "a"))
    tango.enable(pm, cfg(0.25, strategy="visionzip"), fps=2.0)
    tango.save_peft_adapter(pm, str(tmp_path / "a"))
    inputs = t.single(model)
    with torch.no_grad():
        ref = pm(**inputs).logits
        loaded = tango.load_peft_adapter(t.fresh_model(), str(tmp_path / "a"))
        handle = tango.get_handle(loaded)
        assert handle.config.strategy == "visionzip" and handle.adapter.options["fps"] == 2.0
        torch.testing.assert_close(loaded(**inputs).logits, ref)
        plain = tango.load_peft_adapter(t.fresh_model(), str(tmp_path / "a"), enable_tango=False)
        assert tango.get_handle(plain) is None
    pm.save_pretrained(str(tmp_path / "b"))  # saved by peft alone: no tango.json
    with pytest.raises(ValueError, match="no tango.json there"):
        tango.load_peft_adapter(t.fresh_model(), str(tmp_path / "b"))
    (tmp_path / "a" / "tango.json").write_text('{"tango": {"tango_ratio": 2}}')
    with pytest.raises(ValueError, match=r"tango_ratio: retention_ratio=2.0 is out of range"):
        tango.load_peft_adapter(t.fresh_model(), str(tmp_path / "a"))
