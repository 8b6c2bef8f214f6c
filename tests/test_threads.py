"""Several threads on one enabled model (docs/usage.md, "Threads"): every call gets exactly what it gets alone.

Real threads on every adapter: a `forward` while another thread is inside `generate` (it must be pruned, with the
serial values), and two `generate`s at once (each must return its serial tokens). Before per-thread call state, the
forward came back unpruned and the two generates crashed on each other's transient hooks.
"""

from __future__ import annotations

import threading

import pytest
import torch
from adapter_testers import TESTERS, gen

import tango_plugin as tango

CFG = tango.TangoConfig(retention_ratio=0.25)
pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. .*(timestamps|sink positions)")


class _Started:
    """A streamer that says when generation has started (and keeps it going)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def put(self, value) -> None:
        self.event.set()

    def end(self) -> None:
        pass


def _fresh_with_two_inputs(name):
    """A fresh tiny model of adapter `name`, its tester and two different single-video inputs."""
    t = TESTERS[name]
    model = t.fresh_model()
    a = t.single(model, frames=8, seed=1, prompt="what happens?")
    b = t.single(model, frames=8, seed=2, prompt="describe it")
    return t, model, a, b


def _run(threads):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as err:  # surfaced in the test below
                errors.append(err)
        return run

    workers = [threading.Thread(target=wrap(fn)) for fn in threads]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("name", sorted(TESTERS))
def test_forward_during_another_threads_generate_is_pruned_and_exact(name):
    t, model, a, b = _fresh_with_two_inputs(name)
    handle = tango.enable(model, CFG, **t.options)
    with torch.no_grad():
        ref_logits = model(**b).logits
        ref_a = gen(model, a, n=24)
    started, done = threading.Event(), threading.Event()
    out_a, seen = {}, []

    def generate():
        with torch.no_grad():
            out_a["tokens"] = gen(model, a, n=24, streamer=_Started(started))
        done.set()

    def forwards():
        started.wait(60)
        while not done.is_set() or not seen:
            with torch.no_grad():
                seen.append(model(**b).logits)

    _run([generate, forwards])
    assert torch.equal(out_a["tokens"], ref_a)
    for logits in seen:
        assert logits.shape == ref_logits.shape  # pruned, as alone (unpruned would be longer)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert not handle.adapter.busy  # nothing left marked as "inside our own call"


@pytest.mark.parametrize("name", sorted(TESTERS))
def test_two_threads_generating_on_one_model_each_get_their_serial_tokens(name):
    t, model, a, b = _fresh_with_two_inputs(name)
    handle = tango.enable(model, CFG, **t.options)
    with torch.no_grad():
        ref = {"a": gen(model, a, n=6), "b": gen(model, b, n=6)}
    before = handle.hooks()
    for _ in range(2):
        barrier, out = threading.Barrier(2), {}

        def worker(key, inputs):
            def run():
                barrier.wait(30)
                with torch.no_grad():
                    out[key] = gen(model, inputs, n=6)
            return run

        _run([worker("a", a), worker("b", b)])
        assert torch.equal(out["a"], ref["a"]) and torch.equal(out["b"], ref["b"])
    assert handle.hooks() == before  # every per-call hook came off
    assert handle.report()["samples"][0]["pruned"]


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
def test_the_intra_llm_stage_runs_one_generate_at_a_time_and_leaves_other_threads_alone(name):
    t, model, a, b = _fresh_with_two_inputs(name)
    cfg = tango.TangoConfig(retention_ratio=0.5, intra_llm_layer=1, intra_llm_ratio=0.5)
    handle = tango.enable(model, cfg, **t.options)
    with torch.no_grad(), pytest.warns(UserWarning, match="intra_llm_layer is applied in generate only"):
        ref_logits = model(**b).logits
    with torch.no_grad():
        ref = {"a": gen(model, a, n=12), "b": gen(model, b, n=12)}
    after_a = handle.report()["samples"][0]["intra_llm_tokens_after"]
    barrier, out, logits = threading.Barrier(3), {}, []

    def worker(key, inputs):
        def run():
            barrier.wait(30)
            with torch.no_grad():
                out[key] = gen(model, inputs, n=12)
        return run

    def forwards():
        barrier.wait(30)
        for _ in range(3):
            with torch.no_grad():
                logits.append(model(**b).logits)

    _run([worker("a", a), worker("b", b), forwards])
    assert torch.equal(out["a"], ref["a"]) and torch.equal(out["b"], ref["b"])
    for x in logits:  # a plain forward never goes through another thread's armed stage
        torch.testing.assert_close(x, ref_logits, rtol=1e-5, atol=1e-5)
    assert after_a is not None and not handle.adapter._intra.armed
