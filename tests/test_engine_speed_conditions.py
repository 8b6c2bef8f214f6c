"""What the engine's speed in users' conditions rests on (issue 24), checked without timing anything: the AR(1)
input of the benchmark, the thread-count rule, thread counts never changing a plan, and nothing slow on a first
call (no sympy import)."""

import os
import subprocess
import sys
import time

import pytest
import torch

import tango_plugin as tp
from tango_plugin.engine import strope, threads
from tango_plugin.testing.synthetic import ar1_video


def test_ar1_video_shapes_scenes_and_determinism():
    v = ar1_video(20, (4, 5), 16, num_cuts=3, seed=7)
    assert v.features.shape == (20, 20, 16) and v.saliency.shape == (20, 20) and v.grid_hw == (4, 5)
    assert torch.allclose(v.saliency.sum(dim=1), torch.ones(20))
    assert v.scene_of_frame[0] == 0 and int(v.scene_of_frame.max()) == 3
    assert bool((v.scene_of_frame.diff() >= 0).all()) and int((v.scene_of_frame.diff() == 1).sum()) == 3
    w = ar1_video(20, (4, 5), 16, num_cuts=3, seed=7)
    assert torch.equal(v.features, w.features) and torch.equal(v.saliency, w.saliency)
    assert not torch.equal(v.features, ar1_video(20, (4, 5), 16, num_cuts=3, seed=8).features)
    assert torch.equal(v.timestamps, torch.arange(20, dtype=torch.float64))


def test_ar1_video_correlations():
    """Static tokens follow their previous frame with correlation ~0.99, moving ones ~0.5; a cut starts afresh."""
    v = ar1_video(12, (16, 16), 512, num_cuts=0, moving_fraction=0.25, seed=3)
    x = v.features
    corr = torch.nn.functional.cosine_similarity(x[1:], x[:-1], dim=-1).mean(dim=0)  # (L,) per token
    static, moving = corr > 0.75, corr <= 0.75
    assert 0.15 < float(moving.float().mean()) < 0.35
    assert abs(float(corr[static].mean()) - 0.99) < 0.005
    assert abs(float(corr[moving].mean()) - 0.5) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05  # unit variance per frame
    cut = ar1_video(12, (16, 16), 512, num_cuts=1, seed=3)
    f = int(torch.nonzero(cut.scene_of_frame.diff())[0]) + 1
    across = torch.nn.functional.cosine_similarity(cut.features[f], cut.features[f - 1], dim=-1)
    assert float(across.abs().mean()) < 0.1


@pytest.mark.parametrize("kwargs", [dict(num_frames=0), dict(num_cuts=-1), dict(moving_fraction=1.5),
                                    dict(static_corr=1.0), dict(moving_corr=-1.0)])
def test_ar1_video_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ar1_video(**{"num_frames": 4, "grid_hw": (2, 2), "dim": 8, **kwargs})


def test_thread_count_rule():
    assert threads.threads_for(10, 2, 100) == 1
    assert threads.threads_for(100, 2, 100) == 2
    assert threads.threads_for(10 ** 12, 1, 100) == 1
    assert threads.threads_for(10 ** 12, 8, 100) == 8
    with pytest.raises(ValueError):
        threads.set_policy("fast")


def test_call_threads_narrows_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    threads.set_policy("size")
    try:
        with threads.call_threads():
            assert torch.get_num_threads() == 1 and threads.caller_threads() == 2
            with threads.call_threads():  # nested: still one thread, the caller's count remembered
                assert torch.get_num_threads() == 1
            with threads.wide(threads.WIDE_MIN_MACS):
                assert torch.get_num_threads() == 2
            with threads.wide(threads.WIDE_MIN_MACS - 1):
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        threads.set_policy("caller")
        with threads.call_threads():
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads.call_threads():
            raise RuntimeError("restored on errors too")
        assert torch.get_num_threads() == 2
    finally:
        threads.set_policy("auto")
        torch.set_num_threads(before)


