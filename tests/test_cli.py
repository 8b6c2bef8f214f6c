"""The command line: the demo's engine part writes real pictures; `prune` runs on saved tensors."""

import torch

from tango_plugin.cli import main
from tango_plugin.synthetic import synthetic_video


def test_demo_engine_part_writes_pngs(tmp_path, capsys):
    assert main(["demo", "--no-model", "--frames", "6", "--grid", "4", "--dim", "24", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for name in ("tango", "topk", "uniform"):
        png = (tmp_path / f"kept_{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"IDAT" in png and b"IEND" in png
        assert f"| {name}" in text


def test_prune_command_on_saved_tensors(tmp_path, capsys):
    v = synthetic_video(5, (4, 4), 24, seed=3)
    src, dst = tmp_path / "tokens.pt", tmp_path / "kept.pt"
    torch.save({"features": v.features, "saliency": v.saliency, "grid_hw": (4, 4), "timestamps": v.timestamps}, src)
    assert main(["prune", str(src), "--ratio", "0.25", "--output", str(dst)]) == 0
    saved = torch.load(dst, weights_only=True)
    assert saved["kept_indices"].numel() == saved["features"].shape[0] > 0
    assert saved["config"]["retention_ratio"] == 0.25


def test_bad_ratio_is_a_clear_error(tmp_path, capsys):
    args = ["demo", "--no-model", "--ratio", "1.5", "--frames", "2", "--grid", "2", "--dim", "12",
            "--out", str(tmp_path)]
    assert main(args) == 2
    assert "retention_ratio=1.5" in capsys.readouterr().err
