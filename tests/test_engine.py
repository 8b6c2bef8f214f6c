"""The framework-free engine: budgets, segmentation, ST-RoPE, clustering, merging, determinism, bad input."""

import math
import subprocess
import sys

import pytest
import torch

import tango_plugin as tp
from tango_plugin.engine.dpc import merge_clusters
from tango_plugin.engine.segmentation import fastvid_segments, holitom_segments
from tango_plugin.engine.strope import apply_strope_, strope_sections
from tango_plugin.engine.tango import adjusted_ratio, frame_budgets, segment_budgets
from tango_plugin.testing import synthetic_video


def _video(T=8, side=4, D=64, seed=0, **kw):
    return synthetic_video(T, (side, side), D, seed=seed, **kw)


def _run(v, **cfg):
    return tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, tp.TangoConfig(**cfg),
                                 v.frame_embeddings)


# ----------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("L,r,raw,k_s,k_c,m", [
    (196, 0.10, 20, 12, 8, 18), (196, 0.15, 30, 18, 12, 27), (196, 0.20, 40, 24, 16, 36),
    (169, 0.121739, 21, 12, 9, 18), (169, 0.182609, 31, 18, 13, 27), (169, 0.243478, 42, 25, 17, 37),
])
def test_budget_table_of_spec(L, r, raw, k_s, k_c, m):
    assert frame_budgets(L, r, 0.4) == (k_s, k_c)
    assert segment_budgets(L, r, 0.4) == (k_s, k_c)
    assert sum(frame_budgets(L, r, 0.4)) == raw
    assert int(1.5 * k_s) == m


def test_adjusted_ratio_compensates_static_tokens():
    # 32 frames, 100 static tokens: 20 static kept once + 32 x 19 dynamic (docs/algorithm.md §4.6 example)
    r_adj = adjusted_ratio(0.1, 32, 196, 100)
    assert r_adj == pytest.approx(0.1 / ((32 * 196 - 31 * 100) / (32 * 196)))
    assert math.ceil(100 * r_adj) == 20 and math.ceil(96 * r_adj) == 19
    assert adjusted_ratio(0.5, 10, 4, 4) == 1.0  # capped


def test_kept_count_when_every_frame_is_its_own_segment():
    g = torch.Generator().manual_seed(1)
    feats, sal = torch.randn(5, 196, 96, generator=g), torch.rand(5, 196, generator=g)
    for r, per_frame in [(0.1, 20), (0.15, 30), (0.2, 40)]:
        res = tp.prune_video_tokens(feats, sal, (14, 14), config=tp.TangoConfig(retention_ratio=r))
        assert res.kept_indices.numel() == 5 * per_frame
        per = torch.bincount(res.kept_indices // 196, minlength=5)
        assert per.tolist() == [per_frame] * 5


# ------------------------------------------------------------------------------------------ segmentation
def _holitom_brute(sim, tau):
    """docs/algorithm.md §2.1, written out literally."""
    ok = (sim > tau).tolist()
    T = len(ok) + 1
    L = len(ok[0]) if ok else 0

    def S(s, e):
        if e <= s:
            return 0
        return (e - s) * sum(all(ok[k][tok] for k in range(s, e)) for tok in range(L))

    dp, start = {-1: 0}, {}
    for i in range(T):
        best, st = dp[i - 1], i
        for w in range(2, i + 2):
            v = dp[i - w] + S(i - w + 1, i)
            if v > best:
                best, st = v, i - w + 1
        dp[i], start[i] = best, st
    out, e = [], T - 1
    while e >= 0:
        out.append(e - start[e] + 1)
        e = start[e] - 1
    return out[::-1]


def test_holitom_crafted():
    sim = torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.9, 0.2], [0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [0.95, 0.9, 0.9]])
    assert holitom_segments(sim, 0.8) == [3, 3]
    assert holitom_segments(torch.zeros(6, 5), 0.8) == [1] * 7  # nothing static: one frame per segment
    assert holitom_segments(torch.ones(4, 3), 0.8) == [5]
    assert holitom_segments(torch.ones(0, 3), 0.8) == [1]
    assert holitom_segments(torch.ones(5, 3), 0.8, max_window=2) == [2, 2, 2]


