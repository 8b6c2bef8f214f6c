"""The download-free quality benchmark: accuracy kept by every strategy on tiny models trained on generated video-QA.

    python benchmarks/quality.py                                    # 3 families x every strategy x 5 ratios
    python benchmarks/quality.py --families qwen2_vl --strategies tango topk --ratios 0.1 --samples 16
    python benchmarks/quality.py --output runs/quality --plot docs/img/quality_retention.png

1. For each `--families` entry a tiny model (`tango_plugin.testing.quality`) is trained with every token on the
   generated tasks, or loaded from the cache (`--cache`, default `$TANGO_QUALITY_CACHE` or
   ~/.cache/tango_plugin/quality; the folder name changes with the family, the suite version and the training
   settings, so a stale model is never reused).
2. Every (family, strategy, ratio) cell scores `--samples` fixed held-out clips per task (`--tasks`) through
   `tango_plugin.enable` with that strategy; "unpruned" is the same clips with the plugin off. Retention = pruned
   accuracy / unpruned accuracy of the same family and task. `evidence` is the share of each clip's evidence
   tokens (the tokens that show the answer) that the strategy's plan keeps.
   At ratio 1.0 `run_strategy` keeps every token before any strategy is called, so that column is computed once
   per family (plugin on, `tango` at 1.0) and reported for every strategy.
3. The controls `test_least_salient` / `test_first_frames` and the mutants `test_tango_inverted` /
   `test_tango_random` (registered only while the benchmark runs) show what losing the evidence looks like.

Output (`--output`, default runs/quality): `quality.json` (every cell and the training records; finished cells
are not recomputed when the command runs again with the same settings, so an interrupted run resumes),
`quality.csv` (one row per family, strategy, ratio and task) and the plot (`--plot`, default
`<output>/quality_retention.png`: retention vs ratio, one panel per family, one line per strategy, the mean over
the tasks the family learned above chance; `quality_evidence.png` next to it: the evidence kept, mean over tasks).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tango_plugin.table import markdown_table  # noqa: E402
from tango_plugin.testing import quality as q  # noqa: E402

RATIOS = (0.1, 0.15, 0.2, 0.25, 1.0)
UNPRUNED = "unpruned"
#: the strategy that computes the shared ratio-1.0 cells (every strategy keeps every token there)
FULL_RATIO_STRATEGY = "tango"
DEFAULT_SAMPLES = 24
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------------------


def registered_strategies() -> List[str]:
    from tango_plugin.strategies.base import list_strategies

    return [s for s in list_strategies() if not s.startswith("test_")]


def known_strategies() -> List[str]:
    return registered_strategies() + list(q.CONTROLS + q.MUTANTS)


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r}: not a number; allowed: numbers in (0, 1]")
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r}: outside (0, 1]; allowed: numbers in (0, 1]")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not an integer; allowed: integers >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: allowed: integers >= 1")
    return value


def _unique(values: Sequence) -> list:
    return list(dict.fromkeys(values))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(q.DEFAULT_FAMILIES), metavar="FAMILY",
                   help=f"tiny model families (default: {' '.join(q.DEFAULT_FAMILIES)}; "
                        f"known: {' '.join(q.FAMILIES)})")
    p.add_argument("--strategies", nargs="+", default=None, metavar="NAME",
                   help="strategies (default: every registered strategy plus the controls "
                        f"{' '.join(q.CONTROLS + q.MUTANTS)})")
    p.add_argument("--ratios", nargs="+", type=_ratio, default=list(RATIOS), metavar="R",
                   help=f"retention ratios in (0, 1] (default: {' '.join(map(str, RATIOS))})")
    p.add_argument("--tasks", nargs="+", default=list(q.TASKS), metavar="TASK",
                   help=f"tasks (default and known: {' '.join(q.TASKS)})")
    p.add_argument("--samples", type=_positive, default=DEFAULT_SAMPLES,
                   help=f"held-out clips per task (default {DEFAULT_SAMPLES})")
    p.add_argument("--train-steps", type=_positive, default=q.TrainSettings.steps,
                   help=f"training steps of a model not in the cache (default {q.TrainSettings.steps})")
    p.add_argument("--train-batch", type=_positive, default=q.TrainSettings.batch,
                   help=f"clips per training step (default {q.TrainSettings.batch})")
    p.add_argument("--cache", default=None, help="model cache folder (default $TANGO_QUALITY_CACHE or "
                                                 "~/.cache/tango_plugin/quality)")
    p.add_argument("--output", default="runs/quality", help="output folder (default runs/quality)")
    p.add_argument("--plot", default=None, help="PNG path (default <output>/quality_retention.png)")
    p.add_argument("--threads", type=_positive, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="print only the summary tables")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    bad = [f for f in args.families if f not in q.FAMILIES]
    if bad:
        p.error(f"argument --families: unknown family {bad[0]!r}; allowed: {', '.join(q.FAMILIES)}")
    bad = [t for t in args.tasks if t not in q.TASKS]
    if bad:
        p.error(f"argument --tasks: unknown task {bad[0]!r}; allowed: {', '.join(q.TASKS)}")
    known = known_strategies()
    if args.strategies is None:
        args.strategies = known
    bad = [s for s in args.strategies if s not in known]
    if bad:
        p.error(f"argument --strategies: unknown strategy {bad[0]!r}; allowed: {', '.join(known)}")
    args.families, args.tasks = _unique(args.families), _unique(args.tasks)
    args.strategies, args.ratios = _unique(args.strategies), sorted(_unique(args.ratios))
    return args


# ---------------------------------------------------------------------------------------------------------------
# the cells
# ---------------------------------------------------------------------------------------------------------------


def cell_key(family: str, model_key: str, strategy: str, ratio: float, tasks: Sequence[str], samples: int) -> str:
    return f"{family}|{model_key}|{strategy}|{ratio:g}|{','.join(tasks)}|{samples}"


def _load(path: Path) -> dict:
    if not path.is_file():
        return {"format": FORMAT_VERSION, "cells": {}, "models": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e}); move it away or choose another --output")
    if data.get("format") != FORMAT_VERSION or not isinstance(data.get("cells"), dict):
        raise SystemExit(f"error: {path} was not written by this benchmark (format {data.get('format')!r}, "
                         f"expected {FORMAT_VERSION}); move it away or choose another --output")
    data.setdefault("models", {})
    return data


def _save(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run(args: argparse.Namespace, log=print) -> dict:
    """Train / load the models, fill every missing cell (saving after each), return the results document."""
    import torch
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quality.json"
    data = _load(path)
    settings = q.TrainSettings(tasks=tuple(q.TASKS), steps=args.train_steps, batch=args.train_batch)
    started = time.perf_counter()
    results: Dict[str, dict] = {}
    with q.extra_strategies():
        for family in args.families:
            t0 = time.perf_counter()
            model, tok, record = q.train_model(family, settings, cache=args.cache, log=log)
            model_key = record["key"]
            data["models"][family] = {k: v for k, v in record.items() if k != "cached"}
            if not record["cached"]:
                log(f"{family}: trained in {time.perf_counter() - t0:.0f} s, held-out accuracy "
                    + ", ".join(f"{t} {a:.2f}" for t, a in record["held_out_accuracy"].items()))
            todo = [(UNPRUNED, 1.0)]
            for ratio in args.ratios:
                full = ratio >= 1.0
                todo += [(FULL_RATIO_STRATEGY + "@1.0", 1.0)] if full else [(s, ratio) for s in args.strategies]
            keys = {c: cell_key(family, model_key, c[0], c[1], args.tasks, args.samples) for c in todo}
            missing = [c for c in todo if keys[c] not in data["cells"]]
            items = q.make_items(args.tasks, args.samples, q.FAMILIES[family].cell) if missing else []
            bar = tqdm(missing, desc=family, unit="cell", disable=args.no_progress or not missing, leave=False)
            for strategy, ratio in bar:
                bar.set_postfix_str(f"{strategy} r={ratio:g}")
                name = None if strategy == UNPRUNED else strategy.split("@")[0]
                torch.manual_seed(0)
                res = q.evaluate(model, tok, family, items, name, ratio)
                data["cells"][keys[(strategy, ratio)]] = {
                    "family": family, "model": model_key, "strategy": strategy, "ratio": ratio, "tasks": args.tasks,
                    "samples": args.samples, "accuracy": res.accuracy, "evidence": res.evidence,
                    "kept_share": res.kept_share, "seconds": res.seconds}
                _save(path, data)
            bar.close()
            results[family] = {c: data["cells"][keys[c]] for c in todo}
            del model
    data["last_run"] = {"families": args.families, "strategies": args.strategies, "ratios": args.ratios,
                        "tasks": args.tasks, "samples": args.samples,
                        "seconds": round(time.perf_counter() - started, 1)}
    _save(path, data)
    return {"data": data, "results": results, "path": path}


# ---------------------------------------------------------------------------------------------------------------
# tables and plot
# ---------------------------------------------------------------------------------------------------------------


def learned(acc: float, task: str, samples: int) -> bool:
    """The unpruned model is above chance by more than two binomial standard errors."""
    chance = q.TASKS[task].chance
    return acc > chance + 2 * math.sqrt(chance * (1 - chance) / samples)


def rows_of(args: argparse.Namespace, results: Dict[str, dict]) -> List[dict]:
    """One row per (family, strategy, ratio, task), with the unpruned accuracy and the retention."""
    rows = []
    for family, cells in results.items():
        base = cells[(UNPRUNED, 1.0)]
        for task in args.tasks:
            b = base["accuracy"][task]
            for strategy in args.strategies:
                for ratio in args.ratios:
                    c = cells[(FULL_RATIO_STRATEGY + "@1.0", 1.0) if ratio >= 1.0 else (strategy, ratio)]
                    rows.append({
                        "family": family, "strategy": strategy, "ratio": ratio, "task": task,
                        "samples": args.samples, "chance": round(q.TASKS[task].chance, 4),
                        "unpruned_accuracy": b, "learned": learned(b, task, args.samples),
                        "accuracy": c["accuracy"][task], "retention": c["accuracy"][task] / b if b > 0 else None,
                        "evidence": c["evidence"][task], "kept_share": c["kept_share"], "cell_seconds": c["seconds"]})
    return rows


def _f(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def full_table(args, rows: List[dict]) -> str:
    """Per family, task and strategy: accuracy (retention) at each ratio, and evidence kept at the lowest ratio."""
    by = {(r["family"], r["task"], r["strategy"], r["ratio"]): r for r in rows}
    low = min(args.ratios)
    header = ["family", "task", "unpruned", "strategy"] + [f"r={x:g}" for x in args.ratios] + [f"evidence r={low:g}"]
    out = []
    for family in args.families:
        for task in args.tasks:
            first = by[(family, task, args.strategies[0], args.ratios[0])]
            base = f"{first['unpruned_accuracy']:.2f}" + ("" if first["learned"] else " (chance)")
            for strategy in args.strategies:
                cells = [by[(family, task, strategy, x)] for x in args.ratios]
                out.append([family, task, base, strategy]
                           + [f"{c['accuracy']:.2f} ({_f(c['retention'])})" for c in cells]
                           + [_f(by[(family, task, strategy, low)]["evidence"])])
    return markdown_table(header, out)


def summary_tables(args, rows: List[dict]) -> List[str]:
    """Mean retention per strategy and ratio over families and learned tasks; per task (needle, order) at the
    lowest ratio: mean retention and mean evidence kept over families."""
    tables = []
    header = ["strategy"] + [f"r={x:g}" for x in args.ratios]
    body = []
    for strategy in args.strategies:
        body.append([strategy] + [_f(_mean([r["retention"] for r in rows if r["strategy"] == strategy
                                            and r["ratio"] == x and r["learned"]])) for x in args.ratios])
    tables.append(markdown_table(header, body))
    low = min(args.ratios)
    focus = [t for t in ("needle", "order") if t in args.tasks] or list(args.tasks)[:2]
    header = ["strategy"] + [f"{t} retention" for t in focus] + [f"{t} evidence" for t in focus] \
        + ["evidence, all tasks"]
    body = []
    for strategy in args.strategies:
        sel = [r for r in rows if r["strategy"] == strategy and r["ratio"] == low]
        body.append([strategy]
                    + [_f(_mean([r["retention"] for r in sel if r["task"] == t and r["learned"]])) for t in focus]
                    + [_f(_mean([r["evidence"] for r in sel if r["task"] == t])) for t in focus]
                    + [_f(_mean([r["evidence"] for r in sel]))])
    tables.append(markdown_table(header, body))
    return tables


def learned_table(args, rows: List[dict]) -> str:
    header = ["family"] + list(args.tasks)
    body = []
    for family in args.families:
        cells = []
        for task in args.tasks:
            r = next(r for r in rows if r["family"] == family and r["task"] == task)
            cells.append(f"{r['unpruned_accuracy']:.2f}" + ("" if r["learned"] else " (chance)")
                         + f" / {r['chance']:.2f}")
        body.append([family] + cells)
    return markdown_table(header, body)


def plot(args, rows: List[dict], path: str, value: str = "retention") -> Optional[str]:
    """One panel per family, one line per strategy: the mean of `value` ("retention": over the tasks the family
    learned above chance; "evidence": over every task) against the ratio. Ratio 1.0 is left out when smaller ratios
    are there (every strategy keeps every token at 1.0: retention and evidence are 1 by construction), so that the
    ratios that differ get the width."""
    from tango_plugin.cli.plot import line_panels

    ratios = [x for x in args.ratios if x < 1.0] or list(args.ratios)
    panels = {}
    for family in args.families:
        panels[family] = {strategy: [(x, _mean([r[value] for r in rows if r["family"] == family
                                                and r["strategy"] == strategy and r["ratio"] == x
                                                and (r["learned"] or value != "retention")])) for x in ratios]
                          for strategy in args.strategies}
    if not any(y is not None for s in panels.values() for pts in s.values() for _, y in pts):
        return None  # no family learned any task above chance: nothing to plot
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if value == "retention":
        return line_panels(path, panels, title="quality benchmark: retention (pruned / unpruned accuracy), mean over "
                                               "the tasks each model learned above chance")
    return line_panels(path, panels, title="quality benchmark: share of the evidence tokens the plan keeps, mean "
                                           "over tasks", y_label="evidence kept", y_range=(0.0, 1.0))


def write_csv(path: Path, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr)) if args.quiet else print
    done = run(args, log=log)
    rows = rows_of(args, done["results"])
    out = Path(args.output)
    write_csv(out / "quality.csv", rows)
    png = plot(args, rows, args.plot or str(out / "quality_retention.png"))
    png_ev = plot(args, rows, str(Path(png or args.plot or out / "quality_retention.png").with_name(
        "quality_evidence.png")), value="evidence")
    seconds = done["data"]["last_run"]["seconds"]
    if not args.quiet:
        print(f"\nUnpruned accuracy / chance per family and task ({args.samples} clips per task; "
              "'(chance)': not above chance by two standard errors, left out of the means):\n")
        print(learned_table(args, rows))
        print("\nAccuracy (retention = pruned / unpruned accuracy) per family, task, strategy and ratio:\n")
        print(full_table(args, rows))
    mean, focus = summary_tables(args, rows)
    print("\nMean retention per strategy and ratio (over families and the tasks each learned above chance):\n")
    print(mean)
    print(f"\nAt r={min(args.ratios):g}: mean retention and evidence kept per task (over families):\n")
    print(focus)
    print(f"\n{done['path']}, {out / 'quality.csv'}, " + (f"{png}, " if png else "(no retention plot: nothing "
                                                                     "learned above chance), ") + f"{png_ev}; "
          f"{seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
