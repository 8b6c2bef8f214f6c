"""The exact-count budget (`TangoConfig(exact_budget=True)`, docs/algorithm.md, "Exact-count budget").

For every registered strategy the kept count is `exact_keep_count(T, L, r) = T * max(1, ceil(L * r))`, the kept set
a superset (top-up) or subset (trim) of the plain plan's, sorted and unique, deterministic; a model adapter's report
counts the same."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tango_plugin as tp
from tango_plugin.engine.budgets import exact_keep_count, frame_keep_count, plain_keep_ceiling
from tango_plugin.engine.tango import masked_saliency
from tango_plugin.engine.types import PrunePlan, VisualTokens
from tango_plugin.strategies import list_strategies, run_strategy
from tango_plugin.strategies.base import fit_exact_budget

FAST = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BUILTIN = ["divprune", "fastvid", "holitom", "random", "tango", "topk", "uniform", "vidcom2", "visionzip"]
STRATEGIES = [s for s in list_strategies() if not s.startswith("test_")]


@st.composite
def video(draw):
    T, H, W = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    L = H * W
    D = draw(st.sampled_from([8, 12, 16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    kind = draw(st.sampled_from(["random", "few_vectors", "static"]))
    if kind == "random":
        feats = torch.randn(T, L, D, generator=g)
    elif kind == "few_vectors":  # exact duplicates: degenerate clusters (Tango may repeat an index), tied scores
        basis = torch.randn(draw(st.integers(1, 3)), D, generator=g)
        feats = basis[torch.randint(0, basis.shape[0], (T, L), generator=g)]
    else:  # one frame repeated with a little noise: static tokens, multi-frame segments
        feats = torch.randn(1, L, D, generator=g).expand(T, L, D) + 0.01 * torch.randn(T, L, D, generator=g)
    sal = torch.rand(T, L, generator=g) if draw(st.booleans()) else torch.ones(T, L)  # ties
    sinks = tuple(sorted(set(draw(st.lists(st.integers(0, L - 1), max_size=2)))))
    ratio = draw(st.sampled_from([0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0]))
    tokens = VisualTokens(features=feats.contiguous(), saliency=sal, grid_hw=(H, W), sink_positions=sinks,
                          timestamps=torch.arange(T, dtype=torch.float32) * 0.5)
    return tokens, ratio


def test_formula():
    assert exact_keep_count(32, 196, 0.1) == 640 == 32 * math.ceil(19.6)
    assert exact_keep_count(8, 169, 0.121739) == 8 * 21
    assert exact_keep_count(1, 16, 0.01) == 1  # at least one per frame
    assert exact_keep_count(4, 16, 1.0) == 64
    for T, L, r in [(3, 7, 0.3), (5, 10, 0.7), (2, 196, 0.15)]:
        assert exact_keep_count(T, L, r) == T * frame_keep_count(L, r)  # what topk keeps
    for bad in [(0, 4, 0.1), (2, 0, 0.1), (2, 4, 0.0), (2, 4, 1.5), (2.0, 4, 0.1), (True, 4, 0.1), (2, 4, "0.1")]:
        with pytest.raises(ValueError):
            exact_keep_count(*bad)
    assert tp.TangoConfig().exact_budget is False
    with pytest.raises(ValueError, match="exact_budget"):
        tp.TangoConfig(exact_budget=1)


def test_every_builtin_strategy_is_covered():
    assert set(BUILTIN) <= set(STRATEGIES)


@pytest.mark.parametrize("name", STRATEGIES)
@FAST
@given(data=video())
def test_exact_count_and_relation_to_the_plain_plan(name, data):
    tokens, ratio = data
    T, L, D = tokens.features.shape
    before = tokens.features.clone(), tokens.saliency.clone()
    plain = run_strategy(tokens, tp.TangoConfig(retention_ratio=ratio, strategy=name))
    cfg = tp.TangoConfig(retention_ratio=ratio, strategy=name, exact_budget=True)
    exact = run_strategy(tokens, cfg)
    again = run_strategy(tokens, cfg)
    K = exact_keep_count(T, L, ratio)
    idx = exact.kept_indices
    assert idx.numel() == K == exact.features.shape[0]
    assert idx.numel() == 0 or bool((idx[1:] > idx[:-1]).all())  # sorted, unique
    assert torch.equal(idx, again.kept_indices) and torch.equal(exact.features, again.features)
    assert torch.equal(tokens.features, before[0]) and torch.equal(tokens.saliency, before[1])
    plain_set = set(plain.kept_indices.tolist())
    exact_set = set(idx.tolist())
    if len(plain_set) <= K:
        assert plain_set <= exact_set  # top-up: a superset
    else:
        assert exact_set <= plain_set  # trim: a subset
    # the plan's tokens keep the plan's features (first copy of a repeat); added tokens their own
    first = {}
    for i, f in zip(plain.kept_indices.tolist(), plain.features):
        first.setdefault(i, f)
    flat = tokens.features.reshape(T * L, D)
    for i, f in zip(idx.tolist(), exact.features):
        assert torch.equal(f, first[i] if i in first else flat[i])
    assert plain.kept_indices.numel() <= plain_keep_ceiling(T, L, ratio)  # the documented plain-mode bound


@FAST
@given(data=video())
def test_top_up_takes_the_most_salient_unkept_and_trim_drops_the_least_salient(data):
    tokens, _ = data
    T, L, D = tokens.features.shape
    N = T * L
    scores = masked_saliency(tokens.saliency, tokens.sink_positions).reshape(-1)
    flat = tokens.features.reshape(N, D)
    g = torch.Generator().manual_seed(N)
    base = torch.randperm(N, generator=g)[: max(1, N // 3)].sort().values
    plan = PrunePlan(base, flat[base] * 2)
    for target in {0, base.numel() // 2, base.numel(), min(N, base.numel() + 3), N}:
        out = fit_exact_budget(plan, tokens, target)
        assert out.kept_indices.numel() == target
        kept = set(out.kept_indices.tolist())
        if target >= base.numel():
            added = kept - set(base.tolist())
            rest = [i for i in range(N) if i not in kept and i not in set(base.tolist())]
            for a in added:  # every added token outranks every token left out (ties: the lower index)
                assert all((scores[a], -a) > (scores[r], -r) for r in rest)
        else:
            dropped = set(base.tolist()) - kept
            for d in dropped:
                assert all((scores[k], -k) > (scores[d], -d) for k in kept)


def test_repeated_index_is_kept_once_and_counts_once():
    feats = torch.randn(2, 4, 8)
    tokens = VisualTokens(features=feats, saliency=torch.rand(2, 4), grid_hw=(2, 2))
    plan = PrunePlan(torch.tensor([1, 1, 5]), torch.randn(3, 8))
    out = fit_exact_budget(plan, tokens, 2)
    assert out.kept_indices.tolist() == [1, 5] and torch.equal(out.features, plan.features[[0, 2]])
    out = fit_exact_budget(plan, tokens, 3)
    assert out.kept_indices.numel() == 3 and {1, 5} < set(out.kept_indices.tolist())


@pytest.mark.filterwarnings("ignore:tango_plugin. preset sink positions")
@pytest.mark.parametrize("strategy", ["tango", "topk"])
@torch.no_grad()
def test_adapter_report_counts_the_formula(strategy):
    """Qwen2-VL tiny model, a 2-video batch: `kept_by_strategy` is the formula on each video's (T, L) grid."""
    from adapter_testers import TESTERS

    from tango_plugin import testing as tiny

    t = TESTERS["qwen2_vl"]
    model = t.model()
    inputs = t.inputs(model, [[tiny.VideoSpec(8, seed=1)], [tiny.VideoSpec(6, seed=2)]],
                      ["what happens?", "describe the scene in detail."])
    grids = []
    cfg = tp.TangoConfig(retention_ratio=0.3, strategy=strategy, exact_budget=True)
    with tp.enabled(model, cfg, on_plan=lambda record: grids.append(tuple(record.tokens.saliency.shape)),
                    fps=2.0, **t.options) as h:
        model(**inputs)
        rows = h.report()["samples"]
    assert len(grids) == 2
    for row, (T, L) in zip(rows, grids):
        assert row["kept_by_strategy"] == exact_keep_count(T, L, 0.3) == row["visual_tokens_after"]