@pytest.mark.parametrize("seed", range(6))
def test_holitom_matches_literal_dp(seed):
    g = torch.Generator().manual_seed(seed)
    sim = (torch.rand(9, 4, generator=g) > 0.35).float()  # many ties in the dynamic programme
    assert holitom_segments(sim, 0.5) == _holitom_brute(sim, 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_static_counts_on_the_device_equal_a_literal_count(seed):
    """The per-token part of the segmentation runs on the input's device: static[s, w] counts the tokens similar
    over every pair of the window [s, s + w]."""
    from tango_plugin.engine.segmentation import static_counts

    g = torch.Generator().manual_seed(seed)
    similar = torch.rand(11, 7, generator=g) > 0.3
    T = similar.shape[0] + 1
    want = torch.zeros(T, T, dtype=torch.int64)
    for s in range(T - 1):
        for w in range(T - s):
            want[s, w] = int(similar[s:s + w].all(dim=0).sum())
    assert torch.equal(static_counts(similar), want)


def test_holitom_max_window():
    sizes = holitom_segments(torch.ones(9, 2), 0.5, max_window=3)
    assert sum(sizes) == 10 and max(sizes) <= 3


def test_fastvid_crafted():
    sim = torch.tensor([0.99, 0.50, 0.98, 0.97, 0.40, 0.99, 0.96])  # T = 8
    assert fastvid_segments(sim, tau=0.6, min_cuts=1) == [2, 3, 3]  # cuts after frames 1 and 4 (below tau)
    assert fastvid_segments(sim, tau=0.0, min_cuts=3) == [2, 3, 3]  # the two lowest similarities
    assert fastvid_segments(sim, tau=0.0, min_cuts=4) == [2, 3, 2, 1]  # + the third lowest (0.96, pair 6)
    assert fastvid_segments(torch.zeros(0), tau=0.5) == [1]
    assert sum(fastvid_segments(torch.rand(30), tau=0.5)) == 31


# ------------------------------------------------------------------------------------------------ ST-RoPE
def test_strope_sections():
    assert strope_sections(3584) == (1196, 1194, 1194)
    assert strope_sections(896) == (300, 298, 298)
    for bad in (5, 7, 0, 895):
        with pytest.raises(ValueError, match="ST-RoPE"):
            strope_sections(bad)


def test_strope_preserves_norms_and_depends_on_offsets_only():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(3, 6, 48, generator=g), dim=-1)
    a = apply_strope_(x.clone(), (2, 3), torch.tensor([0.0, 1.0, 2.5]))
    assert torch.allclose(a.norm(dim=-1), torch.ones(3, 6), atol=1e-5)
    assert not torch.allclose(a, x)
    # the same two vectors placed at (t, h, w) and shifted by a common offset keep their dot product
    pair = torch.nn.functional.normalize(torch.randn(2, 48, generator=g), dim=-1)
    base = torch.zeros(2, 6, 48)
    base[0, 0], base[1, 4] = pair[0], pair[1]  # (t0, h0, w0) and (t1, h1, w1)
    r1 = apply_strope_(base.clone(), (2, 3), torch.tensor([0.0, 2.0]))
    r2 = apply_strope_(base.clone(), (2, 3), torch.tensor([5.0, 7.0]))
    assert torch.allclose(r1[0, 0] @ r1[1, 4], r2[0, 0] @ r2[1, 4], atol=1e-5)
    r3 = apply_strope_(base.clone(), (2, 3), torch.tensor([0.0, 9.0]))
    assert not torch.allclose(r1[0, 0] @ r1[1, 4], r3[0, 0] @ r3[1, 4], atol=1e-4)


