"""The "register a new adapter from outside" path: the example package `examples/third_party_adapter`
(`pip install ./examples/third_party_adapter`, as `.ci/run` does) declares its adapter in the `tango_plugin.adapters`
entry-point group; tango_plugin must find it without anything importing the package, and `enable` must prune a tiny
model of that family through it. Skips (with the reason) where the package is not installed."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import pytest
import torch

example = pytest.importorskip("tango_example_adapter", reason="the example adapter package is not installed: "
                              "pip install ./examples/third_party_adapter")

import tango_plugin as tango  # noqa: E402
from tango_plugin import testing as tiny  # noqa: E402

MODEL_TYPE = example.MODEL_TYPE


def test_entry_point_is_declared_by_the_installed_package():
    eps = [ep for ep in md.entry_points(group="tango_plugin.adapters") if ep.name == MODEL_TYPE]
    assert len(eps) == 1
    assert eps[0].value == "tango_example_adapter.adapter:ExampleVLAdapter"
    assert eps[0].dist is not None and eps[0].dist.name == "tango-example-adapter"


def test_entry_point_is_discovered_in_a_fresh_interpreter():
    """Nothing imports the package: `import tango_plugin` alone lists the adapter, and the lookup imports it."""
    code = ("import sys, tango_plugin as t; assert 'tango_example_adapter' not in sys.modules; "
            f"print({MODEL_TYPE!r} in t.list_adapters()); "
            f"c = t.get_adapter({MODEL_TYPE!r}); print(c.__module__, c.__name__, c.model_type)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "tango_example_adapter.adapter", "ExampleVLAdapter", MODEL_TYPE]


def test_get_adapter_returns_the_packages_class():
    from tango_example_adapter.adapter import ExampleVLAdapter

    assert MODEL_TYPE in tango.list_adapters()
    cls = tango.get_adapter(MODEL_TYPE)
    assert cls is ExampleVLAdapter and issubclass(cls, tango.ModelAdapter) and cls.model_type == MODEL_TYPE
    # its own class: registration sets model_type on the class it is given, so the built-in class stays apart
    assert cls is not tango.get_adapter("qwen2_vl")


@torch.no_grad()
def test_enable_prunes_a_tiny_model_through_the_entry_point():
    from tango_example_adapter.testing import build_tiny_model

    tok = tiny.build_tokenizer("qwen")
    model = build_tiny_model(tok)
    assert model.config.model_type == MODEL_TYPE
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(8)]], ["what happens in this video?"])
    ref = model(**inputs).logits
    ref_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=1.0)) as h:
        assert type(h.adapter).__name__ == "ExampleVLAdapter"
        torch.testing.assert_close(model(**inputs).logits, ref, rtol=1e-5, atol=1e-5)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        row = h.report()["samples"][0]
    before = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert row["pruned"] and row["visual_tokens_before"] == before
    assert 0 < row["visual_tokens_after"] < before
    assert tokens.shape == ref_tokens.shape and torch.equal(tokens[:, :inputs["input_ids"].shape[1]],
                                                            inputs["input_ids"])
    assert not h.hooks() and "forward" not in model.__dict__
