"""The baseline strategies: each method's defining property on crafted inputs, the contract every registered
strategy must keep (parametrized over `list_strategies()`, so future strategies are covered), and every strategy
through every adapter tester on tiny models."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from adapter_testers import TESTERS, gen

import tango_plugin as tango
from tango_plugin.engine.types import VisualTokens
from tango_plugin.strategies import get_strategy, run_strategy
from tango_plugin.strategies.divprune import max_min_select
from tango_plugin.strategies.fastvid import FastVIDStrategy
from tango_plugin.strategies.vidcom2 import VidCom2Options, vidcom2_frame_counts, vidcom2_scores
from tango_plugin.strategies.visionzip import visionzip_counts
from tango_plugin.testing import synthetic_video

pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. preset sink positions")

BASELINES = ["random", "visionzip", "divprune", "fastvid", "holitom", "vidcom2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machines are small and shared: torch's intra-op threads then spin against each other and make tiny
    # ops 100x slower (index_add_ on 500 rows: 0.1 s with 2 threads under load, 0.1 ms with one).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg(r: float = 0.25, strategy: str = "tango", **options) -> tango.TangoConfig:
    """A config for `strategy` carrying `strategy_options` (set as an attribute until TangoConfig has the field)."""
    config = tango.TangoConfig(retention_ratio=r, strategy=strategy)
    if options:
        if "strategy_options" in {f.name for f in dataclasses.fields(config)}:
            return config.replace(strategy_options=options)
        object.__setattr__(config, "strategy_options", options)  # TangoConfig refuses unknown attributes
    return config


def tokens_of(video, dtype=None, sinks=()) -> VisualTokens:
    feats = video.features if dtype is None else video.features.to(dtype)
    return VisualTokens(features=feats, saliency=video.saliency, grid_hw=video.grid_hw, timestamps=video.timestamps,
                        frame_embeddings=video.frame_embeddings, sink_positions=tuple(sinks))


def per_frame(plan, L: int, T: int) -> list:
    return torch.bincount(plan.kept_indices // L, minlength=T).tolist()


def expected_count(name: str, T: int, L: int, r: float):
    """(low, high) of the documented kept count (docs/strategies.md); unknown strategies: anything in [1, T L]."""
    per = max(1, math.ceil(L * r))
    exact = {"topk": T * per, "uniform": T * per, "random": T * per, "visionzip": T * per, "fastvid": T * per,
             "vidcom2": T * per, "divprune": max(1, math.ceil(T * L * r))}
    if name in exact:
        return exact[name], exact[name]
    if name == "holitom":  # fewer only where temporal merging alone leaves fewer tokens than the budget
        return 1, T * per
    return 1, T * L


# ------------------------------------------------------------------------------ the contract, every strategy
VIDEOS = {
    "scenes": dict(num_frames=6, grid_hw=(4, 4), dim=32, num_scenes=2, seed=1),
    "one_frame": dict(num_frames=1, grid_hw=(3, 5), dim=16, seed=2),
    "long_static": dict(num_frames=9, grid_hw=(2, 4), dim=24, num_scenes=1, dynamic_fraction=0.2, seed=3),
}


@pytest.mark.parametrize("name", tango.list_strategies())
@pytest.mark.parametrize("video", sorted(VIDEOS))
@pytest.mark.parametrize("r", [0.1, 0.5, 1.0])
def test_strategy_contract(name, video, r):
    v = synthetic_video(**VIDEOS[video])
    tokens = tokens_of(v, sinks=(0,))
    T, L, D = tokens.features.shape
    before = [t.clone() for t in (tokens.features, tokens.saliency, tokens.frame_embeddings)]
    config = cfg(r, name)
    plan = get_strategy(name).select(tokens, config)
    idx = plan.kept_indices
    assert idx.dtype == torch.long and idx.dim() == 1
    assert bool((idx[1:] > idx[:-1]).all()), "kept indices must be sorted and unique"
    assert int(idx.min()) >= 0 and int(idx.max()) < T * L
    low, high = expected_count(name, T, L, r)
    assert low <= idx.numel() <= high, (name, idx.numel(), (low, high))
    assert plan.features.shape == (idx.numel(), D)
    assert plan.features.dtype == tokens.features.dtype and plan.features.device == tokens.features.device
    assert bool(torch.isfinite(plan.features).all())
    for old, new in zip(before, (tokens.features, tokens.saliency, tokens.frame_embeddings)):
        assert torch.equal(old, new), "a strategy modified its input"
    again = get_strategy(name).select(tokens, config)
    assert torch.equal(again.kept_indices, idx) and torch.equal(again.features, plan.features)
    run_strategy(tokens, config)  # the central checks accept the plan


@pytest.mark.parametrize("name", tango.list_strategies())
def test_strategy_keeps_the_dtype(name):
    tokens = tokens_of(synthetic_video(**VIDEOS["scenes"]), dtype=torch.bfloat16)
    plan = get_strategy(name).select(tokens, cfg(0.25, name))
    assert plan.features.dtype == torch.bfloat16 and bool(torch.isfinite(plan.features.float()).all())


@pytest.mark.parametrize("name", BASELINES)
def test_unknown_option_names_the_key_strategy_and_allowed(name):
    tokens = tokens_of(synthetic_video(**VIDEOS["scenes"]))
    with pytest.raises(ValueError, match=rf"strategy '{name}'.*'no_such_knob'.*allowed: \["):
        get_strategy(name).select(tokens, cfg(0.25, name, no_such_knob=1))


@pytest.mark.parametrize("name, key, bad", [("random", "seed", -1), ("visionzip", "contextual_fraction", 1.5),
                                            ("fastvid", "anchor_interval", 0), ("holitom", "num_neighbors", 0),
                                            ("vidcom2", "temperature", 0.0), ("divprune", "max_matrix_tokens", -5)])
def test_bad_option_value_is_an_error(name, key, bad):
    tokens = tokens_of(synthetic_video(**VIDEOS["scenes"]))
    with pytest.raises(ValueError, match=rf"strategy '{name}'.*{key}"):
        get_strategy(name).select(tokens, cfg(0.25, name, **{key: bad}))


# ------------------------------------------------------------------------------ random
def test_random_is_seeded_and_exact():
    tokens = tokens_of(synthetic_video(**VIDEOS["scenes"]))
    T, L = tokens.saliency.shape
    a = run_strategy(tokens, cfg(0.25, "random"))
    b = run_strategy(tokens, cfg(0.25, "random", seed=0))
    c = run_strategy(tokens, cfg(0.25, "random", seed=1))
    assert torch.equal(a.kept_indices, b.kept_indices)  # default seed is 0
    assert not torch.equal(a.kept_indices, c.kept_indices)
    assert per_frame(a, L, T) == [math.ceil(L * 0.25)] * T and per_frame(c, L, T) == [math.ceil(L * 0.25)] * T
    # content-independent: other features, same seed -> same positions
    other = dataclasses.replace(tokens, features=torch.randn_like(tokens.features))
    assert torch.equal(run_strategy(other, cfg(0.25, "random")).kept_indices, a.kept_indices)


# ------------------------------------------------------------------------------ visionzip
def test_visionzip_split_matches_the_paper():
    # LLaVA-1.5 settings of the paper: 64 of 576 tokens = 54 dominant + 10 contextual, 192 = 162 + 30
    assert visionzip_counts(576, 64 / 576, 10 / 64) == (54, 10)
    assert visionzip_counts(576, 192 / 576, 10 / 64) == (162, 30)


def test_visionzip_dominant_by_attention_and_contexts_are_member_means():
    T, L, D = 2, 16, 8
    g = torch.Generator().manual_seed(0)
    feats = torch.empty(T, L, D)
    feats[:, :6] = torch.randn(T, 6, D, generator=g)
    e1, e2 = torch.zeros(D), torch.zeros(D)
    e1[0], e2[1] = 1.0, 1.0
    feats[:, 6:11] = e1 + 0.05 * torch.randn(T, 5, D, generator=g)  # group A, target = cell 6
    feats[:, 11:] = e2 + 0.05 * torch.randn(T, 5, D, generator=g)  # group B, target = cell 11
    sal = torch.cat([torch.linspace(1.0, 0.5, 6), torch.linspace(0.1, 0.0, 10)]).expand(T, L).clone()
    tokens = VisualTokens(feats, sal, (4, 4))
    # k = 8: contextual int(8 * 0.25) = 2, dominant 6 (cells 0..5); rest 6..15, targets every 10 // 2 = 5th
    plan = run_strategy(tokens, cfg(0.5, "visionzip", contextual_fraction=0.25))
    expected = torch.tensor([t * L + c for t in range(T) for c in [0, 1, 2, 3, 4, 5, 6, 11]])
    assert torch.equal(plan.kept_indices, expected)
    out = plan.features.view(T, 8, D)
    torch.testing.assert_close(out[:, :6], feats[:, :6], rtol=0, atol=0)  # dominant: unchanged
    torch.testing.assert_close(out[:, 6], feats[:, 6:11].mean(dim=1))
    torch.testing.assert_close(out[:, 7], feats[:, 11:].mean(dim=1))
    # the attention ranking decides: reverse it and the dominant set moves to the other end
    flipped = run_strategy(VisualTokens(feats, sal.flip(-1), (4, 4)), cfg(0.5, "visionzip", contextual_fraction=0.25))
    assert set((flipped.kept_indices[:8] % L).tolist()) >= set(range(10, 16))


# ------------------------------------------------------------------------------ divprune
def _ring(angles_deg):
    a = torch.tensor(angles_deg, dtype=torch.float32) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=-1)


def test_divprune_max_min_choice_on_known_points():
    # cosine distances: 0-10: 0.015, 0-90: 1, 0-180: 2, 10-90: 0.83, 10-180: 1.98, 90-180: 1.
    # first pick: 180 (its nearest point is farthest), then 0 (distance 2), then 90 (min distance 1 vs 0.015)
    pts = _ring([0.0, 10.0, 90.0, 180.0])
    assert max_min_select(pts, 3).tolist() == [3, 0, 2]
    tokens = VisualTokens(pts[None].clone(), torch.zeros(1, 4), (2, 2))
    assert run_strategy(tokens, cfg(0.5, "divprune")).kept_indices.tolist() == [0, 3]
    assert run_strategy(tokens, cfg(0.75, "divprune")).kept_indices.tolist() == [0, 2, 3]
    # the streamed path (no N x N matrix) makes the same choices
    assert max_min_select(pts, 3, max_matrix_tokens=0).tolist() == [3, 0, 2]


def test_divprune_prefers_new_directions_over_duplicates_and_ignores_saliency():
    # 3 copies of one direction, 3 other distinct directions: 4 picks take one copy and the 3 others
    pts = torch.cat([_ring([0.0]).expand(3, 2), _ring([60.0, 120.0, 240.0])])
    sal = torch.tensor([[9.0, 8.0, 7.0, 0.0, 0.0, 0.0]])
    plan = run_strategy(VisualTokens(pts[None].clone(), sal, (2, 3)), cfg(4 / 6, "divprune"))
    kept = plan.kept_indices.tolist()
    assert kept[1:] == [3, 4, 5] and kept[0] in (0, 1, 2)


# ------------------------------------------------------------------------------ fastvid
def _two_scenes(T=6, cut=3, L=16, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(L, D, generator=g), torch.randn(L, D, generator=g)
    feats = torch.stack([(a if t < cut else b) + 0.05 * torch.randn(L, D, generator=g) for t in range(T)])
    return VisualTokens(feats, torch.rand(T, L, generator=g), (4, 4))


def test_fastvid_scene_cut_is_a_segment_boundary():
    tokens = _two_scenes()
    fv = FastVIDStrategy()
    fv.name = "fastvid"
    assert fv.segments(tokens, cfg(0.25, "fastvid", min_segments=1)) == [3, 3]
    one_scene = dataclasses.replace(tokens, features=tokens.features[:1].expand(6, -1, -1).clone())
    assert fv.segments(one_scene, cfg(0.25, "fastvid", min_segments=1)) == [6]
    # DTM only (d = 1), anchors from every 4th frame of a segment: anchors sit on the first frame of each segment
    plan = run_strategy(tokens, cfg(0.25, "fastvid", min_segments=1, density_ratio=1.0))
    assert sorted(set((plan.kept_indices // 16).tolist())) == [0, 3]
    assert plan.kept_indices.numel() == 6 * 4
    plan = run_strategy(one_scene, cfg(0.25, "fastvid", min_segments=1, density_ratio=1.0))
    assert sorted(set((plan.kept_indices // 16).tolist())) == [0, 4]


def test_fastvid_anchor_merges_its_segment_members():
    # one scene of 4 frames whose cells barely change: 16 anchors (4 per frame) all come from the anchor frame 0,
    # and every later token joins the anchor of its own cell: anchor = w * anchor + (1 - w) * mean, w = max(1/4, beta)
    tokens = _two_scenes(T=4, cut=4)
    feats = tokens.features
    plan = run_strategy(tokens, cfg(0.25, "fastvid", min_segments=1, density_ratio=1.0))
    assert plan.kept_indices.tolist() == list(range(16))
    torch.testing.assert_close(plan.features, 0.6 * feats[0] + 0.4 * feats.mean(dim=0))
    plan = run_strategy(tokens, cfg(0.25, "fastvid", min_segments=1, density_ratio=1.0, beta=0.0))
    torch.testing.assert_close(plan.features, 0.25 * feats[0] + 0.75 * feats.mean(dim=0))


def test_fastvid_without_dtm_is_attention_topk():
    tokens = tokens_of(synthetic_video(**VIDEOS["scenes"]), sinks=(0,))
    a = run_strategy(tokens, cfg(0.25, "fastvid", density_ratio=0.0))
    b = run_strategy(tokens, cfg(0.25, "topk"))
    assert torch.equal(a.kept_indices, b.kept_indices) and torch.equal(a.features, b.features)


# ------------------------------------------------------------------------------ holitom
def test_holitom_merges_a_static_token_into_one():
    T, L, D = 4, 4, 16
    g = torch.Generator().manual_seed(0)
    static = torch.randn(D, generator=g)
    feats = torch.randn(T, L, D, generator=g)  # cells 1..3: independent every frame (dynamic)
    feats[:, 0] = static + 0.02 * torch.randn(T, D, generator=g)  # cell 0: the same token in every frame
    sal = torch.rand(T, L, generator=g)
    sal[:, 0] = 10.0  # the static token is the most attended one: a per-frame method would keep it 4 times
    plan = run_strategy(VisualTokens(feats, sal, (2, 2)), cfg(0.5, "holitom", similarity_threshold=0.8))
    kept = plan.kept_indices.tolist()
    cell0 = [i for i in kept if i % L == 0]
    assert cell0 == [0], "the static token must be kept once, at its first occurrence"
    torch.testing.assert_close(plan.features[kept.index(0)], feats[:, 0].mean(dim=0))
    assert len(kept) == T * 2  # budget n * ceil(L r) = 8: 1 merged static + 7 dynamic
    topk = run_strategy(VisualTokens(feats, sal, (2, 2)), cfg(0.5, "topk"))
    assert sum(1 for i in topk.kept_indices.tolist() if i % L == 0) == T


def test_holitom_clusters_the_merged_static_tokens_to_the_budget():
    # cells 0 and 1 are static and alike, cells 2 and 3 change every frame. Budget 4 * ceil(4 * 0.25) = 4 of a pool
    # of 2 static + 8 dynamic: round(4 * 2 / 10) = 1 static token, the centre merged with the other static cell
    T, L, D = 4, 4, 16
    g = torch.Generator().manual_seed(3)
    v = torch.randn(D, generator=g)
    feats = torch.randn(T, L, D, generator=g)
    feats[:, 0] = v + 0.02 * torch.randn(T, D, generator=g)
    feats[:, 1] = v + 0.02 * torch.randn(T, D, generator=g)
    plan = run_strategy(VisualTokens(feats, torch.rand(T, L, generator=g), (2, 2)), cfg(0.25, "holitom"))
    assert plan.kept_indices.numel() == 4
    static = [(k, i) for k, i in enumerate(plan.kept_indices.tolist()) if i % L in (0, 1)]
    assert len(static) == 1 and static[0][1] in (0, 1)  # once, in the segment's first frame
    centre, other = (0, 1) if static[0][1] == 0 else (1, 0)
    expected = 0.6 * feats[:, centre].mean(dim=0) + 0.4 * feats[:, other].mean(dim=0)
    torch.testing.assert_close(plan.features[static[0][0]], expected)


def test_holitom_keeps_everything_when_merging_leaves_less_than_the_budget():
    feats = torch.randn(1, 4, 8).expand(5, 4, 8).clone()  # fully static video: 4 tokens after temporal merging
    plan = run_strategy(VisualTokens(feats, torch.rand(5, 4), (2, 2)), cfg(0.5, "holitom"))
    assert plan.kept_indices.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(plan.features, feats[0])


# ------------------------------------------------------------------------------ vidcom2
def test_vidcom2_gives_a_unique_frame_more_budget():
    T, L, D = 6, 16, 32
    g = torch.Generator().manual_seed(0)
    scene = torch.randn(L, D, generator=g)
    feats = scene + 0.05 * torch.randn(T, L, D, generator=g)
    feats[4] = torch.randn(L, D, generator=g)  # frame 4 is unlike the others
    tokens = VisualTokens(feats, torch.rand(T, L, generator=g), (4, 4))
    plan = run_strategy(tokens, cfg(0.25, "vidcom2"))
    counts = per_frame(plan, L, T)
    assert sum(counts) == T * 4
    assert all(counts[4] > c for t, c in enumerate(counts) if t != 4), counts
    # the budget follows uniqueness, not position: move the unique frame and its budget moves with it
    moved = run_strategy(dataclasses.replace(tokens, features=feats.roll(2, dims=0)), cfg(0.25, "vidcom2"))
    assert per_frame(moved, L, T).index(max(per_frame(moved, L, T))) == 0
    # identical frames share the budget evenly
    uniqueness, _ = vidcom2_scores(scene.expand(T, L, D), VidCom2Options())
    assert vidcom2_frame_counts(uniqueness, L, 0.25, 0.01) == [4] * T


def test_vidcom2_keeps_the_most_unique_tokens_of_a_frame():
    L, D = 8, 16
    g = torch.Generator().manual_seed(1)
    base = torch.randn(D, generator=g)
    feats = (base + 0.05 * torch.randn(1, L, D, generator=g)).clone()
    feats[0, 5] = -base  # the odd one out in its frame and in the video
    plan = run_strategy(VisualTokens(feats, torch.zeros(1, L), (2, 4)), cfg(1 / 8, "vidcom2"))
    assert plan.kept_indices.tolist() == [5]


# ------------------------------------------------------------------------------ every strategy x every adapter
@pytest.mark.parametrize("tester", sorted(TESTERS))
@pytest.mark.parametrize("name", tango.list_strategies())
@pytest.mark.filterwarnings("ignore:tango_plugin. .*timestamps")  # the tiny inputs carry no frame times
@torch.no_grad()
def test_every_strategy_runs_with_every_adapter(name, tester):
    t = TESTERS[tester]
    model = t.model()
    inputs = t.single(model)
    handle = tango.enable(model, tango.TangoConfig(retention_ratio=0.25, strategy=name), **t.options)
    try:
        logits = model(**inputs).logits
        assert bool(torch.isfinite(logits).all())
        out = gen(model, inputs, n=2)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2
        row = handle.report()["samples"][0]
        assert row["visual_tokens_after"] < row["visual_tokens_before"], row
    finally:
        handle.remove()


def test_strategy_options_travel_in_the_config_json_and_knobs():
    from tango_plugin.knobs import config_from_knobs

    cfg = tango.TangoConfig(strategy="random", strategy_options={"seed": 3})
    assert tango.TangoConfig.from_json(cfg.to_json()) == cfg
    from_text = config_from_knobs({"tango_strategy": "random", "tango_strategy_options": '{"seed": 3}'})[0]
    assert from_text == cfg
    with pytest.raises(ValueError, match="tango_strategy_options.*a JSON object"):
        config_from_knobs({"tango_strategy_options": "{seed"})
    with pytest.raises(ValueError, match="strategy_options=.* must be None or a dict"):
        tango.TangoConfig(strategy_options=[1])
    feats, sal = torch.randn(3, 16, 8), torch.rand(3, 16)
    a = tango.prune_video_tokens(feats, sal, (4, 4), config=cfg.replace(retention_ratio=0.25))
    b = tango.prune_video_tokens(feats, sal, (4, 4), config=cfg.replace(retention_ratio=0.25, strategy_options={
        "seed": 4}))
    assert not torch.equal(a.kept_indices, b.kept_indices)  # the seed reached the strategy
    with pytest.raises(ValueError, match="nope"):
        tango.prune_video_tokens(feats, sal, (4, 4), config=cfg.replace(strategy_options={"nope": 1}))


# ============================================================================================ EVS
def _evs_video():
    """3 frames of a 2 x 2 grid in 2-D features: frame 1 repeats frame 0 except position 3, which turns 90 degrees;
    frame 2 repeats frame 1 except position 0 (45 degrees) and position 2 (reversed)."""
    f0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    f1 = f0.clone()
    f1[3] = torch.tensor([0.0, 1.0])
    f2 = f1.clone()
    f2[0] = torch.tensor([1.0, 1.0])
    f2[2] = torch.tensor([-1.0, -1.0])
    feats = torch.stack([f0, f1, f2])
    return tango.VisualTokens(features=feats, saliency=torch.rand(3, 4), grid_hw=(2, 2))


def test_evs_keeps_the_first_frame_then_the_most_changed_tokens_by_hand():
    from tango_plugin.strategies.evs import evs_keep_count

    tokens = _evs_video()
    # dissimilarity 1 - cos: frame 0 -> 255; frame 1: [0, 0, 0, 1]; frame 2: [1 - 1/sqrt(2), 0, 2, 0]
    # r = 0.5: keep max(L, int(12 * 0.5)) = 6 -> the 4 tokens of frame 0, then (2, pos 2) = 8 + 2 = 10 (score 2),
    # then (1, pos 3) = 7 (score 1)
    plan = run_strategy(tokens, tango.TangoConfig(retention_ratio=0.5, strategy="evs"))
    assert plan.kept_indices.tolist() == [0, 1, 2, 3, 7, 10]
    assert torch.equal(plan.features, tokens.features.reshape(12, 2)[[0, 1, 2, 3, 7, 10]])  # unchanged
    # r = 0.6: 7 tokens -> the next is (2, pos 0) = 8 (score 0.29); every other score is 0
    assert run_strategy(tokens, tango.TangoConfig(retention_ratio=0.6, strategy="evs")).kept_indices.tolist() == \
        [0, 1, 2, 3, 7, 8, 10]
    # the count: vLLM's max(L, int(T L (1 - q))), at least the first frame
    assert evs_keep_count(3, 4, 0.1) == 4 and evs_keep_count(3, 4, 0.5) == 6
    assert evs_keep_count(10, 3, 0.0, pruning_rate=0.7) == max(3, int(30 * (1 - 0.7)))
    cfg = tango.TangoConfig(retention_ratio=0.5, strategy="evs", strategy_options={"pruning_rate": 0.75})
    assert run_strategy(tokens, cfg).kept_indices.tolist() == [0, 1, 2, 3]  # max(4, int(12 * 0.25)) = 4
    with pytest.raises(ValueError, match="pruning_rate"):
        run_strategy(tokens, tango.TangoConfig(strategy="evs", strategy_options={"pruning_rate": 1.0}))


def test_evs_ties_go_to_the_lower_index():
    feats = torch.ones(3, 4, 2)  # every later token repeats its predecessor: all scores 0 after frame 0
    tokens = tango.VisualTokens(features=feats, saliency=torch.rand(3, 4), grid_hw=(2, 2))
    plan = run_strategy(tokens, tango.TangoConfig(retention_ratio=0.5, strategy="evs"))
    assert plan.kept_indices.tolist() == [0, 1, 2, 3, 4, 5]


# ============================================================================================ DART
def _dart_video():
    """2 frames x 3 tokens of 2-D features; L1 norms 3, 1, 2, 1, 2, 2.1 (tokens 2 and 4 tie)."""
    feats = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                          [[-1.0, 0.0], [0.0, -2.0], [2.0, 0.1]]])
    return tango.VisualTokens(features=feats, saliency=torch.rand(2, 3), grid_hw=(1, 3))


def test_dart_keeps_pivots_then_the_least_duplicated_tokens_by_hand():
    from tango_plugin.strategies.dart import dart_keep_count

    tokens = _dart_video()
    flat = tokens.features.reshape(6, 2)

    def kept(r, **options):
        config = tango.TangoConfig(retention_ratio=r, strategy="dart", strategy_options=options)
        plan = run_strategy(tokens, config)
        assert torch.equal(plan.features, flat[plan.kept_indices])  # features unchanged
        return plan.kept_indices.tolist()

    # target ceil(6 * 0.5) = 3 <= 4 pivots -> the 3 largest L1: 0 (3), 5 (2.1), then 2 and 4 tie at 2 -> 2
    assert kept(0.5) == [0, 2, 5]
    # one pivot (token 0, along +x), quota 2: cosines 1: 0, 2: 0.71, 3: -1, 4: 0, 5: 0.999 -> 3, then 1 (ties 4)
    assert kept(0.5, pivot_tokens=1) == [0, 1, 3]
    # two pivots 0 and 5, target ceil(3.6) = 4, 2 to pick: pivot 0 takes ceil(2 / 2) = 1 -> 3 (cos -1); pivot 5
    # (2, 0.1) takes ceil(1 / 1) = 1 of 1, 2, 4 with cosines 0.05, 0.74, -0.05 -> 4
    assert kept(0.6, pivot_tokens=2) == [0, 3, 4, 5]
    assert dart_keep_count(6, 0.001) == 1 and dart_keep_count(6, 0.6) == 4 and dart_keep_count(6, 1.0) == 6
    with pytest.raises(ValueError, match="pivot_tokens"):
        kept(0.5, pivot_tokens=0)


def test_dart_quota_is_resplit_so_the_target_is_exact():
    # 40 random tokens, 3 pivots, every target from 1 to 40: exactly the target, pivots always kept
    torch.manual_seed(0)
    from tango_plugin.strategies.dart import dart_select

    x = torch.randn(40, 8)
    pivots = torch.argsort(x.abs().sum(-1), descending=True, stable=True)[:3]
    for target in range(1, 41):
        idx = dart_select(x, target, 3)
        assert idx.numel() == target and torch.equal(idx, torch.sort(idx).values)
        assert set(pivots[:min(3, target)].tolist()) <= set(idx.tolist())


# ============================================================================================ FlashVID
def test_flashvid_budget_matches_the_authors_table():
    from tango_plugin.strategies.flashvid import flashvid_budget

    # the authors' arithmetic with their 1.25 expansion (LLaVA-OV 196 tokens, LLaVA-Video 169): floating-point ceil,
    # so 169 * 0.1 * 1.25 = 21.125000000000004 -> 22
    assert flashvid_budget(196, 0.10, 0.7, 1.25) == (25, 18, 7)
    assert flashvid_budget(196, 0.25, 0.7, 1.25) == (62, 44, 18)
    assert flashvid_budget(169, 0.10, 0.7, 1.25) == (22, 16, 6)
    assert flashvid_budget(196, 0.10, 0.7, 1.0) == (20, 14, 6)  # our default: ceil(L r) per frame
    assert flashvid_budget(4, 0.01, 0.7, 1.0) == (1, 1, 0)


def _angles_to_frames(angles, tokens=3):
    """(T, tokens, 2) frames whose tokens all point at the frame's angle (degrees)."""
    rad = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    unit = torch.stack([rad.cos(), rad.sin()], -1).float()
    return unit[:, None, :].expand(-1, tokens, -1).contiguous()