# ------------------------------------------------------------------------------------ clustering, merging
def test_merge_weights_on_hand_made_cluster():
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 10.0]]])
    sources = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 3.0], [0.0, 10.0]]])
    assign = torch.tensor([[0, 0, 0, 1]])
    merged = merge_clusters(sources, assign, anchors, beta=0.6)
    mean = sources[0, :3].mean(dim=0)
    assert torch.allclose(merged[0, 0], 0.6 * anchors[0, 0] + 0.4 * mean)
    assert torch.equal(merged[0, 1], anchors[0, 1])  # a singleton stays unchanged
    merged = merge_clusters(sources, assign, anchors, beta=0.1)  # w = max(1/3, 0.1)
    assert torch.allclose(merged[0, 0], anchors[0, 0] / 3 + 2 * mean / 3)


# ------------------------------------------------------------------------------------------ whole video
def test_identical_frames_collapse_to_the_first_frame():
    frame = torch.randn(1, 16, 64)
    feats = frame.expand(6, -1, -1).clone()
    sal = torch.rand(1, 16).expand(6, -1).clone()
    res = tp.prune_video_tokens(feats, sal, (4, 4), config=tp.TangoConfig(retention_ratio=0.1))
    # one segment, all tokens static: r_adj = min(0.1 * 6, 1) = 0.6 -> ceil(16 * 0.6) = 10 tokens, frame 0 only
    assert res.kept_indices.numel() == 10
    assert int(res.kept_indices.max()) < 16
    salient = frame_budgets(16, 0.6, 0.4)[0]
    same = torch.isclose(res.features[:, None, :], frame[0][None], atol=1e-6).all(-1).any(-1)
    assert int(same.sum()) >= salient  # salient tokens carry the temporal mean of identical frames


def test_deterministic_and_inputs_untouched():
    v = _video(T=12, side=6, D=48, num_scenes=2)
    before = (v.features.clone(), v.saliency.clone(), v.timestamps.clone())
    runs = [_run(v, retention_ratio=0.2, sink_positions=[0, 7]) for _ in range(3)]
    for r in runs[1:]:
        assert torch.equal(r.kept_indices, runs[0].kept_indices) and torch.equal(r.features, runs[0].features)
    assert torch.equal(v.features, before[0]) and torch.equal(v.saliency, before[1])
    assert torch.equal(v.timestamps, before[2])
    assert torch.equal(runs[0].kept_indices, runs[0].kept_indices.sort().values)


def test_deterministic_with_ties():
    feats = torch.ones(4, 16, 12)
    feats[:, 8:] = -1.0
    sal = torch.ones(4, 16)
    a = tp.prune_video_tokens(feats, sal, (4, 4), config=tp.TangoConfig(retention_ratio=0.3))
    b = tp.prune_video_tokens(feats, sal, (4, 4), config=tp.TangoConfig(retention_ratio=0.3))
    assert torch.equal(a.kept_indices, b.kept_indices)


def test_bf16_matches_float32_run_of_the_same_values():
    v = _video(T=10, side=5, D=60, num_scenes=2)
    bf = v.features.to(torch.bfloat16)
    res_bf = tp.prune_video_tokens(bf, v.saliency, v.grid_hw, v.timestamps, tp.TangoConfig(retention_ratio=0.2))
    res_32 = tp.prune_video_tokens(bf.float(), v.saliency, v.grid_hw, v.timestamps,
                                   tp.TangoConfig(retention_ratio=0.2))
    assert res_bf.features.dtype == torch.bfloat16
    assert torch.equal(res_bf.kept_indices, res_32.kept_indices)
    # the same selection; merged/averaged rows differ only by the bf16 rounding of the result
    assert torch.allclose(res_bf.features.float(), res_32.features, rtol=1e-2, atol=1e-2)


def test_single_frame_and_image_path():
    v = _video(T=1, side=14, D=48)
    res = _run(v, retention_ratio=0.1)
    assert res.kept_indices.numel() == 20


