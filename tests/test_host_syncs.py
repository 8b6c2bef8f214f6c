"""Host reads per engine call (docs/algorithm.md, "Host syncs"): on a GPU each one stalls the launch queue, so the
engine reads a fixed number of values per video, however many segments and frames it has.

Counted on CPU: every operation that needs a device value on the host (item / bool / int, nonzero and boolean-mask
indexing, unique) through a dispatch mode, plus the tensor methods that copy to the host (tolist, cpu, numpy).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tango_plugin as tango
from tango_plugin.engine import tango as engine
from tango_plugin.engine import trace
from tango_plugin.testing import synthetic

HOST_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2", "aten.unique_dim",
            "aten.unique_consecutive", "aten.repeat_interleave.Tensor")


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(HOST_OPS) and not name.startswith("aten.nonzero_static"):  # fixed size: no read
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def host_reads(fn, monkeypatch) -> collections.Counter:
    mode = HostReads()
    for method in ("tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, _name=method, **k):
            mode.counts["Tensor." + _name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counted)
    with mode:
        fn()
    monkeypatch.undo()
    return mode.counts


def _video(frames: int, scenes: int, dynamic: float = 0.3, seed: int = 0):
    return synthetic.synthetic_video(num_frames=frames, grid_hw=(14, 14), dim=64, num_scenes=scenes,
                                     dynamic_fraction=dynamic, seed=seed)


def _prune(v, **cfg):
    return tango.prune_video_tokens(v.features, v.saliency, v.grid_hw, timestamps=v.timestamps,
                                    config=tango.TangoConfig(retention_ratio=0.1, **cfg),
                                    frame_embeddings=v.frame_embeddings)


@pytest.mark.parametrize("segmentation", ["holitom", "fastvid"])
def test_host_reads_do_not_grow_with_segments_or_frames(monkeypatch, segmentation):
    totals = {}
    for frames, scenes in ((16, 1), (32, 1), (16, 4), (32, 8), (32, 32)):
        v = _video(frames, scenes, dynamic=0.9 if scenes == frames else 0.3)
        counts = host_reads(lambda: _prune(v, segmentation=segmentation, distance_screen="off"), monkeypatch)
        totals[(frames, scenes)] = sum(counts.values())
    # input and plan checks, the segment sizes, the static counts, the deferred check: about a dozen, however
    # many segments (1 to 32 here) and frames
    assert max(totals.values()) <= 14 and max(totals.values()) - min(totals.values()) <= 2, totals


def test_screened_pools_read_a_fixed_number_whatever_their_size(monkeypatch):
    """A context pool larger than one distance tile takes the screened path (docs/algorithm.md §11): a fixed
    number of reads for the pool (its candidate counts, the peaks, the densest-point check, the overflow check),
    whatever its size. One-scene videos of 16, 32 and 48 frames have one such pool of about 1,200 to 3,700 points
    (2 to 10 tiles)."""
    from tango_plugin.engine import screening

    screening.screen_dtype("auto", torch.device("cpu"), 64)  # the start-up self-tests run once, before counting
    totals = {}
    for frames in (16, 32, 48):
        v = _video(frames, 1)
        counts = host_reads(lambda: _prune(v), monkeypatch)
        totals[frames] = sum(counts.values())
    off = sum(host_reads(lambda: _prune(_video(48, 1), distance_screen="off"), monkeypatch).values())
    assert max(totals.values()) - min(totals.values()) <= 2, totals
    assert max(totals.values()) <= off + 20, (totals, off)


def test_the_per_segment_path_would_be_counted(monkeypatch):
    """Control: the path that reads pool sizes segment by segment (the fallback) is seen growing with segments."""
    counts = []
    for scenes in (2, 8):
        v = _video(32, scenes)
        tokens = tango.VisualTokens(features=v.features, saliency=v.saliency, grid_hw=v.grid_hw,
                                    timestamps=v.timestamps)
        cfg = tango.TangoConfig(retention_ratio=0.1, distance_screen="off")
        per_segment = lambda: engine.tango_prune(tokens, cfg, host_reads="per-segment")  # noqa: E731
        counts.append(sum(host_reads(per_segment, monkeypatch).values()))
    assert counts[1] > counts[0] + 6


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scenes,dynamic", [(1, 0.3), (3, 0.3), (5, 0.8), (12, 0.95)])
def test_sync_free_path_gives_the_per_segment_plan(seed, scenes, dynamic):
    v = synthetic.synthetic_video(num_frames=12, grid_hw=(8, 8), dim=48, num_scenes=scenes, dynamic_fraction=dynamic,
                                  seed=seed)
    tokens = tango.VisualTokens(features=v.features, saliency=v.saliency, grid_hw=v.grid_hw, timestamps=v.timestamps)
    for ratio in (0.1, 0.3):
        cfg = tango.TangoConfig(retention_ratio=ratio)
        with trace.recorded() as events:
            fast = engine.tango_prune(tokens, cfg)
        slow = engine.tango_prune(tokens, cfg, host_reads="per-segment")
        assert events[-1] == "path deferred"
        assert torch.equal(fast.kept_indices, slow.kept_indices) and torch.equal(fast.features, slow.features)


def test_repeated_picks_fall_back_to_the_per_segment_path(monkeypatch):
    real = engine.cluster

    def degenerate(sets, cluster_num, k, anchor_order, **kw):  # a repeated centre in an empty group
        centres, assign = real(sets, cluster_num, k, anchor_order, **kw)
        if anchor_order == "density" and cluster_num > 1:
            centres, assign = centres.clone(), assign.clone()
            centres[0, :2] = 0
            assign[0] = 0
        return centres, assign

    monkeypatch.setattr(engine, "cluster", degenerate)
    torch.manual_seed(0)
    tokens = tango.VisualTokens(features=torch.randn(3, 16, 12), saliency=torch.rand(3, 16), grid_hw=(4, 4))
    cfg = tango.TangoConfig(retention_ratio=0.5, context_ratio=0.5)
    with trace.recorded() as events:
        plan = engine.tango_prune(tokens, cfg)
    assert events[-1] == "path per-segment"  # the deferred check caught the repeat
    assert torch.equal(plan.kept_indices, engine.tango_prune(tokens, cfg, host_reads="per-segment").kept_indices)
    # frame 0 keeps a token twice, and its context pool is one larger than the others': kept per frame
    first = plan.kept_indices[plan.kept_indices < 16].tolist()
    assert len(first) - len(set(first)) == 1
    assert torch.bincount(plan.kept_indices // 16, minlength=3).tolist() == [8, 8, 8]


def test_host_reads_is_validated():
    tokens = tango.VisualTokens(features=torch.randn(2, 4, 8), saliency=torch.rand(2, 4), grid_hw=(2, 2))
    with pytest.raises(ValueError, match=r"host_reads='never': allowed \('deferred', 'per-segment'\)"):
        engine.tango_prune(tokens, tango.TangoConfig(), host_reads="never")
