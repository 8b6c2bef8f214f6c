"""`tango-plugin generalize`: every (model, strategy, ratio) through lmms-eval plus each model's unpruned baseline,
then the retention table: a pruned score / the same model's unpruned score, per task (docs/generalization.md).

    tango-plugin generalize --model ckpt/qwen2.5-vl-7b ckpt/llava-ov-7b --strategy tango visionzip \\
        --ratio 0.1 0.15 0.2 --tasks videomme mvbench --model-args max_num_frames=32 --output runs/generalize

Each run is `python -m lmms_eval --model tango_<wrapper>` in its own folder (`runs/<model>/<run>/`: the lmms-eval
output, its log and the Tango report); a run whose folder holds a finished `run.json` with the same settings is not
redone, so an interrupted command picks up where it stopped. The unpruned baseline is the same wrapper with
`tango=false`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

#: config.json `model_type` -> the Tango lmms-eval model that evaluates it (docs/lmms_eval.md)
LMMS_MODEL_OF_TYPE = {
    "qwen2_vl": "tango_qwen2_vl",
    "qwen2_5_vl": "tango_qwen2_5_vl",
    "qwen3_vl": "tango_qwen3_vl",
    "qwen3_vl_moe": "tango_qwen3_vl",
    "llava_onevision": "tango_llava_hf",
    "llava_qwen": "tango_llava_onevision",  # LLaVA-NeXT's own format; LLaVA-Video checkpoints: tango_llava_vid
}
LMMS_MODELS = sorted(set(LMMS_MODEL_OF_TYPE.values()) | {"tango_llava_vid"})
DEFAULT_RATIOS = (0.1, 0.15, 0.2)
FAILED_INSIDE = "the evaluation failed inside this model"
UNPRUNED = "unpruned"


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint to evaluate: its path or Hub id, its model type and the lmms-eval model that runs it."""

    path: str
    model_type: str
    lmms_model: str

    @property
    def slug(self) -> str:
        """A folder name for the model's runs: the path's last parts, safe characters only."""
        tail = "-".join(p for p in self.path.rstrip("/").split("/")[-2:] if p not in ("", ".", ".."))
        return re.sub(r"[^A-Za-z0-9._-]+", "_", tail) or "model"


@dataclass(frozen=True)
class Run:
    model: ModelSpec
    strategy: Optional[str]  # None: the unpruned baseline
    ratio: Optional[float]

    @property
    def name(self) -> str:
        return UNPRUNED if self.strategy is None else f"{self.strategy}-r{self.ratio:g}"


# ------------------------------------------------------------------------------------------------ checking input
def _bad(argument: str, value, allowed: str) -> ValueError:
    return ValueError(f"{argument} {value!r} is not allowed; {allowed}")


def read_model_type(path: str) -> str:
    """`model_type` of a checkpoint folder's config.json, or of a Hub id's (downloaded with huggingface_hub)."""
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            raise _bad("--model", path, "the folder has no config.json (give a checkpoint folder or a Hub id)")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not os.path.exists(os.path.dirname(path) or "."):
        try:
            from huggingface_hub import hf_hub_download

            config = hf_hub_download(path, "config.json")
        except Exception as err:  # noqa: BLE001 - offline, unknown id, gated: all mean "cannot read it"
            raise _bad("--model", path, f"no such folder, and its config.json could not be fetched from the Hub "
                                        f"({type(err).__name__}: {err})") from None
    else:
        raise _bad("--model", path, "no such folder; give a checkpoint folder or a Hub id (org/name)")
    with open(config) as fh:
        model_type = json.load(fh).get("model_type")
    if not model_type:
        raise _bad("--model", path, "its config.json has no model_type")
    return model_type


def resolve_model(path: str, lmms_model: Optional[str] = None) -> ModelSpec:
    """A `ModelSpec` for `path`; `lmms_model` overrides the wrapper chosen from the model type."""
    model_type = read_model_type(path)
    if lmms_model is not None:
        if lmms_model not in LMMS_MODELS:
            raise _bad("--lmms-model", lmms_model, f"expected one of {LMMS_MODELS}")
        return ModelSpec(path, model_type, lmms_model)
    if model_type not in LMMS_MODEL_OF_TYPE:
        raise _bad("--model", path, f"its model_type {model_type!r} has no Tango lmms-eval model; supported types: "
                                    f"{sorted(LMMS_MODEL_OF_TYPE)} (or name one with --lmms-model)")
    return ModelSpec(path, model_type, LMMS_MODEL_OF_TYPE[model_type])


def check_strategies(names: Sequence[str]) -> List[str]:
    from ..strategies import list_strategies

    registered = [s for s in list_strategies() if not s.startswith("test_")]
    for name in names:
        if name not in registered:
            raise _bad("--strategy", name, f"registered strategies: {registered}")
    return list(names)


