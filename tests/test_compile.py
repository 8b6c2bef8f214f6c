"""torch.compile and an enabled model (docs/usage.md, "torch.compile"), on every adapter.

`torch.compile(model)` of an enabled model: a call that carries video pixels is pruned outside the graph and gives
the uncompiled pruned output (before: endless recursion in the patch, then silently unpruned logits).
`tango.enable(torch.compile(model))` enables the wrapped model (before: AttributeError from the hook registry).
Compiling only the language model in place (`model.get_decoder().compile()`) keeps the pruned results too.
The default backend here is dynamo's "eager" (the graph capture and the routing, in seconds); the inductor run is
marked slow.
"""

from __future__ import annotations

import pytest
import torch
from adapter_testers import TESTERS, gen

import tango_plugin as tango

CFG = tango.TangoConfig(retention_ratio=0.25)
pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. .*(timestamps|sink positions)")


def _reference(t):
    model = t.fresh_model()
    inputs = t.single(model, frames=8, seed=3)
    handle = tango.enable(model, CFG, **t.options)
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = gen(model, inputs, n=4)
    handle.remove()
    return model, inputs, logits, tokens


@pytest.mark.parametrize("name", sorted(TESTERS))
def test_compiled_enabled_model_prunes_like_the_uncompiled_one(name):
    torch._dynamo.reset()
    t = TESTERS[name]
    model, inputs, ref_logits, ref_tokens = _reference(t)
    handle = tango.enable(model, CFG, **t.options)
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        logits = compiled(**inputs).logits
        tokens = compiled.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape == ref_logits.shape  # pruned (the unpruned sequence is longer)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    assert handle.report()["samples"][0]["pruned"]


@pytest.mark.parametrize("name", sorted(TESTERS))
def test_enabling_a_compiled_module_enables_the_model_it_wraps(name):
    torch._dynamo.reset()
    t = TESTERS[name]
    model, inputs, ref_logits, _ = _reference(t)
    compiled = torch.compile(model, backend="eager")
    handle = tango.enable(compiled, CFG, **t.options)
    assert handle.model is model and tango.get_handle(compiled) is handle
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert tango.disable(compiled) and tango.get_handle(model) is None


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
def test_a_decoder_compiled_in_place_keeps_the_pruned_results(name):
    torch._dynamo.reset()
    t = TESTERS[name]
    model, inputs, ref_logits, ref_tokens = _reference(t)
    model.get_decoder().compile(backend="eager")
    tango.enable(model, CFG, **t.options)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref_logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(gen(model, inputs, n=4), ref_tokens)


@pytest.mark.slow
def test_inductor_compiled_qwen2_vl():
    torch._dynamo.reset()
    t = TESTERS["qwen2_vl"]
    model, inputs, ref_logits, ref_tokens = _reference(t)
    tango.enable(model, CFG)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, ref_logits, rtol=1e-4, atol=1e-4)