def test_flashvid_dyseg_cuts_below_the_threshold_then_at_the_least_similar_transitions():
    from tango_plugin.strategies.flashvid import dyseg

    # transitions' cosines: cos 5 = 0.996, cos 60 = 0.5, cos 20 = 0.94, cos 10 = 0.985
    means = _angles_to_frames([0, 5, 65, 85, 95]).mean(1)
    assert dyseg(means, 0.9, 1, True) == [2, 3]  # one cut, after frame 1
    assert dyseg(means, 0.9, 3, True) == [2, 1, 2]  # + the least similar other transition (frame 2 -> 3)
    assert dyseg(means, 0.9, 3, False) == [2, 3]
    assert dyseg(means, 0.9, 99, True) == [1, 1, 1, 1, 1]  # never more cuts than transitions
    assert dyseg(means, 0.99, 1, True) == [2, 1, 1, 1]  # 0.94 and 0.985 are below 0.99 too


def test_flashvid_adts_is_greedy_max_min_on_attention_calibrated_distances():
    from tango_plugin.strategies.flashvid import adts

    # x0 = +x, x1 = +y, x2 = -x, x3 = diagonal; distances 1 - cos: d01 = 1, d02 = 2, d03 = 0.29, d12 = 1,
    # d13 = 0.29, d23 = 1.71
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]])
    # attention [1, 1, 1, 4]: first pick maximises a_j min_i d_ij = [0.29, 0.29, 1, 4 * 0.29 = 1.17] -> 3; then
    # d_3j a_j = [0.29, 0.29, 1.71] -> 2; then min(d_3j, d_2j) a_j = [0.29, 0.29]: tie -> 0
    attn = torch.tensor([[1.0, 1.0, 1.0, 4.0]])
    assert adts(x, attn, 2, "attn_div").tolist() == [[2, 3]]
    assert adts(x, attn, 3, "attn_div").tolist() == [[0, 2, 3]]
    # equal attention: plain max-min, first pick 2 (min distance 1), then d_2j = [2, 1, 1.71] -> 0
    flat = torch.ones(1, 4)
    assert adts(x, flat, 2, "attn_div").tolist() == [[0, 2]]
    # v2: weight = attention x <x_j, segment mean (0.25, 0.5)> = [0.25, 0.5, -0.25, 0.75]: first pick
    # [0.07, 0.15, -0.25 * 2 = -0.5, 0.22] -> 3, then d_3j w_j = [0.07, 0.15, -0.43] -> 1
    assert adts(x, flat, 2, "attn_div_v2").tolist() == [[1, 3]]
    # frames are independent: two frames at once give each frame's own answer
    both = adts(torch.cat([x, x.flip(1)]), torch.cat([attn, attn.flip(1)]), 2, "attn_div")
    assert both.tolist() == [[2, 3], [0, 1]]


