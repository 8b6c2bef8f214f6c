"""The screened path for large point sets (docs/algorithm.md §11): decisions on canonical distances, refined
exactly where the bfloat16 (or float32) screen cannot decide.

The oracle computes every pair's canonical distance and applies the same rules to the whole matrix; the screened
path must give the same centres and assignments bit for bit, with either screen, on ordinary and adversarial sets
(duplicates, exact ties, huge and tiny norms, zero rows, low-precision inputs).
"""

from __future__ import annotations

import pytest
import torch

import tango_plugin as tango
from tango_plugin.engine import dpc, dpc_screened, screening, trace
from tango_plugin.engine.clustering import PointSets, assign_to_members, cluster
from tango_plugin.engine.dpc_tiled import tiled_centres
from tango_plugin.engine.screening import PointSet
from tango_plugin.testing import synthetic

TILE_ELEMENTS = 64 * 64  # tiles of 64 points: sets of a few hundred points take the tiled, screened path


def _canonical_matrix(points: torch.Tensor, anchors: torch.Tensor = None) -> torch.Tensor:
    """Every pair's canonical distance (float64), from the same kernel as the screened path."""
    ps = PointSet(points.float(), torch.float32)
    other = ps if anchors is None else PointSet(anchors.float(), torch.float32)
    n, m = ps.x.shape[0], other.x.shape[0]
    cols = torch.arange(m)[None].expand(n, m).contiguous()
    return screening.canonical_distances(ps, torch.arange(n), other, cols)


def _oracle_centres(x: torch.Tensor, cluster_num: int, k: int) -> torch.Tensor:
    d = _canonical_matrix(x)
    M = d.shape[0]
    idx = torch.arange(M)
    knn_d, _ = screening.sorted_by_distance(d, idx[None].expand(M, M).contiguous())
    rho = dpc.density(knn_d[:, :min(k + 1, M)])
    denser = dpc.denser(rho[None, :], idx[None, :], rho[:, None], idx[:, None])
    delta = torch.where(denser, d, torch.full_like(d, float("inf"))).min(dim=1).values
    delta[torch.isinf(delta)] = d.max()
    return dpc.stable_topk(rho * delta, cluster_num)


def _centres(x: torch.Tensor, cluster_num: int, k: int, screen: str = "auto") -> torch.Tensor:
    """The seam's centres of one set (M, D) in tiles of 64 points: the screened route."""
    return cluster(PointSets(x[None]), cluster_num, k, None, max_block_elements=TILE_ELEMENTS, screen=screen)[0][0]


