"""One hook mechanism (everything attached is listed on the handle and removed exactly), one registry mechanism,
the plan observers, and the deprecated names."""

from __future__ import annotations

import warnings

import pytest
import torch
from adapter_testers import TESTERS, hooks_of

import tango_plugin as tango
from tango_plugin.integration.hooks import HookRegistry
from tango_plugin.registry import Registry

NAMES = list(TESTERS)


def _cfg(ratio=0.25, **kw):
    return tango.TangoConfig(retention_ratio=ratio, **kw)


# ----------------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("intra", [False, True])
@torch.no_grad()
def test_hooks_are_listed_and_none_is_left_after_remove(name, intra):
    t = TESTERS[name]
    model, twin = t.fresh_model(), t.fresh_model()
    extra = {"intra_llm_layer": 1, "intra_llm_ratio": 0.5} if intra else {}
    inputs = t.single(model)
    model(**inputs), twin(**inputs)  # transformers adds its own capture hooks on the first call
    before = hooks_of(model)
    attrs = set(model.__dict__)
    handle = tango.enable(model, _cfg(**extra), **t.options)
    listed = handle.hooks()
    names = [h["name"] for h in listed]
    assert {"method:forward", "method:generate", "handle"} <= set(names)
    kinds = {h["name"]: h["kind"] for h in listed}
    assert kinds["method:forward"] == kinds["method:generate"] == "method"
    layers = len(model.model.language_model.layers)
    intra_names = [n for n in names if n.startswith("intra_llm:")]
    if intra:
        # layer K-1 gets its own attention config; every layer K.. one pre-hook
        assert intra_names == ["intra_llm:scoring_config:layer0"] + [f"intra_llm:reduce:layer{i}"
                                                                      for i in range(1, layers)]
        targets = {h["name"]: h["target"] for h in listed}
        assert targets["intra_llm:reduce:layer1"].endswith("layers.1")
        assert targets["intra_llm:scoring_config:layer0"].endswith("self_attn.config")
        assert hooks_of(model) == before + layers - 1
    else:
        assert not intra_names and hooks_of(model) == before
    # the saliency hooks exist only during a call: seen from inside the vision tower, gone after it
    seen_during = []
    tower = model.model.visual if hasattr(model.model, "visual") else model.model.vision_tower
    probe = tower.register_forward_pre_hook(lambda *a: seen_during.append(list(handle.registry.names())))
    gen_out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    probe.remove()
    assert any(n.startswith("saliency:") for n in seen_during[0])
    assert not any(n.startswith("saliency:") for n in handle.registry.names())
    assert tango.disable(model) is True and tango.disable(model) is False
    assert handle.hooks() == [] and not handle.active
    assert set(model.__dict__) == attrs and hooks_of(model) == before
    assert torch.equal(model(**inputs).logits, twin(**inputs).logits)
    assert gen_out.shape[1] == inputs["input_ids"].shape[1] + 2


def test_hook_registry_restores_previous_instance_attributes_and_refuses_duplicates():
    class Box(torch.nn.Module):
        def forward(self, x):
            return x + 1

    box = Box()
    box.__dict__["forward"] = lambda x: x + 10  # someone else's instance-level patch (e.g. accelerate)
    reg = HookRegistry(box)
    reg.wrap_method("m", box, "forward", lambda original, args, kwargs: original(*args, **kwargs) * 2)
    assert box.forward(torch.tensor(1.0)) == 22
    with pytest.raises(ValueError, match="already attached"):
        reg.set_attribute("m", box, "other", 1)
    reg.set_attribute("flag", box, "tango_flag", True)
    assert [e["name"] for e in reg.entries()] == ["m", "flag"]
    with pytest.raises(ValueError, match="no hook named 'nope'"):
        reg.remove("nope")
    reg.remove_all()
    assert box.forward(torch.tensor(1.0)) == 11 and "tango_flag" not in box.__dict__ and len(reg) == 0


def test_failed_enable_leaves_nothing_behind():
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    attrs = set(model.__dict__)
    with pytest.raises(ValueError, match="intra_llm_layer=5 does not fit"):
        tango.enable(model, _cfg(intra_llm_layer=5))
    with pytest.raises(ValueError, match="unknown option"):
        tango.enable(model, _cfg(), nope=1)
    assert set(model.__dict__) == attrs and tango.disable(model) is False