def test_auto_narrows_only_when_the_machine_was_busy(monkeypatch):
    """"auto": the other processes' measured cores decide; unmeasured means narrow."""
    assert threads.free_for_caller(0.1, 2, 2) and not threads.free_for_caller(0.9, 2, 2)
    assert not threads.free_for_caller(None, 2, 2)
    assert threads.free_for_caller(5.9, 2, 8) and not threads.free_for_caller(6.5, 2, 8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_cpus", lambda: 2)
    try:
        threads.set_policy("auto")
        for others, want in ((0.0, 2), (0.9, 1), (None, 1)):
            monkeypatch.setattr(threads._LOAD, "sample", lambda others=others: others)
            with threads.call_threads():
                assert torch.get_num_threads() == want, others
                with threads.wide(threads.WIDE_MIN_MACS):  # a large operation always gets the caller's threads
                    assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_machine_load_counts_other_processes_not_this_one():
    """Busy work in this process between two samples is not counted as the machine being busy."""
    load = threads._MachineLoad()
    if load._machine_busy() is None:
        pytest.skip("no /proc/stat here")
    load.sample()
    time.sleep(0.3)
    resting = load.sample()  # whatever the other processes do anyway
    deadline = time.monotonic() + 0.3
    x = 0
    while time.monotonic() < deadline:  # this process keeps one core busy
        x += 1
    working = load.sample()
    assert resting is not None and working is not None
    assert working < resting + 0.5  # our own core of work is not counted as the machine being busy
    assert load.sample() == working  # an interval under MIN_INTERVAL reuses the last measurement


def _plan(v, **kw):
    cfg = tp.TangoConfig(retention_ratio=0.1, reference_merge_order=True, **kw)
    return tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg)


@pytest.mark.parametrize("make", [lambda: ar1_video(12, (8, 8), 96, num_cuts=1, seed=2),
                                  lambda: ar1_video(6, (14, 14), 64, num_cuts=0, seed=4)])
def test_plans_do_not_depend_on_threads_or_policy(make):
    """The plan is the same with 1 or 2 threads and with or without the size rule (large pool screened too:
    `max_block_elements` small enough that the second video's pool goes through the tiled, screened path)."""
    v = make()
    before = torch.get_num_threads()
    plans = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for policy in ("size", "caller", "auto"):
                threads.set_policy(policy)
                plans.append(_plan(v))
                plans.append(_plan(v, max_block_elements=1 << 16))
    finally:
        threads.set_policy("auto")
        torch.set_num_threads(before)
    for i, p in enumerate(plans):  # even: the default block size, odd: the small one
        q = plans[i % 2]
        assert torch.equal(p.kept_indices, q.kept_indices) and torch.equal(p.features, q.features), i


@pytest.mark.parametrize("n,m,k", [(30, 30, 898), (150, 150, 3586), (300, 40, 3586)])
def test_products_do_not_depend_on_thread_count(n, m, k):
    """The matrix products the engine narrows or widens give the same bits with 1 or 2 threads."""
    g = torch.Generator().manual_seed(n + m + k)
    a, b = torch.randn(1, n, k, generator=g), torch.randn(1, m, k, generator=g)
    before = torch.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out.append((torch.matmul(a, b.mT), torch.cdist(a, b), torch.mm(a[0].bfloat16(), b[0].bfloat16().T)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(x, y) for x, y in zip(*out))


def test_broadcast_matches_torch():
    for a, b in [((3, 1, 5), (4, 5)), ((2, 7, 6), (1, 1, 6)), ((5,), (2, 3, 5)), ((1,), (1,))]:
        assert strope._broadcast(a, b) == tuple(torch.broadcast_shapes(a, b))
    with pytest.raises(RuntimeError):
        strope._broadcast((3, 2), (4, 2))


def test_first_call_imports_nothing_heavy():
    """A process's first call must not pull in sympy (torch.broadcast_shapes did: 0.35 s on the first call)."""
    code = ("import sys, torch, tango_plugin as tp\n"
            "from tango_plugin.testing.synthetic import ar1_video\n"
            "v = ar1_video(8, (6, 6), 48, num_cuts=1)\n"
            "before = 'sympy' in sys.modules\n"
            "cfg = tp.TangoConfig(retention_ratio=0.2)\n"
            "tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg)\n"
            "print(before, 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         check=True)
    before, after = out.stdout.split()
    assert after == before == "False"