def _oracle_assignment(points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return _canonical_matrix(points, anchors).argmin(dim=1)  # ties -> first anchor


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def _clustered(n, d, seed, centres=6, spread=0.15):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    return c[torch.randint(0, centres, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)


def _with_duplicates(n, d, seed):
    x = _clustered(n, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x[torch.randint(0, n, (n // 3,), generator=g)] = x[torch.randint(0, n, (n // 3,), generator=g)]
    return x


def _all_equidistant(n, d, seed):
    """Orthonormal rows: every distance is sqrt(2), every decision a tie broken by index."""
    assert d >= n
    return torch.eye(d)[torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:n]] * 3.0


def _mixed_norms(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return _clustered(n, d, seed) * torch.pow(10.0, torch.empty(n, 1).uniform_(-3, 3, generator=g))


def _with_zero_rows(n, d, seed):
    x = _unit(n, d, seed)
    x[::17] = 0
    return x


def _coherent_rounding(n, d, seed, bases=4):
    """Sign vectors a few flips away from a handful of bases, scaled by c = 1 + 0.49 * 2**-7: bfloat16 rounds
    every component down by the same relative amount, so the screen's error on near pairs is close to the bound's
    input-rounding term, and distances are exact multiples of 4 c**2: exact ties everywhere."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 2, (bases, d), generator=g).float() * 2 - 1
    x = base[torch.randint(0, bases, (n,), generator=g)]
    for _ in range(3):
        x[torch.arange(n), torch.randint(0, d, (n,), generator=g)] *= -1
    return x * (1 + 0.49 * 2.0 ** -7)


SETS = {
    "coherent-rounding": lambda s: _coherent_rounding(300, 64, s),
    "unit": lambda s: _unit(300, 48, s),
    "clustered": lambda s: _clustered(360, 32, s),
    "duplicates": lambda s: _with_duplicates(300, 40, s),
    "equidistant": lambda s: _all_equidistant(150, 160, s),
    "huge": lambda s: _clustered(300, 32, s) * 1e6,
    "tiny": lambda s: _clustered(300, 32, s) * 1e-6,
    "mixed-norms": lambda s: _mixed_norms(300, 32, s),
    "zero-rows": lambda s: _with_zero_rows(300, 48, s),
    "bfloat16-values": lambda s: _clustered(300, 64, s).bfloat16(),
    "float16-values": lambda s: _clustered(300, 64, s).half(),
}


@pytest.mark.parametrize("name", sorted(SETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_screened_centres_equal_the_whole_matrix_oracle(name, seed):
    x = SETS[name](seed)
    want = _oracle_centres(x.float(), 40, 5)
    for screen in ("bfloat16", "float32"):
        assert torch.equal(_centres(x, 40, 5, screen), want), (name, screen)


@pytest.mark.parametrize("name", sorted(SETS))
def test_screened_assignment_equals_the_whole_matrix_oracle(name):
    x = SETS[name](3).float()
    members = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(4))[:37]
    members = torch.cat([members, members[:5]])  # repeated anchors: exact ties, the first one wins
    want = _oracle_assignment(x, x[members])
    for screen in ("bfloat16", "float32"):
        got = assign_to_members(PointSets(x[None]), members[None], max_block_elements=TILE_ELEMENTS, screen=screen)[0]
        assert torch.equal(got, want), (name, screen)
    assert int(want.max()) < 37  # the repeats never win a tie


def test_equidistant_sets_overflow_the_candidate_lists_and_stay_exact():
    x = _all_equidistant(150, 160, 0)
    with trace.recorded() as events:
        assert torch.equal(_centres(x, 20, 5), _oracle_centres(x, 20, 5))
    # every entry is a candidate: the tile lists were full, and the full tiles alone (not every tile) were taken
    # again, whole, after the pass
    retaken = [e for e in events if e.startswith("screened tiles-retaken")]
    assert len(retaken) == 1
    n, total = map(int, retaken[0].split()[-1].split("/"))
    assert 0 < n < total


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("screen", [torch.bfloat16, torch.float32])
def test_the_bound_covers_every_pair(scale, screen):
    x = _mixed_norms(200, 64, 0) * scale
    ps = PointSet(x, screen)
    ps.ensure_sq64()
    approx = screening.approx_sq(ps, slice(None), ps, slice(None)).double()
    exact = _canonical_matrix(x) ** 2
    bound = ps.row_bound().double()
    err = (approx - exact).abs()
    # the canonical value was clamped at 0; the screen's interval is on the unclamped value
    assert bool((err <= bound[:, None] + 1e-300).all())
    if screen == torch.bfloat16:
        assert float((err / bound[:, None]).max()) > 0.01  # not vacuous: errors reach a real share of it


def test_the_bound_is_tight_enough_to_screen_unit_vectors():
    ps = PointSet(_unit(500, 3584, 0), torch.bfloat16)
    b = ps.row_bound()
    assert float(b.max()) < 0.02  # squared-distance units; unit vectors are 2 apart on average


def test_the_canonical_kernel_self_test_passes_here_and_a_failing_one_falls_back(monkeypatch):
    for dim in (32, 515, 3584):
        assert screening.canonical_kernel_ok("cpu", torch.get_num_threads(), dim)
    x = _clustered(300, 32, 0)
    tiled = tiled_centres(x, 30, 5, 64, TILE_ELEMENTS)
    monkeypatch.setattr(screening, "canonical_kernel_ok", lambda *a: False)
    monkeypatch.setattr(screening, "_WARNED", set())
    with pytest.warns(UserWarning, match="failed its self-test on cpu at dim 32; point sets larger than one tile use"):
        assert dpc_screened.screened_points(x, "auto", 64) is None
    assert torch.equal(_centres(x, 30, 5), tiled)


def test_values_the_bound_does_not_cover_take_the_float32_tiles():
    x = _clustered(300, 32, 0) * 1e20  # squared norms beyond float32
    assert dpc_screened.screened_points(x, "bfloat16", 64) is None
    x = _clustered(300, 32, 0)
    x[3, 4] = float("nan")
    assert dpc_screened.screened_points(x, "bfloat16", 64) is None
    assert dpc_screened.screened_points(_clustered(300, 32, 0), "off", 64) is None
    assert dpc_screened.screened_points(_clustered(60, 32, 0), "bfloat16", 64) is None  # one tile: the full matrix


def test_screen_dtype_choices():
    cpu = torch.device("cpu")
    assert screening.screen_dtype("float32", cpu, 64) == torch.float32
    assert screening.screen_dtype("bfloat16", cpu, 64) == torch.bfloat16
    assert screening.screen_dtype("off", cpu, 64) is None
    assert screening.screen_dtype("auto", cpu, 64) in (torch.bfloat16, torch.float32)


def test_distance_screen_is_validated():
    with pytest.raises(ValueError, match=r"distance_screen='half' is not supported; allowed: \['auto', 'bfloat16'"):
        tango.TangoConfig(distance_screen="half")


def test_the_canonical_kernel_is_symmetric_and_exact_on_identical_rows():
    x = _clustered(50, 40, 0)
    x[7] = x[3]
    d = _canonical_matrix(x)
    assert torch.equal(d, d.T)
    assert float(d[3, 7]) == 0.0 and bool((d.diagonal() == 0).all())


def _video(frames, seed, dim=64):
    return synthetic.synthetic_video(frames, (14, 14), dim, num_scenes=1, dynamic_fraction=0.5, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_engine_plans_are_the_same_for_every_screen(seed):
    v = _video(20, seed)
    plans = {}
    for screen in ("auto", "bfloat16", "float32", "off"):
        cfg = tango.TangoConfig(retention_ratio=0.1, reference_merge_order=True, distance_screen=screen)
        plans[screen] = tango.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg)
    for screen in ("bfloat16", "float32", "off"):  # "off" differs only in last-bit ties, absent from these inputs
        assert torch.equal(plans[screen].kept_indices, plans["auto"].kept_indices), screen
        assert torch.equal(plans[screen].features, plans["auto"].features), screen


def test_the_screened_path_is_taken_on_a_long_segment():
    v = _video(20, 0)
    with trace.recorded() as events:
        tango.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps,
                                 tango.TangoConfig(retention_ratio=0.1))
    assert "screened" in trace.routes(events)
    assert any(e.startswith("screened listed") for e in events)


def test_min_candidates_keeps_every_column_that_could_be_the_minimum():
    """A column can hold the minimum when its interval [a - b, a + b] reaches below the smallest upper end
    min(a) + b: so the window is 2 b wide. Columns at 1.5 b and 1.9 b past the minimum are kept, 2.1 b is not."""
    b = torch.tensor([0.01, 0.02])
    offsets = torch.tensor([0.0, 1.5, 1.9, 2.1, 5.0])
    A = 1.0 + offsets[None, :] * b[:, None]
    A = A[:, torch.tensor([3, 0, 4, 2, 1])]  # shuffled columns
    vals, cols, valid = screening.min_candidates(A, b, 2)  # starts narrow: widened until complete
    kept = [sorted(cols[r][valid[r]].tolist()) for r in range(2)]
    assert kept == [[1, 3, 4], [1, 3, 4]]


@pytest.mark.parametrize("name", ["duplicates", "equidistant", "clustered", "coherent-rounding", "mixed-norms"])
def test_assignment_from_the_nearest_lists_equals_the_whole_matrix_oracle(name):
    """The pool's own anchors (the context merge): points whose exact k + 1 nearest lists hold an anchor are
    answered from the lists, the others screened against every anchor. Both kinds occur here, and the whole
    assignment equals the oracle's, ties included (duplicates, all-equidistant)."""
    x = SETS[name](5).float()
    for screen in ("bfloat16", "float32"):
        with trace.recorded() as events:
            centres, got = cluster(PointSets(x[None]), 40, 5, "ascending", max_block_elements=TILE_ELEMENTS,
                                   screen=screen)
        anchors = centres[0].sort().values
        assert torch.equal(got[0], _oracle_assignment(x, x[anchors])), screen
        listed = [e for e in events if e.startswith("screened listed")]
        n, total = map(int, listed[0].split()[-1].split("/"))
        if name != "equidistant":  # there every list holds the lowest indices, anchors among them
            assert 0 < n < total  # some points answered from the lists, some screened


def test_peaks_are_screened_only_against_denser_points(monkeypatch):
    """Each block of peaks (in density order) is screened against the prefix of the density ranking it can need,
    not against whole rows."""
    widths = []
    original = screening.screened_block
    monkeypatch.setattr(screening, "screened_block", lambda r, rs, c, cs: widths.append((r.shape[0], c.shape[0]))
                        or original(r, rs, c, cs))
    monkeypatch.setattr(dpc_screened, "PEAK_BLOCK", 4)
    x = SETS["clustered"](0).float()
    got = _centres(x, 40, 5, "bfloat16")
    assert torch.equal(got, _oracle_centres(x, 40, 5))
    peak_blocks = [w for r, w in widths if r <= 4]
    assert peak_blocks and min(peak_blocks) < max(peak_blocks) <= x.shape[0], peak_blocks


@pytest.mark.parametrize("name", ["duplicates", "coherent-rounding", "mixed-norms"])
def test_peaks_with_more_candidates_than_the_window_are_widened(name, monkeypatch):
    """A peak whose candidate window is full may have more candidates (near-ties): it is screened again with the
    window widened until complete, and the centres still equal the oracle's."""
    monkeypatch.setattr(dpc_screened, "PEAK_CANDIDATES", 1)
    x = SETS[name](2).float()
    with trace.recorded() as events:
        got = _centres(x, 40, 5, "bfloat16")
    assert any(e.startswith("screened peaks-widened") for e in events)
    assert torch.equal(got, _oracle_centres(x, 40, 5))
