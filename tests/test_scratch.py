"""The engine's scratch buffers (docs/algorithm.md §12): reused views on the CPU, plans that never alias them,
the keep limit between calls, fresh tensors elsewhere."""

from __future__ import annotations

import threading

import pytest
import torch

import tango_plugin as tango
from tango_plugin.engine import scratch
from tango_plugin.testing import synthetic


@pytest.fixture(autouse=True)
def _fresh_scratch():
    limit = scratch.keep_limit()
    scratch.release()
    yield
    scratch.set_keep_limit(limit)
    scratch.release()


def test_a_name_is_one_buffer_reused_and_grown():
    a = scratch.take("t", (4, 8), torch.float32, "cpu")
    b = scratch.take("t", (2, 8), torch.float32, "cpu")
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 8)
    c = scratch.take("t", (64, 64), torch.float64, "cpu")  # larger: a new buffer
    assert c.shape == (64, 64) and c.dtype == torch.float64
    assert scratch.held_bytes() == 64 * 64 * 8
    assert scratch.take("other", (4,), torch.int64, "cpu").data_ptr() != c.data_ptr()


def test_session_keeps_buffers_up_to_the_limit():
    scratch.set_keep_limit(1024)
    with scratch.session():
        scratch.take("small", (16,), torch.float32, "cpu")
    assert scratch.held_bytes() == 64
    with scratch.session():
        with scratch.session():  # nested: only the outermost session trims
            scratch.take("big", (1024,), torch.float32, "cpu")
        assert scratch.held_bytes() > 1024
    assert scratch.held_bytes() == 0


def test_keep_limit_is_validated_and_applied():
    scratch.take("x", (1024,), torch.float32, "cpu")
    scratch.set_keep_limit(0)
    assert scratch.held_bytes() == 0
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match=r"scratch keep limit nbytes=.*expected an int >= 0"):
            scratch.set_keep_limit(bad)


def test_buffers_are_per_thread():
    mine = scratch.take("t", (8,), torch.float32, "cpu")
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(scratch.take("t", (8,), torch.float32, "cpu").data_ptr()))
    thread.start()
    thread.join()
    assert theirs[0] != mine.data_ptr()


def test_plans_never_alias_the_scratch_buffers():
    """A plan must survive the next call, which rewrites every buffer."""
    cfg = tango.TangoConfig(retention_ratio=0.1)
    v1 = synthetic.synthetic_video(20, (14, 14), 64, num_scenes=1, dynamic_fraction=0.5, seed=0)
    v2 = synthetic.synthetic_video(20, (14, 14), 64, num_scenes=1, dynamic_fraction=0.5, seed=1)
    first = tango.prune_video_tokens(v1.features, v1.saliency, v1.grid_hw, v1.timestamps, cfg)
    kept, feats = first.kept_indices.clone(), first.features.clone()
    assert scratch.held_bytes() > 0  # the call used (and kept) buffers
    buffers = [b.untyped_storage().data_ptr() for b in scratch._LOCAL.by_name.values()]
    assert first.features.untyped_storage().data_ptr() not in buffers
    tango.prune_video_tokens(v2.features, v2.saliency, v2.grid_hw, v2.timestamps, cfg)
    assert torch.equal(first.kept_indices, kept) and torch.equal(first.features, feats)
    scratch.set_keep_limit(0)  # buffers freed after every call: the same plan
    again = tango.prune_video_tokens(v1.features, v1.saliency, v1.grid_hw, v1.timestamps, cfg)
    assert scratch.held_bytes() == 0
    assert torch.equal(again.kept_indices, kept) and torch.equal(again.features, feats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_other_devices_get_fresh_tensors():
    a = scratch.take("t", (8,), torch.float32, "cuda")
    b = scratch.take("t", (8,), torch.float32, "cuda")
    assert a.data_ptr() != b.data_ptr() and scratch.held_bytes() == 0