def _chain_segment():
    """3 frames x 2 tokens: token 0 drifts slowly (a chain 0 <- 0 <- 0), token 1 of frame 1 is new and frame 2's
    token 1 repeats it."""
    return torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                         [[1.0, 0.1], [-1.0, 0.0]],
                         [[1.0, 0.2], [-1.0, 0.05]]])


def test_flashvid_trees_link_to_the_previous_frame_and_average_the_whole_tree():
    from tango_plugin.strategies.flashvid import aggregate_trees, merge_flags, tree_parents

    x = _chain_segment()
    none = torch.zeros(3, 2, dtype=torch.bool)
    parent, sim = tree_parents(x, none)
    assert parent[1:].tolist() == [[0, 1], [0, 1]]
    assert sim[0].tolist() == [-1.0, -1.0]
    flags = merge_flags(sim, 0.8, 3)
    assert flags.tolist() == [[False, False], [True, False], [True, True]]
    trees = aggregate_trees(x, parent, flags)
    # the whole tree's mean at each root (the authors' code divides by 1 + direct children: (a + b + c) / 2 here)
    assert torch.allclose(trees[0, 0], x[:, 0].mean(0))
    assert torch.allclose(trees[1, 1], x[1:, 1].mean(0))
    assert torch.equal(trees[0, 1], x[0, 1])
    # fewer roots than the lower bound 4: only similarities above the (6 - 4) = 2nd largest merge
    assert merge_flags(sim, 0.8, 4).tolist() == [[False, False], [False, False], [False, True]]
    # an ADTS pick is never a child nor a parent
    picked = none.clone()
    picked[1, 0] = True
    parent, sim = tree_parents(x, picked)
    assert sim[1, 0] == -1 and parent[2, 0] == 1 and sim[2, 0] < 0


