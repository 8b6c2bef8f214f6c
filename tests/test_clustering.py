"""The clustering seam (engine/clustering.py): every route against the plain algorithm, and scratch safety.

The oracle is `clustering.plain_cluster`: one whole `torch.cdist` matrix and the paper's DPC-KNN and argmin. On
lattice points (small integers times a power of two) every route computes every distance exactly, so the routes
must return the oracle's centres and assignments bit for bit, including the many exact ties such points have:
in float32 for the float32 routes, in float64 for the screened route (it decides on float64 canonical distances).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tango_plugin as tp
from tango_plugin.engine import scratch, trace
from tango_plugin.engine.clustering import PointSets, assign_to_members, cluster, plain_cluster
from tango_plugin.engine.distances import FrameOperands, cdist_operands, per_set_products
from tango_plugin.engine.gather import rows_of
from tango_plugin.testing import synthetic

ROUTE_DTYPE = {"small": torch.float32, "batched": torch.float32, "per-set": torch.float32, "tiled": torch.float32,
               "screened": torch.float64}


def _lattice(draw, B, M, D):
    """(B, M, D) points on a small integer lattice scaled by 2**e (many duplicates and exact distance ties)."""
    span = draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    x = torch.randint(-span, span + 1, (B, M, D), generator=g).float()
    if draw(st.booleans()):  # a few exact duplicates more
        x[:, M // 2] = x[:, 0]
    return x * 2.0 ** draw(st.integers(-12, 12))


@st.composite
def cases(draw):
    route = draw(st.sampled_from(["small", "batched", "per-set", "large"]))
    D = draw(st.integers(2, 12))
    if route == "small":
        B, M, block = draw(st.integers(1, 4)), draw(st.integers(2, 25)), draw(st.sampled_from([1024, 1 << 24]))
    elif route == "batched":
        B, M, block = draw(st.integers(2, 4)), draw(st.integers(26, 40)), 1 << 24
    elif route == "per-set":
        B, M, block = draw(st.integers(1, 3)), draw(st.integers(26, 60)), draw(st.sampled_from([4096, 1 << 24]))
    else:
        B, M, block = draw(st.integers(1, 2)), draw(st.integers(33, 90)), 1024  # tiles of 32 points
    per_item = route == "per-set" and B > 1
    x = _lattice(draw, B, M, D)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))  # the lattice is exact in each
    shared = route in ("small", "per-set") and draw(st.booleans())  # rows of "frames" with shared operands
    return dict(route=route, x=x.to(dtype), block=block, per_item=per_item, shared=shared,
                screen=draw(st.sampled_from(["auto", "bfloat16", "float32", "off"])),
                cluster_num=draw(st.integers(1, M)), k=draw(st.integers(1, 8)),
                order=draw(st.sampled_from(["ascending", "density"])), seed=draw(st.integers(0, 1000)))


def _sets(case):
    x = case["x"]
    if not case["shared"]:
        return PointSets(x), x.float()
    B, M, D = x.shape
    g = torch.Generator().manual_seed(case["seed"])
    frames = torch.randn(B, M + 7, D, generator=g)  # the sets are M rows of longer frames, in shuffled order
    members = torch.stack([torch.randperm(M + 7, generator=g)[:M] for _ in range(B)])
    frames[torch.arange(B)[:, None], members] = x.float()
    return PointSets(frames=FrameOperands(frames), members=members), x.float()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_route_equals_the_plain_algorithm(case):
    sets, points = _sets(case)
    with trace.recorded() as events:
        centres, assign = cluster(sets, case["cluster_num"], case["k"], case["order"], per_item=case["per_item"],
                                  max_block_elements=case["block"], screen=case["screen"])
    taken = trace.routes(events)
    if case["route"] == "large":
        assert taken and set(taken) <= {"screened", "tiled"}
    else:
        assert taken == [case["route"]] * len(taken) and taken
    large = taken if case["route"] == "large" else [taken[0]] * points.shape[0]
    for b in range(points.shape[0]):
        want_c, want_a = plain_cluster(points[b:b + 1], case["cluster_num"], case["k"], case["order"],
                                       ROUTE_DTYPE[large[b]])
        assert torch.equal(centres[b], want_c[0]), (large[b], b)
        assert torch.equal(assign[b], want_a[0]), (large[b], b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_route_assigns_to_given_members_as_the_plain_argmin(case):
    sets, points = _sets(case)
    B, M, _ = points.shape
    g = torch.Generator().manual_seed(case["seed"])
    anchors = torch.stack([torch.randperm(M, generator=g)[:case["cluster_num"]] for _ in range(B)])
    with trace.recorded() as events:
        got = assign_to_members(sets, anchors, per_item=case["per_item"], max_block_elements=case["block"],
                                screen=case["screen"])
    taken = trace.routes(events)
    large = taken if case["route"] == "large" else [taken[0]] * B
    for b in range(B):
        x = points[b].to(ROUTE_DTYPE[large[b]])
        want = torch.cdist(x, x)[:, anchors[b]].argmin(dim=1)  # ties -> the first anchor in the order given
        assert torch.equal(got[b], want), large[b]


def test_routes_are_chosen_by_size_block_and_screen():
    def route(B, M, per_item=False, block=1 << 24, screen="auto"):
        x = torch.randn(B, M, 8, generator=torch.Generator().manual_seed(M))
        with trace.recorded() as events:
            cluster(PointSets(x), 3, 2, None, per_item=per_item, max_block_elements=block, screen=screen)
        taken = trace.routes(events)
        return sorted(set(taken))

    assert route(3, 25) == ["small"]
    assert route(3, 26) == ["batched"]
    assert route(3, 26, per_item=True) == ["per-set"]
    assert route(1, 26) == ["per-set"]
    assert route(40, 30, block=30 * 30 * 4) == ["per-set"]  # the batch over the block: one set at a time
    assert route(2, 40, block=1024) == ["screened"]
    assert route(2, 40, block=1024, screen="off") == ["tiled"]
    x = torch.randn(1, 40, 8)
    x[0, 3, 0] = 1e30  # beyond what the screening bound covers
    with trace.recorded() as events:
        cluster(PointSets(x), 3, 2, None, max_block_elements=1024)
    taken = trace.routes(events)
    assert taken == ["tiled"]


def test_the_plain_rules_on_a_hand_made_set():
    # k = 1: rho = exp(-d_nn^2) = e^-1 for points 0, 1, 2 and e^-0.25 for the pair 3, 4 (3 is denser: lower index).
    # delta: 3 -> the largest distance 10.5; 4 -> 0.5; 0 -> 10 (to 3); 1, 2 -> 1 (to 0, denser by index).
    # rho * delta: 3: 8.2, 0: 3.7, 4: 0.39, 1 and 2: 0.37
    x = torch.tensor([[[0.0], [1.0], [2.0], [10.0], [10.5]]])
    centres, assign = plain_cluster(x, 3, 1)
    assert centres[0].tolist() == [3, 0, 4]
    assert assign[0].tolist() == [0, 0, 0, 1, 2]  # into the anchors sorted ascending: 0, 3, 4
    assert plain_cluster(x, 3, 1, "density")[1][0].tolist() == [1, 1, 1, 0, 2]  # into 3, 0, 4
    got = cluster(PointSets(x), 3, 1, "ascending")
    assert torch.equal(got[0], centres) and torch.equal(got[1], assign)


def test_ties_go_to_the_first_anchor_in_the_order_given():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    assert assign_to_members(PointSets(x), torch.tensor([[1, 2]]))[0, 0] == 0
    assert assign_to_members(PointSets(x), torch.tensor([[2, 1]]))[0, 0] == 0
    duplicates = torch.zeros(1, 10, 4)
    duplicates[0, 5:] = 1.0  # every density tied: the lowest index wins, every run
    first = cluster(PointSets(duplicates), 3, 2, None)[0]
    assert first[0, 0] == 0 and all(torch.equal(cluster(PointSets(duplicates), 3, 2, None)[0], first)
                                    for _ in range(3))


def test_anchor_order_is_validated():
    with pytest.raises(ValueError, match=r"anchor_order='random': allowed \('density', 'ascending'\) or None"):
        cluster(PointSets(torch.randn(1, 5, 2)), 2, 1, "random")
    with pytest.raises(ValueError, match="give points, or frames with members"):
        PointSets()


@pytest.mark.parametrize("M,D", [(300, 16), (777, 40)])
def test_the_tiled_route_equals_the_whole_matrix_on_real_valued_points(M, D):
    g = torch.Generator().manual_seed(M)
    x = torch.nn.functional.normalize(torch.randn(1, M, D, generator=g), dim=-1)
    with trace.recorded() as events:
        tiled = cluster(PointSets(x), 40, 7, None, max_block_elements=64 * 64, screen="off")[0]
    taken = trace.routes(events)
    assert taken == ["tiled"]
    assert torch.equal(tiled, plain_cluster(x, 40, 7)[0])


def test_shared_operands_give_cdist_bits():
    """Any row subset of the frames' operands gives `torch.cdist`'s product bit for bit (real-valued points, self
    entries and a duplicate row included): why the per-set route may gather operands instead of points."""
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(3, 196, 896, generator=g), dim=-1) * 3 * torch.rand(3, 196, 1,
                                                                                                      generator=g)
    x[0, 7] = x[0, 5]
    rows_all, cols_all = FrameOperands(x).operands()
    for M in (26, 150, 196):
        members = torch.stack([torch.randperm(196, generator=g)[:M] for _ in range(3)])
        members[:, :2] = torch.tensor([5, 7])
        rows, cols = rows_of(rows_all, members, "test.rows"), rows_of(cols_all, members, "test.cols")
        pick = torch.stack([torch.randperm(M, generator=g)[:17] for _ in range(3)])
        dist = per_set_products(rows, cols, "test.dist")
        anchor_dist = per_set_products(rows, rows_of(cols, pick), "test.anchor_dist")
        for b in range(3):  # each set in a block: the bits of its own torch.cdist call
            pts = x[b, members[b]][None]
            assert torch.equal(dist[b:b + 1], torch.cdist(pts, pts))
            assert torch.equal(anchor_dist[b:b + 1], torch.cdist(pts, pts[:, pick[b]]))
    whole_rows, whole_cols = cdist_operands(x[1:2], "test")
    assert torch.equal(per_set_products(whole_rows, whole_cols, "test.dist"), torch.cdist(x[1:2], x[1:2]))


def test_shared_operands_and_gathered_points_give_the_same_clusters():
    """Real-valued points: the per-set route from the frames' operands equals the one from gathered points, and
    the small route batches sets without changing any set's answer."""
    g = torch.Generator().manual_seed(4)
    x = torch.nn.functional.normalize(torch.randn(4, 169, 256, generator=g), dim=-1)
    for M in (20, 120, 169):
        members = torch.stack([torch.randperm(169, generator=g)[:M] for _ in range(4)])
        pts = torch.stack([x[b, members[b]] for b in range(4)])
        for order in ("density", "ascending"):
            shared = cluster(PointSets(frames=FrameOperands(x), members=members), 12, 7, order, per_item=True)
            gathered = cluster(PointSets(pts), 12, 7, order, per_item=True)
            one_by_one = [cluster(PointSets(pts[b:b + 1]), 12, 7, order) for b in range(4)]
            for got in (shared, gathered):
                assert torch.equal(got[0], torch.cat([c for c, _ in one_by_one]))
                assert torch.equal(got[1], torch.cat([a for _, a in one_by_one]))


