"""examples/finetune_lora.py end to end: the HF Trainer fine-tunes LoRA with pruning on, the loss falls, the trained
model beats the untrained one on held-out clips with and without pruning, and the saved adapter + Tango config
load back into a fresh model with the same outputs."""

from __future__ import annotations

import json
import warnings

import pytest
from scripts import load_script

pytest.importorskip("peft")


def _example():
    return load_script("examples/finetune_lora.py", "finetune_lora")


def test_finetune_example_trains_saves_and_reloads(tmp_path, capsys):
    example = _example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = example.main(["--output", str(tmp_path), "--steps", "40"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert summary["last_loss"] < 0.5 * summary["first_loss"]
    assert summary["visual_tokens_after"] < summary["visual_tokens_before"]
    before, after = summary["accuracy_untrained"], summary["accuracy_trained"]
    for mode in ("pruned", "full"):
        assert after[mode] > before[mode] and after[mode] >= 0.8, (mode, before, after)
    assert summary["reloaded_same_outputs"] and summary["reloaded_pruned"]
    saved = json.loads((tmp_path / "adapter" / "tango.json").read_text())["tango"]
    assert saved["tango_retention_ratio"] == 0.25 and saved["tango_fps"] == 4.0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "| trained |" in printed


def test_clips_depend_on_the_colour_only_through_the_square():
    example = _example()
    red, blue = example.clip("red", 7, 4, 42), example.clip("blue", 7, 4, 42)
    differs = (red != blue).any(dim=1)  # (frames, H, W): where the two clips differ
    assert differs.any() and differs.float().mean() < 0.2  # the square only (side size // 3), same motion and noise
    assert not (example.clip("red", 8, 4, 42) == red).all()  # another seed moves it elsewhere