# ----------------------------------------------------------------------------------------------- observers
@torch.no_grad()
def test_record_plans_shows_what_each_call_kept():
    t = TESTERS["llava_onevision"]
    model = t.model()
    inputs = t.inputs(model, [[tango.testing.VideoSpec(8)], [tango.testing.VideoSpec(8, seed=3)]],
                      ["what happens?", "and here?"])
    calls = []
    with tango.enabled(model, _cfg(strategy="topk"), record_plans=True, on_plan=calls.append) as h:
        model(**inputs)
        model(**t.single(model))
        records = h.plans()
        rows = h.report()["samples"]
    assert [(r.call, r.row, r.kind, r.index, r.part) for r in records] == [
        (1, 0, "video", 0, 0), (1, 1, "video", 1, 0), (2, 0, "video", 0, 0)]
    assert calls == records  # the observer saw the same records, in order
    T, L = records[0].tokens.saliency.shape
    k = -(-L // 4)
    for r in records:  # top-k: each frame's ceil(L / 4) highest scores, exactly what the plan says
        expected = r.tokens.saliency.topk(k, dim=1).indices.sort(dim=1).values + torch.arange(T)[:, None] * L
        assert torch.equal(r.plan.kept_indices, expected.flatten())
    assert rows[0]["kept_by_strategy"] == records[2].plan.kept_indices.numel()
    with tango.enabled(model, _cfg()) as h:
        with pytest.raises(ValueError, match="record_plans=True"):
            h.plans()
    with pytest.raises(ValueError, match="on_plan="):
        tango.enable(model, _cfg(), on_plan="nope")


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lazy_entries_duplicates_and_symmetry():
    reg = Registry("thing")
    reg.register("a", 1)
    reg.register("lazy", "math:pi")
    assert reg.names() == ["a", "lazy"] and reg.get("lazy") == pytest.approx(3.14159, abs=1e-5)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    reg.register("a", 2, exist_ok=True)
    assert reg.get("a") == 2
    reg.unregister("a")
    with pytest.raises(ValueError, match="unknown thing 'a'; registered: \\['lazy'\\]"):
        reg.get("a")
    with pytest.raises(ValueError, match="unknown thing 'a'"):
        reg.unregister("a")
    reg.register("broken", "no_such_module_xyz:thing")
    with pytest.raises(ValueError, match="thing 'broken' points to 'no_such_module_xyz:thing'"):
        reg.get("broken")


def test_adapter_registration_refuses_an_incomplete_adapter():
    from tango_plugin.integration.splice import VideoSpliceAdapter

    class Half(VideoSpliceAdapter):
        def encode_videos(self, kw, need_saliency):
            return [], None, 0.0

    with pytest.raises(ValueError, match=r"does not implement \['video_token_id', 'encoder_outputs'\]"):
        tango.register_adapter("half_model", Half)
    assert "half_model" not in tango.list_adapters()
    with pytest.raises(ValueError, match="not a ModelAdapter subclass"):
        tango.register_adapter("not_an_adapter", int)


def test_strategy_registration_refuses_a_class_without_select():
    class Empty(tango.PruningStrategy):
        pass

    with pytest.raises(ValueError, match="does not implement select"):
        tango.register_strategy("empty", Empty)
    assert "empty" not in tango.list_strategies()


def test_one_mechanism_for_the_three_registries():
    from tango_plugin.integration.adapter import ADAPTERS
    from tango_plugin.presets import PRESETS
    from tango_plugin.strategies import STRATEGIES

    assert all(isinstance(r, Registry) for r in (ADAPTERS, PRESETS, STRATEGIES))
    tango.register_preset("my-preset", {"retention_ratio": 0.3})
    try:
        assert tango.TangoConfig.from_preset("my-preset").retention_ratio == 0.3
        with pytest.raises(ValueError, match="already registered"):
            tango.register_preset("my-preset", {})
    finally:
        PRESETS.unregister("my-preset")
    assert "my-preset" not in tango.list_presets()


def test_import_does_not_pull_in_transformers():
    import subprocess
    import sys

    code = ("import sys, tango_plugin as t; assert t.list_adapters(); "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------- deprecations
def test_deprecated_names_warn_and_still_work():
    feats, sal = torch.randn(2, 4, 8), torch.rand(2, 4)
    with pytest.warns(DeprecationWarning, match="PruneResult is deprecated.*PrunePlan"):
        assert tango.PruneResult is tango.PrunePlan
    with pytest.warns(DeprecationWarning, match="prune is deprecated"):
        plan = tango.prune(tango.VisualTokens(feats, sal, (2, 2)), _cfg(strategy="topk"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = tango.prune_video_tokens(feats, sal, (2, 2), config=_cfg(strategy="topk"))
    assert torch.equal(plan.kept_indices, again.kept_indices)