# ------------------------------------------------------------------------------------------ scratch safety
def test_poisoned_scratch_makes_a_dead_view_visible():
    with scratch.poisoned():
        first = scratch.take("test.name", (4,), torch.float32, "cpu")
        first.fill_(1.0)
        again = scratch.take("test.name", (4,), torch.float32, "cpu")
        assert bool(torch.isnan(first).all())  # the first view is dead: poisoned when its name was taken again
        assert bool(torch.isnan(again).all())  # a fresh take reads as NaN until written
        index = scratch.take("test.index", (2,), torch.long, "cpu")
        assert index.tolist() == [-1, -1]
    normal = scratch.take("test.name", (4,), torch.float32, "cpu")
    normal.fill_(2.0)
    assert scratch.take("test.name", (4,), torch.float32, "cpu").tolist() == [2.0] * 4  # reused, not poisoned


def _engine_inputs():
    """Videos and settings that take every route of the seam and both of the engine's paths."""
    for seed, (scenes, dynamic) in enumerate([(1, 0.5), (3, 0.3), (12, 1.0)]):
        v = synthetic.synthetic_video(12, (9, 9), 48, num_scenes=scenes, dynamic_fraction=dynamic, seed=seed)
        for cfg in (tp.TangoConfig(retention_ratio=0.15), tp.TangoConfig(retention_ratio=0.1, max_block_elements=1024),
                    tp.TangoConfig(retention_ratio=0.3, max_block_elements=1024, distance_screen="off")):
            yield v, cfg
    v = synthetic.synthetic_video(8, (14, 14), 32, num_scenes=1, dynamic_fraction=0.8, seed=4)
    yield v, tp.TangoConfig(retention_ratio=0.3)  # a segment's frames with more than 25 candidates each: batched
    v = synthetic.ar1_video(16, (9, 9), 48, seed=2)
    yield v, tp.TangoConfig(retention_ratio=0.1, max_block_elements=4096, reference_merge_order=True)


