"""`tango-plugin generalize`: bad input refused before any run, the retention arithmetic, the results files, and (with
an lmms-eval environment, `TANGO_LMMS_PYTHON`) the real orchestration on a tiny saved checkpoint and the tiny offline
task: runs, table, resume after an interruption, a failing run.

The tiny model's answers are noise (accuracy 0 on the tiny task), so the end-to-end test checks the orchestration;
the arithmetic is checked on records written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tango_plugin.cli import generalize as g

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lmms_eval"


def _checkpoint_folder(tmp_path: Path, model_type: str) -> str:
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(folder)


# ------------------------------------------------------------------------------------------------ bad input
def test_models_resolve_to_their_lmms_eval_wrapper_or_are_refused(tmp_path):
    assert g.resolve_model(_checkpoint_folder(tmp_path, "qwen2_5_vl")).lmms_model == "tango_qwen2_5_vl"
    assert g.resolve_model(_checkpoint_folder(tmp_path, "llava_onevision")).lmms_model == "tango_llava_hf"
    with pytest.raises(ValueError, match=r"--model '.*nope' is not allowed; no such folder"):
        g.resolve_model(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        g.resolve_model(str(empty))
    other = _checkpoint_folder(tmp_path, "llama")
    with pytest.raises(ValueError, match=r"model_type 'llama' has no Tango lmms-eval model; supported types: "):
        g.resolve_model(other)
    assert g.resolve_model(other, "tango_qwen2_vl").lmms_model == "tango_qwen2_vl"  # the user's choice
    with pytest.raises(ValueError, match=r"--lmms-model 'qwen2_vl' is not allowed; expected one of"):
        g.resolve_model(other, "qwen2_vl")


def test_strategies_and_ratios_are_checked():
    assert g.check_strategies(["tango", "dart"]) == ["tango", "dart"]
    with pytest.raises(ValueError, match=r"--strategy 'tangoo' is not allowed; registered strategies: \["):
        g.check_strategies(["tangoo"])
    assert g.check_ratios([0.1, 1]) == [0.1, 1.0]
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"--ratio .* a retention ratio must be in \(0, 1\]"):
            g.check_ratios([bad])


def _main(argv, capsys):
    from tango_plugin.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_refuses_bad_input_before_any_run(tmp_path, capsys):
    model = _checkpoint_folder(tmp_path, "qwen2_vl")
    out = tmp_path / "out"
    base = ["generalize", "--tasks", "videomme", "--output", str(out)]
    code, _, err = _main(base + ["--model", model, "--strategy", "nope"], capsys)
    assert code == 2 and "--strategy 'nope' is not allowed" in err
    code, _, err = _main(base + ["--model", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such folder" in err
    code, _, err = _main(base + ["--model", model, "--ratio", "0"], capsys)
    assert code == 2 and "--ratio 0.0 is not allowed" in err
    code, _, err = _main(base + ["--model", model, "--python", str(tmp_path / "py")], capsys)
    assert code == 2 and "--python" in err and "no such file" in err
    # this environment has no lmms-eval: the python is refused, naming what it lacks
    probe = subprocess.run([sys.executable, "-c", "import lmms_eval"], capture_output=True)
    if probe.returncode != 0:
        code, _, err = _main(base + ["--model", model, "--python", sys.executable], capsys)
        assert code == 2 and "cannot import lmms_eval" in err
    assert not out.exists()  # nothing started


# ------------------------------------------------------------------------------------------------ arithmetic
def _record(scores, after=None, videos=2, before=64, prefill=0.5, status="ok"):
    report = {"videos": videos if after is not None else 0, "visual_tokens_before": before if after else 0,
              "visual_tokens_after": after or 0, "prefill_seconds_per_row": prefill}
    return {"status": status, "scores": {t: {"metric": "acc", "score": s} for t, s in scores.items()},
            "report": report}


def test_retention_is_the_score_over_the_same_models_unpruned_score(tmp_path):
    a = g.ModelSpec("ckpt/a", "qwen2_vl", "tango_qwen2_vl")
    b = g.ModelSpec("ckpt/b", "qwen2_vl", "tango_qwen2_vl")
    runs = [g.Run(m, s, r) for m in (a, b) for s, r in [(None, None), ("tango", 0.1), ("uniform", 0.1)]]
    records = {
        runs[0]: _record({"t1": 0.8, "t2": 0.5}, prefill=1.0),
        runs[1]: _record({"t1": 0.72, "t2": 0.5}, after=8, prefill=0.25),
        runs[2]: _record({"t1": 0.4, "t2": 0.25}, after=8),
        runs[3]: _record({"t1": 0.0, "t2": 0.6}),
        runs[4]: {"status": "failed", "error": "lmms-eval wrote no results file"},
        runs[5]: _record({"t1": 0.3, "t2": 0.3}, after=8),
    }
    rows = g.table_rows([a, b], runs, records, ["t1", "t2"])
    by = {(r["model"], r["task"], r["strategy"]): r for r in rows}
    assert by[("ckpt-a", "t1", "tango")]["retention"] == pytest.approx(0.9)
    assert by[("ckpt-a", "t2", "uniform")]["retention"] == pytest.approx(0.5)
    assert by[("ckpt-a", "t1", "unpruned")]["retention"] == pytest.approx(1.0)
    # tokens per video: the pruned run's own count; the baseline's is the count before pruning
    assert by[("ckpt-a", "t1", "tango")]["tokens_per_video"] == 4.0
    assert by[("ckpt-a", "t1", "unpruned")]["tokens_per_video"] == 32.0
    assert by[("ckpt-a", "t1", "tango")]["prefill_seconds_per_video"] == 0.25
    assert by[("ckpt-b", "t1", "uniform")]["retention"] is None  # the baseline scored 0: no ratio
    assert by[("ckpt-b", "t2", "uniform")]["retention"] == pytest.approx(0.5)
    failed = by[("ckpt-b", "t1", "tango")]
    assert failed["status"] == "failed" and failed["score"] is None and "no results file" in failed["error"]
    assert "FAILED" in g.format_table(rows)
    paths = g.write_outputs(str(tmp_path), rows, records, ["t1", "t2"])
    saved = json.loads(Path(paths[0]).read_text())
    assert len(saved["rows"]) == 12 and saved["rows"][1]["retention"] == pytest.approx(0.9)
    assert Path(paths[1]).read_text().splitlines()[0].startswith("model,task,strategy,ratio,status")
    from PIL import Image

    assert Image.open(paths[2]).size[0] >= 400


def test_scores_are_read_from_the_results_file(tmp_path):
    run = tmp_path / "lmms" / ".__model"
    run.mkdir(parents=True)
    (run / "2026_results.json").write_text(json.dumps({"results": {
        "videomme": {"alias": "videomme", "videomme_perception_score,none": 55.5,
                     "videomme_perception_score_stderr,none": "N/A"},
        "mvbench": {"alias": "mvbench", "acc_stderr,none": 0.1, "acc,none": 0.61, "other,none": 3.0}}}))
    got = g.read_scores(str(tmp_path), ["videomme", "mvbench"], None)
    assert got == {"videomme": {"metric": "videomme_perception_score", "score": 55.5},
                   "mvbench": {"metric": "acc", "score": 0.61}}
    assert g.read_scores(str(tmp_path), ["mvbench"], "other")["mvbench"]["score"] == 3.0
    with pytest.raises(RuntimeError, match=r"task 'mvbench' has no metric 'f1'; its metrics: \['acc', 'other'\]"):
        g.read_scores(str(tmp_path), ["mvbench"], "f1")
    with pytest.raises(RuntimeError, match="no entry for task 'mlvu'"):
        g.read_scores(str(tmp_path), ["mlvu"], None)
    with pytest.raises(RuntimeError, match="no results file"):
        g.read_scores(str(tmp_path / "other"), ["mlvu"], None)


def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path):
    args = SimpleNamespace(tasks=["t"], model_args="", limit=None, batch_size=1, include_path=None, lmms_args="")
    run = g.Run(g.ModelSpec("m", "qwen2_vl", "tango_qwen2_vl"), "tango", 0.1)
    settings = g.run_settings(run, args)
    (tmp_path / "run.json").write_text(json.dumps({"status": "ok", "settings": settings}))
    assert g.finished(str(tmp_path), settings) is not None
    assert g.finished(str(tmp_path), dict(settings, limit=5)) is None
    (tmp_path / "run.json").write_text(json.dumps({"status": "failed", "settings": settings}))
    assert g.finished(str(tmp_path), settings) is None


# ------------------------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def lmms(tmp_path_factory):
    from test_lmms_eval import CLIPS, _lmms_python, _save_checkpoint, _write_clip

    python = _lmms_python()
    root = tmp_path_factory.mktemp("generalize")
    videos = root / "videos"
    videos.mkdir()
    for name, (frames, fps) in CLIPS.items():
        _write_clip(videos / name, frames, fps)
    return {"python": python, "root": root, "videos": str(videos),
            "checkpoint": _save_checkpoint(root / "tiny-qwen2-vl", "qwen2_vl")}


def _generalize(lmms, *extra, output="out"):
    env = {**os.environ, "TANGO_TINY_VIDEO_DIR": lmms["videos"], "HF_HOME": str(lmms["root"] / "hf"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "FORCE_QWENVL_VIDEO_READER": "decord", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("tango-plugin")), "generalize", "--model", lmms["checkpoint"],
           "--tasks", "tango_tiny_video", "--include-path", str(TASKS), "--limit", "2",
           "--python", lmms["python"], "--output", str(lmms["root"] / output),
           "--model-args", "device=cpu,device_map=cpu,max_pixels=12544,max_num_frames=3", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(lmms["root"]))
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_runs_every_strategy_and_ratio_plus_the_baseline_and_resumes(lmms):
    code, out, err = _generalize(lmms, "--strategy", "tango", "--ratio", "0.25", "0.5")
    assert code == 0, out + err[-4000:]
    assert "3 runs: 3 ok (0 reused" in out
    folder = lmms["root"] / "out"
    saved = json.loads((folder / "results.json").read_text())
    rows = {(r["strategy"], r["ratio"]): r for r in saved["rows"]}
    assert set(rows) == {("unpruned", 1.0), ("tango", 0.25), ("tango", 0.5)}
    runs = folder / "runs" / g.resolve_model(lmms["checkpoint"]).slug  # the path's last two parts
    for name, (strategy, ratio) in {"unpruned": ("unpruned", 1.0), "tango-r0.25": ("tango", 0.25),
                                    "tango-r0.5": ("tango", 0.5)}.items():
        report = json.loads((runs / name / "tango_report.json").read_text())
        row = rows[(strategy, ratio)]
        assert row["status"] == "ok" and row["metric"] == "exact_match"
        assert (runs / name / "lmms_eval.log").read_text().startswith("$ ")  # the log of each run is kept
        # the score is the run's own results file's
        (results,) = [p for p in (runs / name / "lmms").rglob("*_results.json")]
        assert row["score"] == json.loads(results.read_text())["results"]["tango_tiny_video"]["exact_match,none"]
        # prefill time per video from the report, which also times the unpruned run (tango=false)
        assert report["prefill"]["calls"] == 2 and report["prefill"]["seconds"] > 0
        assert row["prefill_seconds_per_video"] == pytest.approx(report["prefill"]["seconds_per_row"])
        if strategy == "unpruned":
            assert report["enabled"] is False and report["samples"] == []
        else:
            assert report["config"]["retention_ratio"] == ratio and report["config"]["strategy"] == "tango"
            assert row["tokens_per_video"] == report["visual_tokens_after"] / 2
    # 2 temporal patches x 16 tokens per clip (3 frames each): 32 tokens, 8 and 16 kept
    assert rows[("unpruned", 1.0)]["tokens_per_video"] == 32
    assert rows[("tango", 0.25)]["tokens_per_video"] == 8 and rows[("tango", 0.5)]["tokens_per_video"] == 16
    # the tiny model answers noise: its unpruned score is 0, so there is no retention to give
    if rows[("unpruned", 1.0)]["score"] == 0:
        assert rows[("tango", 0.25)]["retention"] is None
    assert (folder / "results.csv").exists() and (folder / "retention.png").exists()

    # run again: nothing is redone
    stamp = (runs / "tango-r0.5" / "lmms_eval.log").stat().st_mtime_ns
    code, out, _ = _generalize(lmms, "--strategy", "tango", "--ratio", "0.25", "0.5")
    assert code == 0 and "3 runs: 3 ok (3 reused" in out
    assert (runs / "tango-r0.5" / "lmms_eval.log").stat().st_mtime_ns == stamp
    # an interrupted command: the run that did not finish has no run.json; only it runs again
    (runs / "tango-r0.5" / "run.json").unlink()
    code, out, _ = _generalize(lmms, "--strategy", "tango", "--ratio", "0.25", "0.5")
    assert code == 0 and "3 runs: 3 ok (2 reused" in out
    assert (runs / "tango-r0.5" / "lmms_eval.log").stat().st_mtime_ns != stamp


def test_cli_unknown_task_and_a_failing_run(lmms):
    code, _, err = _generalize(lmms, "--tasks", "tango_tiny_video", "no_such_task", output="bad")
    assert code == 2 and "--tasks 'no_such_task' is not allowed; lmms-eval knows no such task" in err
    assert not (lmms["root"] / "bad").exists()
    # a sink position outside the tiny grid fails inside the model; lmms-eval exits 0, the command does not
    model_args = "device=cpu,device_map=cpu,max_pixels=12544,max_num_frames=3,tango_sink_positions=[999]"
    code, out, err = _generalize(lmms, "--strategy", "uniform", "--ratio", "0.5", "--model-args", model_args,
                                 output="failing")
    assert code == 1, out + err[-3000:]
    slug = g.resolve_model(lmms["checkpoint"]).slug
    assert f"error: run {slug} uniform-r0.5 failed: tango: tango_qwen2_vl: the evaluation failed inside" in err
    assert "2 runs: 1 ok (0 reused from an earlier command), 1 failed" in out  # tango=false ignores the sinks
    saved = json.loads((lmms["root"] / "failing" / "results.json").read_text())
    failed = [r for r in saved["rows"] if r["status"] == "failed"]
    assert len(failed) == 1 and "lmms_eval.log" in [r for r in saved["runs"] if r["status"] == "failed"][0]["log"]
