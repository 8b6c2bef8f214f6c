"""The command line: the demo's engine part writes real pictures; `prune` runs on saved tensors."""

import pytest
import torch
from adapter_testers import spy_strategy

from tango_plugin.cli import main
from tango_plugin.testing import synthetic_video


def test_demo_engine_part_writes_pngs(tmp_path, capsys, monkeypatch):
    import re

    from tango_plugin.cli import demo

    calls = []
    real = demo.prune_video_tokens
    monkeypatch.setattr(demo, "prune_video_tokens", lambda *a: calls.append(a[-1].strategy) or real(*a))
    assert main(["demo", "--no-model", "--frames", "6", "--grid", "4", "--dim", "24", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for name in ("tango", "topk", "uniform"):
        png = (tmp_path / f"kept_{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"IDAT" in png and b"IEND" in png
        assert f"| {name}" in text
        assert calls.count(name) == 4  # a first call, then the 3 warm calls the table's median is taken from
    # warm times in the table, the one-time start-up of each strategy on its own line
    assert "| warm ms |" in text
    startup = re.search(r"One-time start-up.*?: (tango \d+ ms), (topk \d+ ms), (uniform \d+ ms)\.", text)
    assert startup is not None, text


def test_saliency_picture_opens_with_pil_and_marks_kept_tokens(tmp_path):
    import numpy as np
    from PIL import Image

    from tango_plugin.cli.picture import KEPT_RGB, kept_map_png, sheet_layout

    v = synthetic_video(3, (4, 5), 8, seed=1)
    kept = torch.tensor([0, 7, 20 + 3, 40 + 19])  # frame 0: tokens 0, 7; frame 1: token 3; frame 2: token 19
    path = kept_map_png(str(tmp_path / "map.png"), v.saliency, (4, 5), kept, cell=6)
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "RGB"
    layout = sheet_layout(3, (4, 5), 6)
    assert image.size == layout.size and layout.columns == 2
    pixels = np.asarray(image)

    def centre(t, i):
        x0, y0, x1, y1 = layout.cell_box(t, i)
        return tuple(int(c) for c in pixels[(y0 + y1) // 2, (x0 + x1) // 2])

    assert centre(1, 3) == KEPT_RGB and centre(2, 19) == KEPT_RGB and centre(0, 7) == KEPT_RGB
    grey = centre(1, 4)  # a pruned token: its saliency as a grey level, not green
    assert grey[0] == grey[1] == grey[2] and grey != KEPT_RGB


def test_prune_command_on_saved_tensors(tmp_path, capsys):
    v = synthetic_video(5, (4, 4), 24, seed=3)
    src, dst = tmp_path / "tokens.pt", tmp_path / "kept.pt"
    torch.save({"features": v.features, "saliency": v.saliency, "grid_hw": (4, 4), "timestamps": v.timestamps}, src)
    assert main(["prune", str(src), "--ratio", "0.25", "--output", str(dst)]) == 0
    saved = torch.load(dst, weights_only=True)
    assert saved["kept_indices"].numel() == saved["features"].shape[0] > 0
    assert saved["config"]["retention_ratio"] == 0.25


def test_prune_command_refuses_bad_input_files_with_one_error_line(tmp_path, capsys):
    not_torch, wrong = tmp_path / "notes.txt", tmp_path / "wrong.pt"
    not_torch.write_text("not a tensor file")
    torch.save({"features": torch.zeros(2, 4, 8)}, wrong)
    for path, says in ((tmp_path / "missing.pt", "no such file"), (not_torch, "torch.load cannot read it"),
                       (wrong, "missing keys ['saliency', 'grid_hw']")):
        assert main(["prune", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: input={str(path)!r}: {says}") and "grid_hw (H, W)" in err, err
        assert "Traceback" not in err


def test_bad_ratio_is_a_clear_error(tmp_path, capsys):
    args = ["demo", "--no-model", "--ratio", "1.5", "--frames", "2", "--grid", "2", "--dim", "12",
            "--out", str(tmp_path)]
    assert main(args) == 2
    assert "retention_ratio=1.5" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ tango-plugin run (checkpoints)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VIDEO_FRAMES, VIDEO_FPS, VIDEO_SIDE = 12, 6, 112


def _write_video(path) -> None:
    """A 12-frame 112 x 112 MPEG-4 clip at 6 fps: a random pattern sliding right by 4 pixels a frame."""
    import numpy as np

    av = pytest.importorskip("av")
    base = np.random.default_rng(0).integers(0, 255, (VIDEO_SIDE, VIDEO_SIDE, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(VIDEO_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _save_checkpoint(folder, model_type: str, with_processor: bool = True) -> str:
    """A tiny random model and a real processor built from its classes, saved the way a checkpoint folder is."""
    import transformers as tf

    from tango_plugin import testing as tiny

    tok = tiny.build_tokenizer("llava" if model_type == "llava_onevision" else "qwen")
    model = tiny.build_model(model_type, tok)
    if model_type == "qwen2_vl":  # with a chat template (the template path of `run`)
        px = dict(min_pixels=56 * 56, max_pixels=VIDEO_SIDE * VIDEO_SIDE)
        proc = tf.Qwen2VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**px), tokenizer=tok,
                                   video_processor=tf.Qwen2VLVideoProcessor(**px, cap_pixels_per_frame=False),
                                   chat_template=QWEN_CHAT_TEMPLATE)
    else:  # no chat template: the plain "<video>" prompt path
        size = {"height": VIDEO_SIDE, "width": VIDEO_SIDE}
        proc = tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[112, 112]]),
            tokenizer=tok, video_processor=tf.LlavaOnevisionVideoProcessor(size=size), num_image_tokens=64,
            vision_feature_select_strategy="full")
    model.save_pretrained(folder)
    if with_processor:
        proc.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    pytest.importorskip("torchvision")
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("run")
    _write_video(root / "clip.mp4")
    return {"video": str(root / "clip.mp4"),
            "qwen2_vl": _save_checkpoint(root / "qwen2_vl", "qwen2_vl"),
            "llava_onevision": _save_checkpoint(root / "llava_onevision", "llava_onevision")}


def _expected_times():
    import numpy as np

    indices = np.linspace(0, VIDEO_FRAMES - 1, 4).astype(int)  # lmms-eval / VLMEvalKit uniform sampling
    return indices.tolist(), torch.tensor(indices, dtype=torch.float64) / VIDEO_FPS


def _spy_enabled(monkeypatch):
    """The options of every `tango_plugin.enabled` call and the per-call kwargs of every `generate` of `run`."""
    import tango_plugin
    from tango_plugin.cli import run as run_module

    seen = []
    real, real_generate = tango_plugin.enabled, run_module._generate

    def spy(model, config=None, **kwargs):
        seen.append(dict(kwargs))
        return real(model, config, **kwargs)

    def generate(*args, **kwargs):
        if seen and "tango_video_timestamps" in kwargs:
            seen[-1]["per_call"] = kwargs["tango_video_timestamps"]
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tango_plugin, "enabled", spy)
    monkeypatch.setattr(run_module, "_generate", generate)
    return seen


def _per_call_times(call):
    """The seconds `run` passed per call (`tango_video_timestamps=[one entry]`: metadata or seconds)."""
    from tango_plugin import timestamps_from_metadata
    from tango_plugin.integration.video_io import is_video_metadata

    assert "video_timestamps" not in call  # the times travel per call, not as an enable option
    (entry,) = call["per_call"]
    return timestamps_from_metadata(entry) if is_video_metadata(entry) else torch.as_tensor(entry)


def _tokens_line(text: str):
    import re

    before, after = re.search(r"visual tokens: (\d+) -> (\d+)", text).groups()
    return int(before), int(after)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_onevision"])
def test_run_on_saved_checkpoint_and_video_file(checkpoints, model_type, monkeypatch, capsys):
    import transformers as tf

    folder = checkpoints[model_type]
    # the folder loads back through the auto classes, as `run` loads it
    loaded = tf.AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    assert loaded.config.model_type == model_type
    proc = tf.AutoProcessor.from_pretrained(folder, local_files_only=True)
    assert bool(proc.chat_template) == (model_type == "qwen2_vl")
    capsys.readouterr()

    calls = _spy_enabled(monkeypatch)
    seen_tokens = spy_strategy(monkeypatch)
    args = ["run", "--model", folder, "--video", checkpoints["video"], "--frames", "4", "--ratio", "0.25",
            "--max-new-tokens", "3", "--compare"]
    assert main(args) == 0
    text = capsys.readouterr().out

    indices, times = _expected_times()
    assert f"sampled 4 frames {indices}" in text and f"{VIDEO_FRAMES} frames at {VIDEO_FPS} fps" in text
    assert len(calls) == 1
    torch.testing.assert_close(_per_call_times(calls[0]), times)  # frame index / average fps of the file
    if model_type == "llava_onevision":  # one LLaVA-OV frame per sampled frame: the strategy sees those times
        torch.testing.assert_close(seen_tokens[0].timestamps, times)
    else:  # one Qwen2-VL frame per temporal patch (2 frames): the paper's interpolation, first and last frame here
        torch.testing.assert_close(seen_tokens[0].timestamps, times[[0, 3]])
    assert ("prompt: chat template" in text) == (model_type == "qwen2_vl")

    before, after = _tokens_line(text)
    if model_type == "qwen2_vl":  # 112 px frames: 8 x 8 patches, 2 x 2 merge -> 16 tokens per 2-frame patch
        assert before == 2 * 16 and after == -(-before // 4)  # the Qwen adapters keep ceil(n * r)
    else:  # 4 frames of 4 x 4 pooled tokens plus the one newline
        assert before == 4 * 16 + 1 and 1 < after < before
    assert f"ratio {after / before:.3f}" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[1].split("|")[1].strip() == "unpruned" and table[1].split("|")[3].strip() == str(before)
    assert table[2].split("|")[1].strip() == "tango r=0.25" and table[2].split("|")[3].strip() == str(after)
    answers = [row.split("|")[7].strip() for row in table[1:]]
    assert all(answers)  # both answers printed (3 random tokens each)
    assert "saliency source: global_query" in text and "pruning time:" in text and "time to generate" in text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_run_config_file_topk_budget_and_picture(checkpoints, tmp_path, capsys):
    from tango_plugin import TangoConfig

    cfg = tmp_path / "cfg.json"
    cfg.write_text(TangoConfig(retention_ratio=0.5, strategy="topk").to_json())
    png = tmp_path / "kept.png"
    args = ["run", "--model", checkpoints["llava_onevision"], "--video", checkpoints["video"], "--frames", "3",
            "--config", str(cfg), "--ratio", "0.25", "--max-new-tokens", "2", "--picture", str(png)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "strategy topk, retention_ratio 0.25" in text  # --ratio overrides the file's ratio
    # top-k keeps ceil(16 * 0.25) = 4 tokens in each of the 3 frames, plus the newline token
    assert _tokens_line(text) == (3 * 16 + 1, 3 * 4 + 1)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data and "3 frames x 16 tokens" in text


@pytest.mark.parametrize("change,expect", [
    (["--video", "/no/such/clip.mp4"], "--video /no/such/clip.mp4: no such file"),
    (["--ratio", "1.5"], "--ratio 1.5: the retention ratio must be in (0, 1]"),
    (["--frames", "0"], "--frames 0: at least 1 frame"),
    (["--model", "/no/such/folder"], "--model /no/such/folder: no such folder"),
    (["--preset", "nope"], "--preset nope: unknown preset; known presets:"),
])
def test_run_bad_input_is_a_clear_error(checkpoints, change, expect, capsys):
    args = {"--model": checkpoints["qwen2_vl"], "--video": checkpoints["video"], "--frames": "4"}
    args.update(dict(zip(change[::2], change[1::2])))
    assert main(["run", *[x for kv in args.items() for x in kv]]) == 2
    captured = capsys.readouterr()
    assert expect in captured.err and "Traceback" not in captured.err


def test_run_unsupported_model_or_no_processor(checkpoints, tmp_path, capsys):
    import transformers as tf

    other = tmp_path / "text_only"
    tf.Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1).save_pretrained(other)
    assert main(["run", "--model", str(other), "--video", checkpoints["video"]]) == 2
    err = capsys.readouterr().err
    assert "model type 'qwen2' is not supported" in err and "llava_onevision" in err
    bare = _save_checkpoint(tmp_path / "bare", "qwen2_vl", with_processor=False)
    assert main(["run", "--model", bare, "--video", checkpoints["video"], "--frames", "2"]) == 2
    assert f"--model {bare}:" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_run_odd_frame_count_on_qwen(checkpoints, monkeypatch, capsys):
    # 3 frames: the Qwen processor repeats the last frame to fill the second 2-frame patch; the adapter gets the
    # 3 sampled times and interpolates them over the 2 patches (the paper's np.interp): frames 0 and 11
    calls = _spy_enabled(monkeypatch)
    seen_tokens = spy_strategy(monkeypatch)
    args = ["run", "--model", checkpoints["qwen2_vl"], "--video", checkpoints["video"], "--frames", "3",
            "--max-new-tokens", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "sampled 3 frames [0, 5, 11]" in text and "retention_ratio 0.1" in text  # the default ratio
    torch.testing.assert_close(_per_call_times(calls[0]), torch.tensor([0, 5, 11], dtype=torch.float64) / VIDEO_FPS)
    torch.testing.assert_close(seen_tokens[0].timestamps, torch.tensor([0, 11], dtype=torch.float64) / VIDEO_FPS)
    assert _tokens_line(text) == (32, 4)  # ceil(32 * 0.1)


def test_model_demo_prunes_every_tiny_model(capsys):
    from tango_plugin.cli.model_demo import run_model_demo

    rows = run_model_demo(ratio=0.25, frames=4, new_tokens=2)
    assert {r["model"] for r in rows} >= {"llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
    for r in rows:
        assert 0 < r["after"] < r["before"], r["model"]
        assert r["same_prompt"] and len(r["new_pruned"]) == 2, r["model"]
        assert not any("no video timestamps" in w or "cannot see them" in w for w in r["warnings"]), r["model"]
    assert "| qwen3_vl" in capsys.readouterr().out


# ------------------------------------------------------------------ run: the loader, --json, --picture, bad input
def _capture_plans(monkeypatch) -> list:
    """Every `PlanRecord` (tokens and plan) of the enables the test makes, through the `on_plan` observer."""
    from tango_plugin.integration import api

    seen, real = [], api.enable
    monkeypatch.setattr(api, "enable", lambda model, config=None, **kw: real(
        model, config, on_plan=seen.append, **kw))
    return seen


def test_read_video_through_transformers_loader(checkpoints, tmp_path):
    pytest.importorskip("transformers")
    from tango_plugin.integration.video_io import read_video

    indices, times = _expected_times()
    backends = ["pyav"] + (["decord"] if pytest.importorskip("importlib").util.find_spec("decord") else [])
    frames = {}
    for backend in backends + ["auto"]:
        video = read_video(checkpoints["video"], 4, backend=backend)
        assert video.indices.tolist() == indices and video.total_frames == VIDEO_FRAMES and video.fps == VIDEO_FPS
        torch.testing.assert_close(video.timestamps, times)
        assert video.metadata.frames_indices == indices and video.metadata.fps == VIDEO_FPS
        assert video.frames.shape == (4, VIDEO_SIDE, VIDEO_SIDE, 3)
        frames[video.backend] = video.frames.astype(int)
    assert read_video(checkpoints["video"], 4).backend == backends[-1]  # auto: decord when installed
    if "decord" in frames:  # both decoders give the same frames
        assert abs(frames["decord"] - frames["pyav"]).max() <= 2
    assert read_video(checkpoints["video"], 40).indices.tolist() == list(range(VIDEO_FRAMES))  # fewer frames


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_run_json_is_one_object_with_the_engine_times(checkpoints, capsys):
    import json

    args = ["run", "--model", checkpoints["qwen2_vl"], "--video", checkpoints["video"], "--frames", "4",
            "--ratio", "0.25", "--max-new-tokens", "2", "--compare", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    indices, times = _expected_times()
    assert out["model"]["model_type"] == "qwen2_vl" and out["model"]["class"] == "Qwen2VLForConditionalGeneration"
    assert out["video"]["total_frames"] == VIDEO_FRAMES and out["video"]["fps"] == VIDEO_FPS
    assert out["frames"] == indices and out["frame_times"] == pytest.approx(times.tolist())
    assert out["pruned"] is True and out["not_pruned_reason"] is None
    assert (out["visual_tokens_before"], out["visual_tokens_after"]) == (32, 8)
    assert out["unpruned"]["visual_tokens"] == 32 and isinstance(out["answer"], str)
    assert set(out["timings"]) >= {"decode_s", "load_model_s", "generate_s", "prune_s"}
    sample = out["report"]["samples"][0]
    assert sample["pruned"] and sample["visual_tokens_after"] == 8
    assert sample["timestamps_source"] == "tango_video_timestamps (per call)"
    # one time per Qwen2-VL temporal patch: the first and the last sampled frame (the paper's interpolation)
    assert sample["video_timestamps"] == [pytest.approx(times[[0, 3]].tolist())]
    assert out["config"]["retention_ratio"] == 0.25 and out["config"]["strategy"] == "tango"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_run_ratio_one_says_why_it_was_not_pruned(checkpoints, capsys):
    import json

    args = ["run", "--model", checkpoints["llava_onevision"], "--video", checkpoints["video"], "--frames", "2",
            "--ratio", "1.0", "--max-new-tokens", "1", "--json", "--picture", "unused.png"]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["pruned"] is False and out["not_pruned_reason"] and out["picture"] is None
    assert "warning: the video was not pruned" in captured.err and "no picture" in captured.err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_run_timestamps_option_reaches_the_engine(checkpoints, monkeypatch, capsys):
    seen = spy_strategy(monkeypatch)
    args = ["run", "--model", checkpoints["llava_onevision"], "--video", checkpoints["video"], "--frames", "3",
            "--timestamps", "0,2.5,7", "--max-new-tokens", "1"]
    assert main(args) == 0
    torch.testing.assert_close(seen[0].timestamps, torch.tensor([0.0, 2.5, 7.0], dtype=torch.float64))
    assert "timestamps (s, --timestamps): 0.000, 2.500, 7.000" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_vl"])
def test_run_picture_draws_kept_tokens_over_the_frames(checkpoints, model_type, monkeypatch, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from tango_plugin.cli.picture import DIM, sheet_layout
    from tango_plugin.integration.video_io import read_video

    records = _capture_plans(monkeypatch)
    png = tmp_path / "kept.png"
    args = ["run", "--model", checkpoints[model_type], "--video", checkpoints["video"], "--frames", "4",
            "--ratio", "0.25", "--max-new-tokens", "1", "--picture", str(png)]
    assert main(args) == 0
    text = capsys.readouterr().out
    (record,) = records
    tiles = 4 if model_type == "llava_onevision" else 2  # Qwen2-VL: one tile per 2-frame temporal patch
    assert record.tokens.num_frames == tiles and tuple(record.tokens.grid_hw) == (4, 4)
    assert f"{tiles} frames x 16 tokens" in text
    image = Image.open(png)
    layout = sheet_layout(tiles, (4, 4), 40)  # 160-pixel tiles: 40 pixels a token
    assert image.format == "PNG" and image.size == layout.size
    pixels = np.asarray(image.convert("RGB")).astype(int)
    sampled = read_video(checkpoints["video"], 4).frames
    kept = set(record.plan.kept_indices.tolist())
    t = tiles - 1  # the last tile: LLaVA-OV frame 11; Qwen2-VL patch 1, whose first frame is sampled frame 2 (7)
    frame = sampled[3 if model_type == "llava_onevision" else 2]
    expected = np.asarray(Image.fromarray(frame).resize((160, 160), Image.BILINEAR)).astype(int)
    x, y = layout.tile_origin(t)
    in_tile = [i for i in range(16) if t * 16 + i in kept]
    out_tile = [i for i in range(16) if t * 16 + i not in kept]
    assert in_tile and out_tile

    def inner(i):  # the cell without its outline, in the picture and in the resized frame
        x0, y0, x1, y1 = layout.cell_box(t, i)
        return pixels[y0 + 3:y1 - 3, x0 + 3:x1 - 3], expected[y0 - y + 3:y1 - y - 3, x0 - x + 3:x1 - x - 3]

    got, want = inner(in_tile[0])
    assert abs(got - want).max() <= 1  # a kept token shows the frame itself
    got_pruned, want_pruned = inner(out_tile[0])
    assert abs(got_pruned - np.round(want_pruned * DIM)).max() <= 1  # a pruned token is dimmed
    assert got.mean() > 2 * got_pruned.mean()
    x0, y0, _, _ = layout.cell_box(t, in_tile[0])
    assert tuple(pixels[y0, x0 + 10]) == (40, 200, 70)  # the kept cell's green outline
    if model_type == "qwen2_vl":  # the tile is the patch's first frame (7), not the second (11)
        other = np.asarray(Image.fromarray(sampled[3]).resize((160, 160), Image.BILINEAR)).astype(int)
        assert abs(other[y0 - y + 3:y0 - y + 37, x0 - x + 3:x0 - x + 37] - got).mean() > 10


def _write_audio_only(path) -> None:
    import numpy as np

    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for _ in range(4):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_run_bad_video_files_and_times(checkpoints, tmp_path, capsys):
    audio, text = tmp_path / "sound.m4a", tmp_path / "notes.mp4"
    _write_audio_only(audio)
    text.write_text("not a video")
    cases = [
        (["--video", str(audio)], f"--video {audio}: the file has no video stream (its streams: audio)"),
        (["--video", str(text)], f"--video {text}: not a readable video file"),
        (["--timestamps", "0,1"], "--timestamps has 2 values, but 4 frames were sampled (frames [0, 3, 7, 11] of 12)"),
        (["--timestamps", "0,1,x,3"], "--timestamps '0,1,x,3': not a comma-separated list of seconds"),
        (["--timestamps", "0,3,2,4"], "must be finite, >= 0 and non-decreasing"),
        (["--video-backend", "vlc"], "--video-backend vlc: expected auto or one of decord, pyav"),
    ]
    for change, expect in cases:
        args = {"--model": checkpoints["llava_onevision"], "--video": checkpoints["video"], "--frames": "4"}
        args.update(dict(zip(change[::2], change[1::2])))
        assert main(["run", *[x for kv in args.items() for x in kv], "--json"]) == 2, change
        captured = capsys.readouterr()
        assert expect in captured.err and "Traceback" not in captured.err, (change, captured.err)
        assert captured.out == ""  # --json: no half report on stdout


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_run_progress_only_on_a_terminal(checkpoints, monkeypatch, capsys):
    import sys

    args = ["run", "--model", checkpoints["llava_onevision"], "--video", checkpoints["video"], "--frames", "2",
            "--max-new-tokens", "2"]
    assert main(args) == 0
    assert "generating" not in capsys.readouterr().err  # stderr is not a terminal here: no bars
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args + ["--quiet"]) == 0
    assert "generating" not in capsys.readouterr().err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "decoding clip.mp4" in err and "loading llava_onevision" in err and "generating (pruned)" in err
    assert "2/2" in err  # one step per new token


# ============================================================================================ tiny
@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_onevision"])
def test_tiny_writes_a_checkpoint_that_loads_and_runs_enabled_from_its_section(tmp_path, model_type):
    pytest.importorskip("torchvision")
    import transformers as tf

    import tango_plugin as tango
    from tango_plugin.cli import main

    folder = tmp_path / "tiny"
    assert main(["tiny", model_type, str(folder), "--tango", '{"tango_ratio": 0.25}']) == 0
    processor = tf.AutoProcessor.from_pretrained(folder)
    model = tango.from_pretrained(str(folder))
    handle = tango.get_handle(model)
    assert handle is not None and handle.config.retention_ratio == 0.25
    video = torch.randint(0, 255, (8, 112, 112, 3), dtype=torch.uint8).numpy()
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "video"},
                                                                        {"type": "text", "text": "what?"}]}],
                                         add_generation_prompt=True)
    inputs = processor(text=[text], videos=[video], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, tango_video_timestamps=[[0.5 * i for i in
                                                                                                  range(8)]])
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    row = handle.report()["samples"][0]
    assert row["pruned"] and row["visual_tokens_after"] < row["visual_tokens_before"]


def test_tiny_refuses_a_bad_section(tmp_path, capsys):
    from tango_plugin.cli import main

    assert main(["tiny", "qwen2_vl", str(tmp_path / "x"), "--tango", '{"tango_ratio": 2}']) == 2
    assert "tango_ratio" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_readme_offline_block_runs_as_written(tmp_path):
    """README's "No checkpoint at hand?" block, verbatim, with this environment's tango-plugin as .venv/bin."""
    pytest.importorskip("torchvision")
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    start = text.index("```bash", text.index("No checkpoint at hand?"))
    block = text[start + len("```bash"):text.index("```", start + 7)].strip()
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (tmp_path / "kept.png").stat().st_size > 0 and (tmp_path / "tiny-llava-ov" / "config.json").exists()
    assert "tokens" in out and "pruned" in out.lower()
