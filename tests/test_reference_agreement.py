"""Agreement with the paper's code, run from a local checkout (TANGO_REFERENCE_PATH); skipped without it.

    TANGO_REFERENCE_PATH=/path/to/Tango pytest -m reference
"""

import os
import sys

import pytest
import torch

import tango_plugin as tp
from tango_plugin.testing import synthetic_video

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from reference import reference_path, run_reference  # noqa: E402

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(reference_path() is None, reason="set TANGO_REFERENCE_PATH to a checkout of xjtupanda/Tango"),
]

CASES = [
    dict(T=8, side=4, D=64, r=0.25, scenes=2, dyn=0.3),
    dict(T=32, side=14, D=896, r=0.1, scenes=4, dyn=0.3),
    dict(T=32, side=14, D=896, r=0.1, scenes=4, dyn=0.3, segmentation="fastvid"),
    dict(T=32, side=14, D=896, r=0.15, scenes=1, dyn=0.5, sinks=[28, 27, 41, 169, 11, 12]),
    dict(T=16, side=13, D=896, r=0.2, scenes=3, dyn=1.0, sinks=[26, 157, 11]),
    dict(T=16, side=13, D=896, r=0.2, scenes=3, dyn=0.0),
    dict(T=24, side=14, D=3584, r=0.1, scenes=1, dyn=0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['T']}x{c['side']**2}x{c['D']}-r{c['r']}")
def test_same_kept_set_and_features_as_the_paper(case):
    v = synthetic_video(case["T"], (case["side"],) * 2, case["D"], num_scenes=case["scenes"],
                        dynamic_fraction=case["dyn"], seed=case["T"] + case["D"])
    cfg = tp.TangoConfig(retention_ratio=case["r"], segmentation=case.get("segmentation", "holitom"),
                         sink_positions=case.get("sinks"), reference_merge_order=True)
    ours = tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg, v.frame_embeddings)
    kept, feats = run_reference(v.features, v.saliency, v.grid_hw, v.timestamps, cfg, v.frame_embeddings)
    assert torch.equal(ours.kept_indices, kept)
    assert torch.equal(ours.features, feats)


AR1_CASES = [
    dict(T=16, side=13, D=896, r=0.2, cuts=1, seed=0),
    dict(T=32, side=14, D=896, r=0.1, cuts=3, seed=1),
    dict(T=32, side=14, D=3584, r=0.1, cuts=3, seed=2),
    dict(T=48, side=14, D=3584, r=0.1, cuts=1, seed=1),
]


@pytest.mark.parametrize("case", AR1_CASES, ids=lambda c: f"ar1-{c['T']}x{c['side']**2}x{c['D']}-s{c['seed']}")
def test_same_kept_set_on_near_duplicate_tokens(case):
    """AR(1) tokens (static ones correlated 0.99 frame to frame, a few cuts): long segments with large pools full
    of distance near-ties. The kept set equals the paper's; merged features may differ where a near-tie assigns a
    pool token to another anchor (our decisions are on canonical float64 distances, the paper's on float32 cdist)."""
    from tango_plugin.testing.synthetic import ar1_video

    v = ar1_video(case["T"], (case["side"],) * 2, case["D"], num_cuts=case["cuts"], seed=case["seed"])
    cfg = tp.TangoConfig(retention_ratio=case["r"], reference_merge_order=True)
    ours = tp.prune_video_tokens(v.features, v.saliency, v.grid_hw, v.timestamps, cfg)
    kept, feats = run_reference(v.features, v.saliency, v.grid_hw, v.timestamps, cfg)
    assert torch.equal(ours.kept_indices, kept)
    assert ours.features.shape == feats.shape