def check_ratios(values: Sequence[float]) -> List[float]:
    for r in values:
        if not (isinstance(r, (int, float)) and 0 < r <= 1 and not math.isnan(r)):
            raise _bad("--ratio", r, "a retention ratio must be in (0, 1]")
    return [float(r) for r in values]


def check_python(python: str) -> None:
    """The python that runs lmms-eval must import it and the Tango lmms-eval models."""
    if not os.path.exists(python):
        raise _bad("--python", python, "no such file (the python of an environment with lmms-eval)")
    probe = subprocess.run([python, "-c", "import lmms_eval, tango_plugin.patches.lmms_eval"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        raise _bad("--python", python, "it cannot import lmms_eval and tango_plugin (docs/lmms_eval.md says how to "
                                       f"set one up): {probe.stderr.strip()[-400:]}")


def check_tasks(python: str, tasks: Sequence[str], include_path: Optional[str]) -> None:
    """Every task must be known to lmms-eval's `TaskManager` (with `--include-path`), before any run starts."""
    code = ("import json, sys\nfrom lmms_eval.tasks import TaskManager\n"
            "tm = TaskManager(verbosity='ERROR', include_path=sys.argv[1] or None)\n"
            "print('TASKS ' + json.dumps([t for t in sys.argv[2:] if t not in tm.all_tasks]))")
    proc = subprocess.run([python, "-c", code, include_path or "", *tasks], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("TASKS ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"listing lmms-eval's tasks failed: {(proc.stderr or proc.stdout).strip()[-600:]}")
    unknown = json.loads(line[len("TASKS "):])
    if unknown:
        where = f" (with --include-path {include_path})" if include_path else " (add --include-path for your own)"
        raise _bad("--tasks", unknown[0], f"lmms-eval knows no such task{where}")


# ------------------------------------------------------------------------------------------------ one run
def run_settings(run: Run, args) -> dict:
    """What determines a run's result: a finished run with the same settings is reused."""
    return {"model": run.model.path, "lmms_model": run.model.lmms_model, "strategy": run.strategy,
            "ratio": run.ratio, "tasks": list(args.tasks), "model_args": args.model_args or "", "limit": args.limit,
            "batch_size": args.batch_size, "include_path": args.include_path, "lmms_args": args.lmms_args or ""}


def _model_args(run: Run, args, report: str) -> str:
    parts = [f"pretrained={run.model.path}"]
    if args.model_args:
        parts.append(args.model_args)
    if run.strategy is None:
        parts.append("tango=false")
    else:
        parts += [f"tango_ratio={run.ratio!r}", f"tango_strategy={run.strategy}"]
    parts.append(f"tango_report={report}")
    return ",".join(parts)


def lmms_command(run: Run, args, folder: str) -> List[str]:
    cmd = [args.python, "-m", "lmms_eval", "--model", run.model.lmms_model,
           "--model_args", _model_args(run, args, os.path.join(folder, "tango_report.json")),
           "--tasks", ",".join(args.tasks), "--batch_size", str(args.batch_size),
           "--output_path", os.path.join(folder, "lmms"), "--log_samples"]
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    if args.include_path:
        cmd += ["--include_path", args.include_path]
    return cmd + shlex.split(args.lmms_args or "")


def read_scores(folder: str, tasks: Sequence[str], metric: Optional[str]) -> Dict[str, dict]:
    """task -> {"metric", "score"} from the newest lmms-eval results file under `folder`.

    The metric is `metric` where given, else the task's first numeric metric that is not a standard error (filter
    suffixes like ",none" are dropped from the name)."""
    # lmms-eval writes into a folder named after the model path, hidden for a relative one (".__tiny-qwen2-vl")
    files = sorted((os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                    if f.endswith("_results.json")), key=os.path.getmtime)
    if not files:
        raise RuntimeError("lmms-eval wrote no results file")
    with open(files[-1]) as fh:
        data = json.load(fh)
    out = {}
    for task in tasks:
        values = (data.get("results") or {}).get(task) or (data.get("groups") or {}).get(task)
        if not values:
            raise RuntimeError(f"the results file has no entry for task {task!r}")
        picked = None
        for key, value in values.items():
            name = key.split(",")[0]
            if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if metric is None or name == metric:
                picked = (name, float(value))
                break
        if picked is None:
            known = sorted({k.split(",")[0] for k in values if "_stderr" not in k and k != "alias"})
            raise RuntimeError(f"task {task!r} has no metric {metric!r}; its metrics: {known}")
        out[task] = {"metric": picked[0], "score": picked[1]}
    return out


def read_report(path: str) -> dict:
    """Visual tokens per video and prefill seconds per row from a Tango lmms-eval report ({} when missing)."""
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        report = json.load(fh)
    videos = sum(len(r.get("videos") or []) for r in report.get("samples") or [])
    prefill = report.get("prefill") or {}
    return {"videos": videos,
            "visual_tokens_before": report.get("visual_tokens_before"),
            "visual_tokens_after": report.get("visual_tokens_after"),
            "prefill_seconds_per_row": prefill.get("seconds_per_row"), "prefill_rows": prefill.get("rows"),
            "warnings": report.get("warnings") or []}


def execute(run: Run, args, folder: str) -> dict:
    """Run lmms-eval for `run` into `folder`; returns the run record (status "ok" or "failed" with the reason)."""
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "lmms_eval.log")
    cmd = lmms_command(run, args, folder)
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=args.workdir)
    seconds = time.perf_counter() - start
    record = {"run": run.name, "settings": run_settings(run, args), "seconds": seconds, "log": log,
              "returncode": proc.returncode}
    with open(log) as fh:
        text = fh.read()
    try:
        if FAILED_INSIDE in text:  # lmms-eval logs the error and exits 0; the plugin's last line says so
            line = re.sub(r"\x1b\[[0-9;]*m", "", next(ln for ln in text.splitlines() if FAILED_INSIDE in ln))
            raise RuntimeError(line[line.find("tango: "):].strip() if "tango: " in line else line.strip())
        if proc.returncode != 0:
            raise RuntimeError(f"lmms-eval exited with status {proc.returncode}")
        record["scores"] = read_scores(os.path.join(folder, "lmms"), args.tasks, args.metric)
    except RuntimeError as err:
        record.update(status="failed", error=str(err))
        return record
    record.update(status="ok", report=read_report(os.path.join(folder, "tango_report.json")))
    with open(os.path.join(folder, "run.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    return record


def finished(folder: str, settings: dict) -> Optional[dict]:
    """The record of a finished run in `folder` with these settings, else None."""
    path = os.path.join(folder, "run.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        record = json.load(fh)
    return record if record.get("status") == "ok" and record.get("settings") == settings else None


# ------------------------------------------------------------------------------------------------ the table
HEADER = ["model", "task", "metric", "strategy", "ratio", "score", "retention", "video tokens / video",
          "prefill s / video"]


def table_rows(models: Sequence[ModelSpec], runs: Sequence[Run], records: Dict[Run, dict],
               tasks: Sequence[str]) -> List[dict]:
    """One row per (model, task, run): the score, retention = score / the model's unpruned score, tokens kept per
    video (the baseline's: the pruned runs' count before pruning) and prefill seconds per video."""
    rows = []
    for model in models:
        base = records.get(Run(model, None, None), {})
        base_ok = base.get("status") == "ok"
        before = next((r["report"].get("visual_tokens_before") / r["report"]["videos"] for run, r in records.items()
                       if run.model == model and r.get("status") == "ok" and r["report"].get("videos")), None)
        for task in tasks:
            for run in (r for r in runs if r.model == model):
                rec = records.get(run, {})
                row = {"model": model.slug, "task": task, "strategy": run.strategy or UNPRUNED,
                       "ratio": run.ratio if run.ratio is not None else 1.0, "status": rec.get("status", "missing"),
                       "metric": None, "score": None, "retention": None, "tokens_per_video": None,
                       "prefill_seconds_per_video": None, "error": rec.get("error")}
                if rec.get("status") == "ok":
                    score = rec["scores"][task]
                    row.update(metric=score["metric"], score=score["score"])
                    if base_ok:
                        reference = base["scores"][task]["score"]
                        row["retention"] = score["score"] / reference if reference else None
                    report = rec.get("report") or {}
                    videos = report.get("videos")
                    if run.strategy is None:
                        row["tokens_per_video"] = before
                    elif videos:
                        row["tokens_per_video"] = report["visual_tokens_after"] / videos
                    row["prefill_seconds_per_video"] = report.get("prefill_seconds_per_row")
                rows.append(row)
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict]) -> str:
    from ..table import markdown_table

    cells = []
    for r in rows:
        failed = r["status"] != "ok"
        cells.append([r["model"], r["task"], r["metric"] or "-", r["strategy"], f"{r['ratio']:g}",
                      "FAILED" if failed else _fmt(r["score"], 4), _fmt(r["retention"]),
                      _fmt(r["tokens_per_video"], 1), _fmt(r["prefill_seconds_per_video"])])
    return markdown_table(HEADER, cells)


def write_outputs(output: str, rows: Sequence[dict], records: Dict[Run, dict], tasks: Sequence[str]) -> List[str]:
    """results.json (rows and run records), results.csv (rows), retention.png (one panel per model and task)."""
    from .plot import line_panels

    paths = [os.path.join(output, n) for n in ("results.json", "results.csv", "retention.png")]
    with open(paths[0], "w") as fh:
        json.dump({"rows": list(rows), "runs": [dict(r, model=run.model.path) for run, r in records.items()]}, fh,
                  indent=2)
    with open(paths[1], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    panels: Dict[str, Dict[str, list]] = {}
    for r in rows:
        if r["strategy"] == UNPRUNED:
            continue
        title = r["model"] if len(tasks) == 1 else f"{r['model']} / {r['task']}"
        panels.setdefault(title, {}).setdefault(r["strategy"], []).append((r["ratio"], r["retention"]))
    line_panels(paths[2], panels or {"no pruned runs": {}}, title="retention = pruned score / unpruned score")
    return paths


# ------------------------------------------------------------------------------------------------ the command
def cmd_generalize(args) -> int:
    from tqdm.auto import tqdm

    try:
        strategies = check_strategies(args.strategy)
        ratios = check_ratios(args.ratio)
        models = [resolve_model(p, args.lmms_model) for p in args.model]
        if args.limit is not None and args.limit <= 0:
            raise _bad("--limit", args.limit, "expected a positive number of documents per task")
        if args.batch_size < 1:
            raise _bad("--batch-size", args.batch_size, "expected a positive integer")
        check_python(args.python)
        check_tasks(args.python, args.tasks, args.include_path)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    runs = [Run(m, s, r) for m in models for s, r in [(None, None)] + [(s, r) for s in strategies for r in ratios]]
    records: Dict[Run, dict] = {}
    reused = 0
    bar = tqdm(runs, desc="generalize", unit="run", file=sys.stderr)
    for run in bar:
        bar.set_postfix_str(f"{run.model.slug} {run.name}")
        folder = os.path.abspath(os.path.join(args.output, "runs", run.model.slug, run.name))
        record = finished(folder, run_settings(run, args))
        if record is not None:
            reused += 1
        else:
            record = execute(run, args, folder)
            if record["status"] != "ok":
                tqdm.write(f"error: run {run.model.slug} {run.name} failed: {record['error']}; log: {record['log']}",
                           file=sys.stderr)
        records[run] = record
    rows = table_rows(models, runs, records, args.tasks)
    paths = write_outputs(args.output, rows, records, args.tasks)
    print(format_table(rows))
    failed = [r for r in records.values() if r["status"] != "ok"]
    print(f"\n{len(runs)} runs: {len(runs) - len(failed)} ok ({reused} reused from an earlier command), "
          f"{len(failed)} failed; retention = score / the model's unpruned score")
    print("wrote " + ", ".join(paths))
    return 1 if failed else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `generalize` command to the `tango-plugin` sub-parsers."""
    p = subparsers.add_parser("generalize", help="lmms-eval over models x strategies x ratios, the retention table",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, metavar="PATH",
                   help="checkpoint folders or Hub ids (the model type picks the Tango lmms-eval model)")
    p.add_argument("--strategy", nargs="+", default=["tango"], metavar="NAME", help="registered strategies")
    p.add_argument("--ratio", nargs="+", type=float, default=list(DEFAULT_RATIOS), metavar="R",
                   help="retention ratios in (0, 1]")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK", help="lmms-eval task names")
    p.add_argument("--output", required=True, help="folder for the runs, results.json / .csv and retention.png")
    p.add_argument("--python", default=os.environ.get("TANGO_LMMS_PYTHON", sys.executable),
                   help="python of the environment with lmms-eval (default: $TANGO_LMMS_PYTHON, else this one)")
    p.add_argument("--model-args", default="", help="extra --model_args of every run, e.g. max_num_frames=32")
    p.add_argument("--lmms-model", choices=LMMS_MODELS, help="the Tango lmms-eval model for every --model "
                   "(default: from each model's type)")
    p.add_argument("--metric", help="the metric to compare (default: each task's first metric)")
    p.add_argument("--limit", type=int, help="documents per task (lmms-eval --limit; for trying the command)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--include-path", help="folder of your own lmms-eval task definitions")
    p.add_argument("--lmms-args", default="", help="more lmms-eval arguments, as one quoted string")
    p.add_argument("--workdir", default=None, help="working directory of the lmms-eval runs (default: this one)")
    p.set_defaults(func=cmd_generalize)
    return p


__all__ = ["cmd_generalize", "add_parser", "resolve_model", "read_scores", "table_rows", "LMMS_MODEL_OF_TYPE"]