def test_sinks_are_avoided_when_salient():
    feats = torch.randn(1, 16, 24)
    sal = torch.full((1, 16), 0.01)
    sal[0, 3] = 10.0
    base = tp.prune_video_tokens(feats, sal, (4, 4), config=tp.TangoConfig(retention_ratio=0.1, context_ratio=0.0))
    assert 3 in base.kept_indices.tolist()
    masked = tp.prune_video_tokens(feats, sal, (4, 4),
                                   config=tp.TangoConfig(retention_ratio=0.1, context_ratio=0.0, sink_positions=[3]))
    assert 3 not in masked.kept_indices.tolist()


def test_fastvid_segmentation_runs_on_frame_embeddings():
    v = _video(T=16, side=4, D=48, num_scenes=4)
    res = _run(v, segmentation="fastvid", retention_ratio=0.25)
    assert res.kept_indices.numel() > 0
    with pytest.raises(ValueError, match="frame_embeddings"):
        tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, config=tp.TangoConfig(segmentation="fastvid"))


def test_merge_order_option_only_moves_merged_features():
    v = _video(T=16, side=6, D=48, num_scenes=1, dynamic_fraction=0.6)
    fixed, ref = _run(v, retention_ratio=0.15), _run(v, retention_ratio=0.15, reference_merge_order=True)
    assert torch.equal(fixed.kept_indices, ref.kept_indices)
    rows_fixed = {tuple(r.tolist()) for r in fixed.features}
    rows_ref = {tuple(r.tolist()) for r in ref.features}
    assert rows_fixed == rows_ref  # the same merged vectors ...
    assert not torch.equal(fixed.features, ref.features)  # ... on other positions