def test_flashvid_dpc_centres_follow_the_authors_density_formula():
    from tango_plugin.strategies.flashvid import dpc_centres

    torch.manual_seed(3)
    for n, count, dim in [(30, 5, 8), (12, 9, 4), (50, 7, 16), (9, 2, 3)]:
        x = torch.randn(n, dim)
        k = min(count, 7)
        d = torch.cdist(x.double(), x.double()) / math.sqrt(dim)  # the authors' form, written out
        density = (-(d.sort(dim=1).values[:, :k] ** 2).mean(1)).exp()
        # equal densities (mutual nearest neighbours at k = 2): the lower index counts as denser (the authors add
        # 1e-6 uniform noise to break them at random)
        idx = torch.arange(n)
        same = density[None, :] == density[:, None]
        denser = (density[None, :] > density[:, None]) | (same & (idx[None] < idx[:, None]))
        delta = torch.where(denser, d, torch.full_like(d, float("inf"))).min(1).values
        delta[torch.isinf(delta)] = d.max()
        expected = torch.argsort(density * delta, descending=True, stable=True)[:count]
        assert dpc_centres(x, count).tolist() == expected.tolist()
    assert dpc_centres(torch.randn(5, 3), 1).tolist() == [0]  # k = 1: every density is 1


def test_flashvid_keeps_its_picks_and_about_the_budget():
    from tango_plugin.strategies.flashvid import adts, flashvid_budget

    torch.manual_seed(0)
    video = synthetic_video(12, (4, 4), 32, num_scenes=2, seed=1)
    tokens = VisualTokens(features=video.features, saliency=video.saliency, grid_hw=(4, 4))
    options = {"complementary_segment": False, "segment_threshold": -1.0}  # one segment
    plan = run_strategy(tokens, tango.TangoConfig(retention_ratio=0.5, strategy="flashvid",
                                                  strategy_options=options))
    budget, A, S = flashvid_budget(16, 0.5, 0.7, 1.0)
    picks = adts(video.features, video.saliency, A, "attn_div_v2") + torch.arange(12)[:, None] * 16
    flat = video.features.reshape(-1, 32)
    kept = plan.kept_indices.tolist()
    assert set(picks.flatten().tolist()) <= set(kept)
    at_picks = torch.tensor([kept.index(i) for i in picks.flatten().tolist()])
    assert torch.equal(plan.features[at_picks], flat[picks.flatten()])  # picked tokens unchanged
    assert 12 * budget <= len(kept) <= 12 * budget + 12  # A + at least S per frame, ceil per frame
    with pytest.raises(ValueError, match="selection"):
        run_strategy(tokens, tango.TangoConfig(strategy="flashvid", strategy_options={"selection": "dpp"}))
