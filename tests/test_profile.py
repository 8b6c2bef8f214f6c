"""`tango-plugin profile`: the stage table, its JSON, argument errors and a model left as it was."""

from __future__ import annotations

import json

import pytest
import torch

import tango_plugin as tango
from tango_plugin import testing as tiny
from tango_plugin.cli import main
from tango_plugin.cli.profile import STAGES, Probe, Timer, _cell, profile_model, table_rows, tango_hooks

FAST = ["--repeats", "1", "--warmup", "0", "--new-tokens", "3", "--frames", "4", "--threads", "2"]


def _table(text: str) -> dict:
    """The printed markdown table as {stage label: [unpruned, pruned, speed-up]}."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= {"-"} and cells[0] != "stage":
            rows[cells[0]] = cells[1:]
    return rows


def _run_json(args, capsys) -> dict:
    assert main(["profile", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one object


def test_table_has_every_stage_and_fewer_tokens_with_pruning(capsys):
    assert main(["profile", *FAST]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "device: cpu, dtype: float32; timer: time.perf_counter" in out
    rows = _table(out)
    assert list(rows) == [label for _, label, _ in STAGES]
    video, seq = rows["video tokens into the LLM"], rows["sequence length into the LLM"]
    assert int(video[1]) < int(video[0]) and int(seq[1]) < int(seq[0])
    assert int(seq[0]) - int(seq[1]) == int(video[0]) - int(video[1])  # only video tokens were dropped
    for label in ("saliency hooks (ms)", "strategy (ms)", "splice (ms)"):
        assert rows[label][0] == "-" and float(rows[label][1]) >= 0
    for label in ("vision tower (ms)", "LLM prefill (ms)", "TTFT (ms)", "decode (tokens/s)"):
        assert float(rows[label][0]) > 0 and float(rows[label][1]) > 0 and rows[label][2].endswith("x")


def test_json_has_the_table_numbers_and_the_report_counts(capsys):
    data = _run_json(FAST, capsys)
    stages, report = data["stages"], data["report"]
    assert set(stages) == {key for key, _, _ in STAGES}
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["timer"] == "time.perf_counter"
    assert data["machine"]["cpu"] and data["memory"].startswith("CPU: peak RSS")
    assert data["repeats"] == 1 and len(data["runs"]["unpruned"]) == len(data["runs"]["pruned"]) == 1
    # the table rows in the JSON are exactly its numbers, formatted as printed
    for (key, label, _), row in zip(STAGES, data["table"]["rows"]):
        s = stages[key]
        speed = "-" if s["speedup"] is None else f"{s['speedup']:.2f}x"
        assert row == [label, _cell(key, s["unpruned"]), _cell(key, s["pruned"]), speed]
    sample = report["samples"][0]
    assert data["pruned"] and sample["pruned"]
    assert stages["visual_tokens"]["unpruned"] == sample["visual_tokens_before"] == data["visual_tokens_before"]
    assert stages["visual_tokens"]["pruned"] == sample["visual_tokens_after"] < sample["visual_tokens_before"]
    seq = stages["sequence_tokens"]
    assert seq["unpruned"] == data["prompt_tokens"]
    assert seq["pruned"] == seq["unpruned"] - sample["visual_tokens_before"] + sample["visual_tokens_after"]
    run = data["runs"]["pruned"][0]
    assert run["new_tokens"] == 3
    # each stage column is the report's own field for that stage (measured apart, not derived by subtraction),
    # every stage took time, and together they are the report's pruning time
    assert run["saliency_ms"] == pytest.approx(sample["saliency_seconds"] * 1e3, rel=1e-9)
    assert run["strategy_ms"] == pytest.approx(sample["strategy_seconds"] * 1e3, rel=1e-9)
    assert run["splice_ms"] == pytest.approx(sample["splice_seconds"] * 1e3, rel=1e-9)
    assert min(run["saliency_ms"], run["strategy_ms"], run["splice_ms"]) > 0
    total = run["saliency_ms"] + run["strategy_ms"] + run["splice_ms"]
    assert total == pytest.approx(sample["prune_seconds"] * 1e3, rel=1e-6, abs=1e-6)
    assert data["model_left_clean"] and data["left_on_model"] == []
    # the text table of another run has the same deterministic rows
    assert main(["profile", *FAST]) == 0
    rows = _table(capsys.readouterr().out)
    for key, label in (("visual_tokens", "video tokens into the LLM"), ("sequence_tokens", "sequence length into "
                                                                                         "the LLM")):
        assert rows[label][:2] == [_cell(key, stages[key]["unpruned"]), _cell(key, stages[key]["pruned"])]


def test_tiny_size_options_reach_the_model(capsys):
    data = _run_json([*FAST, "--tiny", "qwen2_vl", "--text-layers", "3", "--hidden", "96", "--heads", "6",
                      "--kv-heads", "2", "--intermediate", "160", "--vocab", "600", "--vision", "embed_dim=32",
                      "--size", "56"], capsys)
    text = data["model"]["text_config"]
    assert text == {"num_hidden_layers": 3, "hidden_size": 96, "intermediate_size": 160, "num_attention_heads": 6,
                    "num_key_value_heads": 2, "vocab_size": 600}
    # 56 px: 2 x 2 merged tokens per temporal patch, 4 frames -> 2 patches
    assert data["stages"]["visual_tokens"]["unpruned"] == 8


@pytest.mark.parametrize("args, expect", [
    (["--repeats", "0"], "--repeats 0: must be at least 1"),
    (["--new-tokens", "1"], "--new-tokens 1: must be at least 2"),
    (["--warmup", "-1"], "--warmup -1"),
    (["--frames", "0"], "--frames 0"),
    (["--tiny", "gpt2"], "--tiny gpt2: unknown model type"),
    (["--video", "clip.mp4"], "--video clip.mp4: needs --model"),
    (["--model", "/no/such/dir"], "--model /no/such/dir: --video is needed"),
    (["--model", "/no/such/dir", "--video", "clip.mp4"], "--model /no/such/dir: no such folder"),
    (["--model", "/no/such/dir", "--tiny", "qwen2_vl"], "give one of them"),
    (["--model", "/no/such/dir", "--video", "c.mp4", "--hidden", "896"], "--hidden: size options apply to --tiny"),
    (["--hidden", "0"], "--hidden 0"),
    (["--hidden", "100", "--heads", "7"], "--hidden 100 is not divisible by --heads 7"),
    (["--vision", "embed_dim"], "--vision 'embed_dim': expected KEY=VALUE"),
    (["--size", "50"], "--size 50: Qwen frames need a multiple of 28"),
    (["--ratio", "1.5"], "--ratio 1.5"),
    (["--device", "tpu"], "--device tpu"),
    (["--dtype", "int8"], "--dtype int8"),
])
def test_bad_arguments_are_clear_errors(args, expect, capsys):
    assert main(["profile", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and expect in captured.err
    assert captured.out == ""


def test_unparsable_number_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--repeats", "many"])
    assert exc.value.code == 2 and "--repeats" in capsys.readouterr().err


def _tiny_model():
    tok = tiny.build_tokenizer("qwen")
    model = tiny.build_model("qwen2_vl", tok)
    inputs = tiny.video_inputs(model, tok, [[tiny.VideoSpec(frames=4)]], ["what happens?"])
    return model, inputs


def _hook_ids(model) -> dict:
    return {name: tuple(sorted(list(m._forward_pre_hooks) + list(m._forward_hooks)))
            for name, m in model.named_modules()}


def test_model_left_without_hooks_and_tango_disabled():
    model, inputs = _tiny_model()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)  # transformers installs its own hooks once
    before, attrs = _hook_ids(model), set(model.__dict__)
    with Probe(model, Timer("cpu")).attached():
        assert tango_hooks(model)  # the checker sees this command's hooks while they are on
    assert tango_hooks(model) == []
    result = profile_model(model, inputs, tango.TangoConfig(retention_ratio=0.1), new_tokens=3, warmup=0,
                           repeats=1, enable_options={"fps": 1.0})
    assert result["model_left_clean"] and result["left_on_model"] == []
    assert tango.get_handle(model) is None and tango_hooks(model) == []
    assert _hook_ids(model) == before and set(model.__dict__) == attrs
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    rows = table_rows(result)
    assert [r[0] for r in rows] == [label for _, label, _ in STAGES]


def test_hooks_and_tango_removed_when_a_run_fails(monkeypatch):
    model, inputs = _tiny_model()

    original = Probe.streamer

    def failing_streamer(self):
        clock = original(self)
        put = clock.put

        def boom(value):
            if tango.get_handle(model) is not None:  # fail inside the pruned run, with Tango on
                raise RuntimeError("boom")
            put(value)

        clock.put = boom
        return clock

    monkeypatch.setattr(Probe, "streamer", failing_streamer)
    with pytest.raises(RuntimeError, match="boom"):
        profile_model(model, inputs, tango.TangoConfig(), new_tokens=2, warmup=0, repeats=1,
                      enable_options={"fps": 1.0})
    assert tango.get_handle(model) is None and tango_hooks(model) == []
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__


def test_profile_on_a_saved_checkpoint_and_video_file(tmp_path, capsys):
    pytest.importorskip("torchvision")
    pytest.importorskip("av")
    from test_cli import _save_checkpoint, _write_video

    _write_video(tmp_path / "clip.mp4")
    folder = _save_checkpoint(tmp_path / "qwen2_vl", "qwen2_vl")
    capsys.readouterr()
    data = _run_json(["--model", folder, "--video", str(tmp_path / "clip.mp4"), "--frames", "4", "--repeats", "1",
                      "--warmup", "0", "--new-tokens", "2"], capsys)
    sample = data["report"]["samples"][0]
    assert data["model"]["source"] == f"--model {folder}" and data["model"]["frames"] == 4
    assert data["stages"]["visual_tokens"]["unpruned"] == sample["visual_tokens_before"]
    assert data["stages"]["visual_tokens"]["pruned"] == sample["visual_tokens_after"] < sample["visual_tokens_before"]
    assert sample["timestamps_source"].startswith("tango_video_timestamps")
    assert data["model_left_clean"]


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_build_sized_model_keeps_a_resized_qwen_consistent(model_type):
    """A Qwen model at another head size gets M-RoPE sections that cover its new head_dim, and a merger that writes
    features of the LLM's width: it runs a video forward."""
    from tango_plugin.testing import VideoSpec, build_sized_model, build_tokenizer, video_inputs
    from tango_plugin.testing.tiny_models import mrope_section

    tok = build_tokenizer("qwen")
    model = build_sized_model(model_type, tok, text={"hidden_size": 96, "num_attention_heads": 4})
    text = model.config.get_text_config()
    assert text.hidden_size == 96
    assert sum(text.rope_parameters["mrope_section"]) == 96 // 4 // 2 == sum(mrope_section(24))
    inputs = video_inputs(model, tok, [[VideoSpec(frames=4)]], ["what happens?"])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_attention_heads 7"):
        build_sized_model(model_type, tok, text={"hidden_size": 100, "num_attention_heads": 7})
