"""Saliency sources, timestamps and decode positions of the adapters, checked against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
from adapter_testers import TESTERS

import tango_plugin as tango
from tango_plugin import testing as tiny
from tango_plugin.engine.saliency import attention_received_saliency, global_query_saliency
from tango_plugin.integration.adapter import CallInputs

pytestmark = pytest.mark.filterwarnings("ignore:tango_plugin. preset sink positions")


def _encode(model, inputs, config, **options):
    with tango.enabled(model, config, **options) as h:
        videos, raw, _ = h.adapter.encode_videos(CallInputs(inputs), True)
    return videos


def test_global_query_formula_on_a_hand_case():
    q = torch.zeros(1, 1, 4, 2)
    q[..., 0] = 1.0  # mean query (1, 0)
    k = torch.tensor([[[[2.0, 0], [0, 0], [0, 5], [-2, 0]]]])
    got = global_query_saliency(q, k)
    logits = torch.tensor([2.0, 0, 0, -2]) / math.sqrt(2)
    torch.testing.assert_close(got[0], logits.softmax(0))
    merged = global_query_saliency(q, k, merge=2)  # keys averaged before the softmax
    torch.testing.assert_close(merged[0], (torch.tensor([1.0, -1.0]) / math.sqrt(2)).softmax(0))
    recv = attention_received_saliency(q, k)
    torch.testing.assert_close(recv.sum(-1), torch.ones(1))


@torch.no_grad()
def test_llava_global_query_matches_manual_recomputation():
    t = TESTERS["llava_onevision"]
    model = t.model()
    inputs = t.single(model)
    videos = _encode(model, inputs, tango.TangoConfig(retention_ratio=0.2))
    tower = model.model.vision_tower
    hs = tower(inputs["pixel_values_videos"][0], output_hidden_states=True).hidden_states[-2]
    attn = tower.encoder.layers[-1].self_attn
    x = tower.encoder.layers[-1].layer_norm1(hs)
    F_, P, _ = x.shape
    q = attn.q_proj(x).view(F_, P, 4, -1).transpose(1, 2)
    k = attn.k_proj(x).view(F_, P, 4, -1).transpose(1, 2)
    qbar = q.mean(2, keepdim=True)
    per_patch = ((qbar @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)
    side = math.isqrt(P)
    pooled = torch.nn.functional.interpolate(per_patch.view(F_, 1, side, side), size=(4, 4), mode="bilinear")
    torch.testing.assert_close(videos[0].saliency, pooled.flatten(1), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_siglip_head_source(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    t = TESTERS["llava_onevision"]
    model = t.model()
    vc = model.config.vision_config
    torch.manual_seed(5)
    head_model = SiglipVisionModel(SiglipVisionConfig(hidden_size=vc.hidden_size, intermediate_size=128,
                                                      num_hidden_layers=1, num_attention_heads=4, image_size=112,
                                                      patch_size=14, vision_use_head=True)).eval()
    head_model.save_pretrained(tmp_path)
    config = tango.TangoConfig(retention_ratio=0.2, saliency_source="siglip_head", siglip_head_path=str(tmp_path),
                               segmentation="fastvid")
    inputs = t.single(model)
    videos = _encode(model, inputs, config)
    hs = model.model.vision_tower(inputs["pixel_values_videos"][0], output_hidden_states=True).hidden_states[-1]
    z = head_model.post_layernorm(hs)
    probe = head_model.head.probe.repeat(z.shape[0], 1, 1)
    _, w = head_model.head.attention(probe, z, z, need_weights=True)
    expected = model.model.apply_pooling(w[:, 0, :, None]).squeeze(-1)
    torch.testing.assert_close(videos[0].saliency, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(videos[0].frame_embeddings, head_model.head(z), rtol=1e-5, atol=1e-5)
    with tango.enabled(model, config) as h:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert h.report()["saliency_source"] == "siglip_head"
    with pytest.raises(ValueError, match="no attention-pooling head"):
        SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, vision_use_head=False)).save_pretrained(
            tmp_path / "nohead")
        tango.enable(model, config.replace(siglip_head_path=str(tmp_path / "nohead")))


@torch.no_grad()
def test_qwen25_window_order_is_undone():
    """Scores from the window-ordered last block equal scores computed in raster order."""
    from transformers.vision_utils import get_vision_window_index

    t = TESTERS["qwen2_5_vl"]
    model = t.model()
    inputs = t.inputs(model, [[tiny.VideoSpec(8, size=168)]], ["what?"])  # 12 x 12 patches: several windows
    videos = _encode(model, inputs, tango.TangoConfig(retention_ratio=0.2))
    visual = model.model.visual
    grid = inputs["video_grid_thw"]
    captured = {}
    handle = visual.blocks[-1].attn.register_forward_pre_hook(
        lambda m, a, kw: captured.update(hs=a[0], pe=kw["position_embeddings"]), with_kwargs=True)
    try:
        visual(inputs["pixel_values_videos"], grid_thw=grid)
    finally:
        handle.remove()
    window_index, _ = get_vision_window_index(grid, spatial_merge_size=2, window_size=visual.window_size,
                                              patch_size=visual.patch_size)
    assert not torch.equal(window_index, torch.arange(window_index.numel()))  # the order really is permuted
    inv = torch.argsort(window_index)

    def unpermute(x):
        return x.reshape(-1, 4, *x.shape[1:])[inv].reshape(x.shape)

    attn = visual.blocks[-1].attn
    hs = unpermute(captured["hs"])
    cos, sin = (unpermute(p) for p in captured["pe"])
    n = hs.shape[0]
    q, k, _ = attn.qkv(hs).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    import sys

    q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision(q, k, cos, sin)
    gt, gh, gw = grid[0].tolist()
    q = q.reshape(gt, gh * gw, attn.num_heads, -1).transpose(1, 2)
    k = k.reshape(gt, gh * gw, attn.num_heads, -1).transpose(1, 2)
    expected = global_query_saliency(q, k, merge=4)
    torch.testing.assert_close(videos[0].saliency, expected, rtol=1e-5, atol=1e-6)
    # and the features line up with the merger output in raster order (what the model scatters)
    assert videos[0].features.shape[:2] == expected.shape


@torch.no_grad()
def test_timestamps():
    t = TESTERS["qwen2_5_vl"]
    model = t.model()
    inputs = t.inputs(model, [[tiny.VideoSpec(8, second_per_grid=0.5)]], ["what?"])
    ts = _encode(model, inputs, tango.TangoConfig(retention_ratio=0.2))[0].timestamps
    # 8 frames, 0.25 s apart (second_per_grid_ts / 2), interpolated over the 4 patches from the first to the last
    torch.testing.assert_close(ts, torch.tensor([0.0, 7 / 12, 7 / 6, 1.75], dtype=torch.float64))
    q2 = TESTERS["qwen2_vl"]
    m2 = q2.model()
    ts2 = _encode(m2, q2.single(m2), tango.TangoConfig(retention_ratio=0.2), fps=4)[0].timestamps
    torch.testing.assert_close(ts2, torch.tensor([0.0, 7 / 12, 7 / 6, 1.75], dtype=torch.float64))  # 8 frames, 4 fps
    lv = TESTERS["llava_onevision"]
    m3 = lv.model()
    assert _encode(m3, lv.single(m3), tango.TangoConfig(retention_ratio=0.2))[0].timestamps is None  # -> 0..T-1
    given = torch.arange(8) * 0.25
    ts3 = _encode(m3, lv.single(m3), tango.TangoConfig(retention_ratio=0.2), video_timestamps=given)[0].timestamps
    torch.testing.assert_close(ts3, given.double())
    with pytest.raises(ValueError, match="fps"):
        tango.enable(m3, tango.TangoConfig(), fps=0)


def test_qwen_patch_times_are_the_papers_interpolation_bit_for_bit():
    import numpy as np
    from tango_plugin.model_zoo.qwen_vl import patch_times

    rng = np.random.default_rng(0)
    for _ in range(300):  # irregular frame indices (as sampled by index rounding), any frame / patch counts
        n, t = int(rng.integers(1, 65)), int(rng.integers(1, 33))
        frame_times = [float(i) / 29.97 for i in np.sort(rng.integers(0, 9000, n))]
        expected = np.interp(np.linspace(0, n - 1, t), np.arange(n), frame_times)
        assert np.array_equal(patch_times(torch.tensor(frame_times, dtype=torch.float64), t).numpy(), expected)


@torch.no_grad()
def test_qwen_per_frame_times_with_an_odd_frame_count():
    # 7 sampled frames: the processor repeats the last one, so the video has 4 two-frame patches
    times = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64)
    q2 = TESTERS["qwen2_vl"]
    m2 = q2.model()
    inputs = q2.single(m2)
    assert inputs["video_grid_thw"][0, 0] == 4
    ts = _encode(m2, inputs, tango.TangoConfig(retention_ratio=0.2), video_timestamps=times)[0].timestamps
    torch.testing.assert_close(ts, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))  # first .. last frame
    q3 = TESTERS["qwen3_vl"]
    m3 = q3.model()
    ts = _encode(m3, q3.single(m3), tango.TangoConfig(retention_ratio=0.2), video_timestamps=times)[0].timestamps
    torch.testing.assert_close(ts, torch.tensor([0.25, 1.25, 2.25, 3.0], dtype=torch.float64))  # patch means
    with pytest.raises(ValueError, match=r"video 0 has 9 values.*4 temporal patches.*\(4\).*7 to 8"):
        _encode(m2, inputs, tango.TangoConfig(retention_ratio=0.2), video_timestamps=torch.arange(9.0))


def _positions_seen(model, inputs, n=3):
    seen = []
    lm = model.model.language_model
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    finally:
        handle.remove()
    return seen, out


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@torch.no_grad()
def test_pruned_decode_continues_at_unpruned_positions(name):
    """Kept tokens keep their original M-RoPE positions and decode steps get the positions unpruned HF gives."""
    t = TESTERS[name]
    model = t.model()
    inputs = t.inputs(model, [[tiny.VideoSpec(8, second_per_grid=2.0)]], ["what happens?"])
    full_seen, _ = _positions_seen(model, inputs)
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25)) as h:
        pruned_seen, _ = _positions_seen(model, inputs)
        row = h.report()["samples"][0]
    removed = row["visual_tokens_before"] - row["visual_tokens_after"]
    assert removed > 0
    prefill_full, prefill_pruned = full_seen[0], pruned_seen[0]
    assert prefill_pruned.shape[-1] == prefill_full.shape[-1] - removed
    # every kept position (rows 1..3) is one of the original ones, in order; text after the video unchanged
    tail = 10
    assert torch.equal(prefill_pruned[1:, :, -tail:], prefill_full[1:, :, -tail:])
    for full_step, pruned_step in zip(full_seen[1:], pruned_seen[1:]):
        assert torch.equal(pruned_step[1:], full_step[1:])  # 3-D positions identical to unpruned decoding
        assert torch.equal(pruned_step[0], full_step[0] - removed)  # text row follows the shorter cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "tower-view"])
@pytest.mark.parametrize("merge", [1, 4])
def test_global_query_gives_the_bits_of_the_plain_formula(dtype, layout, merge):
    """The float copies of q and k go into scratch buffers (engine/saliency.py): the same operands as the plain
    formula's, so the same bits, for contiguous heads and for a tower's (S, n, H, d) -> (S, H, n, d) view."""
    import math

    S, H, n, d = 3, 4, 32, 16
    g = torch.Generator().manual_seed(7)
    q, k = (torch.randn(S, n, H, d, generator=g).to(dtype) for _ in range(2))
    q, k = (t.transpose(1, 2) if layout == "tower-view" else t.transpose(1, 2).contiguous() for t in (q, k))
    qf, kf = q.float(), k.float()
    keys = kf if merge == 1 else kf.reshape(S, H, n // merge, merge, d).mean(3)
    plain = ((qf.mean(2, keepdim=True) @ keys.transpose(-1, -2)).squeeze(2) / math.sqrt(d)).softmax(-1).mean(1)
    for _ in range(2):  # the second call reuses the buffers
        assert torch.equal(global_query_saliency(q, k, merge), plain)


@pytest.mark.parametrize("source", ["global_query", "attention_received"])
def test_llava_ov_saliency_reads_the_towers_own_q_and_k(source, monkeypatch):
    """The hooks take the feature layer's q_proj / k_proj outputs (no second projection): the scores equal those
    of q and k recomputed with the layer's projections on its input, bit for bit."""
    import tango_plugin.model_zoo.vision_towers as towers
    from adapter_testers import TESTERS

    from tango_plugin.engine.saliency import score

    scored = []
    monkeypatch.setattr(towers, "score", lambda *a, **k: scored.append(score(*a, **k)) or scored[-1])
    t = TESTERS["llava_onevision"]
    model = t.model()
    with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25, saliency_source=source), **t.options) as h:
        layer = h.adapter._tower_layers()[h.adapter._layer_index(model.config.vision_feature_layer)]
        seen = []
        hook = layer.self_attn.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True)
        try:
            with torch.no_grad():
                h.adapter.encode_videos(CallInputs(t.single(model)), True)
        finally:
            hook.remove()
    attn = layer.self_attn
    (hs,) = seen
    with torch.no_grad():
        assert len(scored) == 1 and torch.equal(scored[0], score(source, *towers.project_qk(attn, hs)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_qwen_rotation_gives_the_towers_own_rotated_q_and_k(dtype):
    """`rotated_qk` (scratch buffers, seven passes) gives the values of the family's `apply_rotary_pos_emb_vision`
    bit for bit, for each Qwen-VL / GLM-4V module; a function that computes something else is refused by the check
    and then used as it is."""
    import importlib

    from tango_plugin.model_zoo.qwen_vl import rotated_qk, rotation_matches

    from tango_plugin.engine import scratch

    n, H, d = 53, 3, 16
    g = torch.Generator().manual_seed(3)
    qkv = (torch.randn(n, 3 * H * d, generator=g) * 3).to(dtype)
    half = torch.randn(n, d // 2, generator=g) * 20
    cos, sin = torch.cat([half, half], -1).cos(), torch.cat([half, half], -1).sin()
    q, k, _ = qkv.view(n, 3, H, d).permute(1, 0, 2, 3).unbind(0)
    for module in ["qwen2_vl.modeling_qwen2_vl", "qwen2_5_vl.modeling_qwen2_5_vl", "qwen3_vl.modeling_qwen3_vl",
                   "glm4v.modeling_glm4v"]:
        rotary = importlib.import_module("transformers.models." + module).apply_rotary_pos_emb_vision
        assert rotation_matches(rotary, dtype)
        with scratch.session():
            got = rotated_qk(qkv, H, cos, sin)
            for want, have in zip(rotary(q, k, cos, sin), got):
                assert have.dtype == torch.float32 and torch.equal(want.float(), have)

    def other(q, k, cos, sin):  # rotates the other way round
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        return q * cos - q * sin, k * cos - k * sin

    assert not rotation_matches(other, dtype)


def test_qwen_saliency_in_bf16_is_the_score_of_the_towers_rotated_q_and_k(monkeypatch):
    """A bf16 Qwen2-VL tower: the hooks' scores equal `score` on q / k taken from the tower's own qkv output and
    rotated by the tower's own function (what its attention computes), bit for bit; the hook took `rotated_qk`
    (not the fallback to the tower's function)."""
    import tango_plugin.model_zoo.qwen_vl as qwen_vl
    import transformers.models.qwen2_vl.modeling_qwen2_vl as qwen2_vl

    from tango_plugin.engine.saliency import score

    rotations = []
    fast = qwen_vl.rotated_qk
    monkeypatch.setattr(qwen_vl, "rotated_qk", lambda *a: rotations.append(a[0].shape) or fast(*a))

    t = TESTERS["qwen2_vl"]
    model = t.model().to(torch.bfloat16)
    attn = model.model.visual.blocks[-1].attn
    seen = {}

    def take(key, value):  # hooks must return None: a value would replace the module's inputs / output
        seen[key] = value

    h1 = attn.qkv.register_forward_hook(lambda mod, args, out: take("qkv", out.clone()))
    h2 = attn.register_forward_pre_hook(lambda mod, args, kwargs: take("rope", kwargs["position_embeddings"]),
                                        with_kwargs=True)
    try:
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.25), **t.options) as h, torch.no_grad():
            videos, _, _ = h.adapter.encode_videos(CallInputs(t.single(model)), True)
    finally:
        h1.remove()
        h2.remove()
    got = torch.cat([g.saliency.flatten() for v in videos for g in v.grids])
    out = seen["qkv"]
    n, heads = out.shape[0], attn.num_heads
    q, k, _ = out.reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = qwen2_vl.apply_rotary_pos_emb_vision(q, k, *seen["rope"])
    (T, hh, ww), = [tuple(int(x) for x in g) for g in t.single(model)["video_grid_thw"].tolist()]
    d = q.shape[-1]
    with torch.no_grad():
        want = score("global_query", q.reshape(T, hh * ww, heads, d).transpose(1, 2),
                     k.reshape(T, hh * ww, heads, d).transpose(1, 2), merge=4).flatten()
    assert got.dtype == want.dtype and torch.equal(got.to(want.dtype), want)
    # the whole tower's qkv output went through it (besides, on a first use, the tiny input of rotation_matches)
    assert rotations[-1] == seen["qkv"].shape and len(rotations) in (1, 2)