def test_the_engine_under_poisoned_scratch_gives_the_same_plans():
    """Every scratch name is one live temporary: with every retaken name poisoned, the plans are unchanged."""
    taken = set()
    for v, cfg in _engine_inputs():
        run = lambda: tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg)  # noqa: E731
        normal = run()
        with scratch.poisoned(), trace.recorded() as events:
            poisoned = run()
        taken.update(trace.routes(events))
        assert torch.equal(normal.kept_indices, poisoned.kept_indices)
        assert torch.equal(normal.features, poisoned.features)
    assert taken == {"small", "batched", "per-set", "screened", "tiled"}


# ------------------------------------------------------------------------------------------ the fast DPC pieces
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.integers(2, 60), st.integers(1, 9), st.integers(0, 2 ** 31), st.booleans())
def test_the_fast_dpc_equals_the_plain_one(B, M, k, seed, lattice):
    """`dpc_of_distances` (two-stage nearest selection, rank test) against the rules as written, on distance
    matrices with many exact ties (lattice points) and on real-valued ones."""
    from tango_plugin.engine.dpc import dpc_of_distances, plain_dpc_of_distances

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (B, M, 3), generator=g).float() if lattice else torch.randn(B, M, 5, generator=g)
    dist = torch.cdist(x, x)
    cluster_num = 1 + seed % M
    assert torch.equal(dpc_of_distances(dist, cluster_num, k), plain_dpc_of_distances(dist, cluster_num, k))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 400), st.integers(1, 40), st.integers(0, 2 ** 31), st.sampled_from([2, 5, 1000]))
def test_the_two_stage_selection_keeps_the_smallest_values(n, kk, seed, distinct):
    from tango_plugin.engine.dpc import smallest_sorted

    kk = min(kk, n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, distinct, (3, n), generator=g).float()  # few distinct values: many ties
    assert torch.equal(smallest_sorted(x, kk), torch.topk(x, kk, dim=-1, largest=False).values)