# ------------------------------------------------------------------------------------------ strategies
def test_baselines_and_registry():
    v = _video(T=4, side=4, D=24)
    assert {"tango", "topk", "uniform"} <= set(tp.list_strategies())
    top = _run(v, strategy="topk", retention_ratio=0.25)
    assert top.kept_indices.numel() == 16
    best = v.saliency.topk(4, dim=1).indices + torch.arange(4)[:, None] * 16
    assert set(top.kept_indices.tolist()) == set(best.flatten().tolist())
    uni = _run(v, strategy="uniform", retention_ratio=0.25)
    assert (uni.kept_indices % 16).unique().tolist() == [0, 5, 10, 15]

    with pytest.raises(ValueError, match="already registered"):
        tp.register_strategy("topk", type("Other", (tp.PruningStrategy,), {}))

    @tp.register_strategy("test_first_token")
    class FirstToken(tp.PruningStrategy):
        def select(self, tokens, config):
            idx = torch.arange(tokens.num_frames) * tokens.tokens_per_frame
            return tp.PrunePlan(idx, tokens.features.reshape(-1, tokens.features.shape[-1])[idx])

    res = _run(v, strategy="test_first_token")
    assert res.kept_indices.tolist() == [0, 16, 32, 48]
    tp.unregister_strategy("test_first_token")
    assert "test_first_token" not in tp.list_strategies()
    with pytest.raises(ValueError, match="unknown strategy 'test_first_token'"):
        tp.unregister_strategy("test_first_token")
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*tango"):
        _run(v, strategy="nope")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(features=torch.randn(2, 15, 8), saliency=torch.rand(2, 15)), "grid_hw"),
    (dict(saliency=torch.rand(3, 16)), "saliency must have shape"),
    (dict(timestamps=torch.arange(5.0)), "timestamps must have shape"),
    (dict(features=torch.full((2, 16, 8), float("nan"))), "non-finite"),
    (dict(saliency=torch.full((2, 16), float("inf"))), "non-finite"),
    (dict(timestamps=torch.tensor([0.0, float("nan")])), "non-finite"),
    (dict(features=torch.randn(0, 16, 8), saliency=torch.rand(0, 16)), "T >= 1"),
    (dict(features=torch.randn(2, 0, 8), saliency=torch.rand(2, 0), grid_hw=(0, 0)), "L >= 1"),
    (dict(features=torch.randn(2, 16, 7)), "even D"),
    (dict(features=torch.randn(2, 16, 4)), "even D"),
    (dict(features=torch.randn(2, 16)), r"\(T, L, D\)"),
    (dict(grid_hw=(4,)), "grid_hw"),
])
def test_bad_input_is_a_clear_error(kwargs, match):
    args = dict(features=torch.randn(2, 16, 8), saliency=torch.rand(2, 16), grid_hw=(4, 4), timestamps=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tp.prune_video_tokens(**args)


def test_bad_sink_position():
    with pytest.raises(ValueError, match="sink_positions.*outside the grid"):
        tp.prune_video_tokens(torch.randn(2, 16, 8), torch.rand(2, 16), (4, 4),
                              config=tp.TangoConfig(sink_positions=[16]))


def test_engine_does_not_import_transformers():
    code = ("import sys, torch, tango_plugin as tp\n"
            "tp.prune_video_tokens(torch.randn(3, 16, 12), torch.rand(3, 16), (4, 4))\n"
            "assert 'transformers' not in sys.modules, 'engine imported transformers'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_256_frames_of_3584_dims_stay_memory_bounded():
    """The issue's largest size: one 256-frame segment (context pool of ~22k tokens) in bounded memory."""
    v = synthetic_video(256, (14, 14), 3584, num_scenes=1, dynamic_fraction=0.5, seed=256)

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    res = tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, tp.TangoConfig())
    grown = status("VmHWM") - base
    M = 256 * 86  # pool size: a full M x M float32 matrix alone would be ~1.9 GB
    assert grown < 4 * M * M, f"peak grew by {grown / 2**30:.2f} GiB"
    assert 0.09 * 256 * 196 < res.kept_indices.numel() < 0.12 * 256 * 196


def test_intra_llm_merge_hand_made():
    from tango_plugin.engine.intra_llm import intra_llm_keep_count, intra_llm_merge

    assert [intra_llm_keep_count(n, 0.5) for n in (4, 5, 7, 169 * 64 + 13)] == [2, 2, 4, round((169 * 64 + 13) / 2)]
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 0.05]])
    scores = torch.tensor([0.5, 0.4, 0.05, 0.03, 0.02])
    kept, new = intra_llm_merge(hidden, scores, ratio=0.4)
    assert kept.tolist() == [0, 1]
    # token 0 absorbs tokens 2 and 4, token 1 absorbs token 3
    pooled0 = (hidden[0] + hidden[2] + hidden[4]) / 3
    pooled1 = (hidden[1] + hidden[3]) / 2
    assert torch.allclose(new[0], 0.6 * hidden[0] + 0.4 * pooled0)
    assert torch.allclose(new[1], 0.6 * hidden[1] + 0.4 * pooled1)
    kept, new = intra_llm_merge(hidden, scores, ratio=0.05)  # round(0.25) == 0
    assert kept.numel() == 0 and new.shape == (0, 2)


def test_single_frames_in_chunks_give_the_same_plan(monkeypatch):
    """The single-frame path runs a few frames at a time (bounded temporaries); any chunk size, the same bits."""
    import tango_plugin.engine.tango as engine

    v = synthetic_video(12, (7, 7), 64, num_scenes=12, dynamic_fraction=1.0, seed=5)
    cfg = tp.TangoConfig(retention_ratio=0.2)
    plans = []
    for chunk_bytes in (1, 5 * 49 * 66 * 4, 1 << 40):  # one frame, five frames, all at once
        monkeypatch.setattr(engine, "FRAME_CHUNK_BYTES", chunk_bytes)
        plans.append(tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg))
    for p in plans[1:]:
        assert torch.equal(p.kept_indices, plans[0].kept_indices) and torch.equal(p.features, plans[0].features)
