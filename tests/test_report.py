"""`integration/report.py`: the per-handle run state (totals, the last call's rows, warnings, plan records) and the
rows a splice adapter writes (every stage timed apart)."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import tango_plugin as tango
from tango_plugin.integration.report import RunState, SampleReport


def _row(before: int, after: int, seconds: float = 0.5) -> SampleReport:
    return SampleReport(sample=0, videos=1, visual_tokens_before=before, visual_tokens_after=after,
                        prune_seconds=seconds)


def test_record_keeps_the_last_rows_and_adds_up_the_totals():
    state = RunState()
    state.record([_row(100, 10), _row(50, 5)])
    state.record([_row(20, 4)])
    assert state.pruned_calls == 2 and [r.visual_tokens_before for r in state.last] == [20]
    assert (state.total_before, state.total_after) == (170, 19)
    assert state.total_prune_seconds == pytest.approx(1.5)
    state.warned.add("k")
    state.reset()
    assert (state.pruned_calls, state.total_before, state.total_after, state.last) == (0, 0, 0, [])
    assert state.warned == {"k"}  # a warning already given on this handle is not repeated after reset


def test_totals_from_many_threads_add_up_exactly():
    state = RunState()
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        for _ in range(200):
            state.record([_row(3, 1)])
            state.count_call()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state.pruned_calls == state.calls == 1600
    assert (state.total_before, state.total_after) == (4800, 1600)


def test_warn_once_per_key_and_observers_see_every_plan():
    state = RunState()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            state.warn_once("a", "first")
        state.warn_once("b", "second")
    assert [str(w.message) for w in caught] == ["tango_plugin: first", "tango_plugin: second"]
    seen = []
    state.observers.append(seen.append)
    state.observe("plan-1")
    assert seen == ["plan-1"] and state.plans == []  # observed, not kept without record_plans
    state.record_plans = True
    state.observe("plan-2")
    assert seen == ["plan-1", "plan-2"] and state.plans == ["plan-2"]


def test_a_splice_adapter_times_each_stage_of_a_row():
    from tango_plugin.testing import VideoSpec, build_model, build_tokenizer, video_inputs

    tok = build_tokenizer("qwen")
    model = build_model("qwen2_vl", tok)
    inputs = video_inputs(model, tok, [[VideoSpec(frames=4)], [VideoSpec(frames=4)]], ["a", "b"])
    handle = tango.enable(model, tango.TangoConfig(retention_ratio=0.25), fps=1.0)
    with torch.no_grad():
        model(**inputs)
    rows = handle.report()["samples"]
    handle.remove()
    assert len(rows) == 2
    for row in rows:
        assert row["pruned"] and row["visual_tokens_after"] < row["visual_tokens_before"]
        parts = (row["saliency_seconds"], row["strategy_seconds"], row["splice_seconds"])
        assert all(p > 0 for p in parts)
        assert sum(parts) == pytest.approx(row["prune_seconds"], rel=1e-9)
    # the shared stages are split evenly between the two rows, each row's strategy time is its own
    assert rows[0]["splice_seconds"] == pytest.approx(rows[1]["splice_seconds"], rel=1e-9)
    assert rows[0]["saliency_seconds"] == pytest.approx(rows[1]["saliency_seconds"], rel=1e-9)
