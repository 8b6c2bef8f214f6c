"""`tango-plugin matrix`: registered adapters x strategies x retention ratios on tiny random models, one table.

Per cell (adapter, strategy, ratio), on the tiny random models of `tango_plugin.testing` (CPU, no downloads):

* **budget**: every video's kept count (the report's `kept_by_strategy`, checked against the plans the strategy
  returned) against its documented count: with ``--exact-budget`` it must equal
  `exact_keep_count(T, L, r) = T * max(1, ceil(L * r))` ("64=64"); without, it must be positive and at most
  `plain_keep_ceiling(T, L, r) = ceil(r T L) + 2 T` ("35<=45"; docs/algorithm.md, "Exact-count budget"). At
  retention 1.0 the adapters splice the unpruned tokens and call no strategy, so there no plan may be made and
  every video must reach the LLM whole ("64 whole": its tokens, as many as the stock model's where the layout is
  the stock one);
* **deterministic**: the same input twice keeps the same indices (at 1.0: makes no plan) and generates the same
  tokens;
* **batch == single**: a 2-video batch gives each row the kept counts and new tokens of that row alone;
* **generate**: `generate` returns the caller's prompt plus the new tokens, the row reported as pruned (at 1.0: as
  not pruned);
* **ratio-1.0 identity**: at retention 1.0 the logits equal the unpruned model's (rtol = atol = 1e-5) and the
  generated tokens are the same (once per adapter and strategy; "n/a" for adapter options the stock model
  cannot express, e.g. LLaVA-Video's average pooling with grid newlines);
* **time**: seconds the cell took.

The command exits 1 when a cell fails (2 on bad arguments). Adapters are `tango_plugin.list_adapters()` plus
option variants written as ``name[option,...]`` (``llava_onevision[average,grid]`` = ``pool_mode="average",
newline="grid"``, the LLaVA-Video layout); a registered type without a tiny recipe in `tango_plugin.testing`
(e.g. `llava_qwen`, LLaVA-NeXT's own package) is skipped with a note. Strategies default to every registered one
except names starting with ``test_`` (name those explicitly).

Example:
    ```
    tango-plugin matrix --adapters qwen2_vl "llava_onevision[average,grid]" --strategies tango,topk --ratios 0.25
    ```
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

#: option variants of registered adapters: suffix -> enable() options
VARIANT_OPTIONS: Dict[str, Dict[str, str]] = {
    "average,grid": {"pool_mode": "average", "newline": "grid"},
}
#: adapters shown by default besides the registered types
DEFAULT_VARIANTS = ("llava_onevision[average,grid]",)
DEFAULT_RATIOS = (0.1, 0.25)
NEW_TOKENS = 4
FRAMES = 8

HEADER = ["adapter", "strategy", "ratio", "budget", "deterministic", "batch == single", "generate",
          "ratio-1.0 identity", "time (s)"]


@dataclass
class Variant:
    """One adapter column of the matrix: a registered model type and the options `enable` gets."""

    name: str
    model_type: str
    options: Dict[str, str] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        """The built-in type whose processor layout the tiny inputs follow (`tango_plugin.testing`)."""
        from ..testing import tiny_models

        return getattr(tiny_models, "INPUT_LAYOUT", {}).get(self.model_type, self.model_type)

    @property
    def tokenizer_style(self) -> str:
        return "llava" if self.layout.startswith("llava") or self.model_type.startswith("llava") else "qwen"

    @property
    def batch_frames(self) -> Tuple[int, int]:
        # LLaVA-style models stack the videos of a batch into one tensor: both must have the same length
        return (FRAMES, FRAMES) if self.tokenizer_style == "llava" else (FRAMES, FRAMES - 2)

    @property
    def matches_stock(self) -> bool:
        """The stock HF model computes the same at retention 1.0 (not so for options it cannot express)."""
        return not self.options


@dataclass
class Cell:
    adapter: str
    strategy: str
    ratio: float
    budget: str = ""
    deterministic: str = ""
    batch: str = ""
    generate: str = ""
    identity: str = ""
    seconds: float = 0.0
    errors: List[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(v.startswith("FAIL") for v in (self.budget, self.deterministic, self.batch, self.generate,
                                                   self.identity)) or bool(self.errors)

    def row(self) -> List[str]:
        return [self.adapter, self.strategy, f"{self.ratio:g}", self.budget, self.deterministic, self.batch,
                self.generate, self.identity, f"{self.seconds:.2f}"]


# ------------------------------------------------------------------------------------------------ arguments
def _split(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    """Items given space- or comma-separated; commas inside ``[...]`` belong to the name."""
    if values is None:
        return None
    out = []
    for v in values:
        out += [p.strip() for p in re.split(r",(?![^\[]*\])", v) if p.strip()]
    return out


def _tiny_recipes() -> Tuple[str, ...]:
    from ..testing import tiny_models

    # the built-in recipes, then every other type with a recipe (MORE_MODEL_TYPES, `register_tiny_model`)
    names = [*getattr(tiny_models, "MODEL_TYPES", ()), *getattr(tiny_models, "MORE_MODEL_TYPES", ()),
             *getattr(tiny_models, "INPUT_LAYOUT", {})]
    return tuple(dict.fromkeys(names))


def resolve_adapters(names: Optional[Sequence[str]]) -> Tuple[List[Variant], List[str]]:
    """(variants to run, notes on skipped registered types). Unknown names are a `ValueError`."""
    from ..integration.adapter import list_adapters

    registered = list_adapters()
    recipes = set(_tiny_recipes())
    notes = []
    if names is None:
        names = [n for n in registered if n in recipes]
        names += [v for v in DEFAULT_VARIANTS if v.split("[")[0] in names]
        for n in registered:
            if n not in recipes:
                notes.append(f"skipped adapter {n!r}: no tiny recipe in tango_plugin.testing")
    variants = []
    for name in names:
        m = re.fullmatch(r"([^\[\]]+)(?:\[([^\[\]]*)\])?", name)
        if not m or m.group(1) not in registered:
            raise ValueError(f"unknown adapter {name!r}; registered: {registered}, variants: "
                             f"{[f'<type>[{k}]' for k in VARIANT_OPTIONS]}")
        base, suffix = m.group(1), m.group(2)
        if suffix is not None and suffix not in VARIANT_OPTIONS:
            raise ValueError(f"unknown adapter options [{suffix}] in {name!r}; known: {list(VARIANT_OPTIONS)}")
        if base not in recipes:
            notes.append(f"skipped adapter {name!r}: no tiny recipe in tango_plugin.testing")
            continue
        variants.append(Variant(name, base, dict(VARIANT_OPTIONS[suffix]) if suffix else {}))
    return variants, notes


def resolve_strategies(names: Optional[Sequence[str]]) -> List[str]:
    from ..strategies import list_strategies

    registered = list_strategies()
    if names is None:
        return [s for s in registered if not s.startswith("test_")]
    unknown = [s for s in names if s not in registered]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r}; registered: {registered}")
    return list(names)


def resolve_ratios(values: Optional[Sequence[str]]) -> List[float]:
    if values is None:
        return list(DEFAULT_RATIOS)
    out = []
    for v in values:
        try:
            r = float(v)
        except ValueError:
            raise ValueError(f"ratio {v!r} is not a number; expected retention ratios in (0, 1]") from None
        if not 0.0 < r <= 1.0:
            raise ValueError(f"ratio {v!r} is outside (0, 1]")
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------------ models
@functools.lru_cache(maxsize=None)
def _tokenizer(style: str):
    from .. import testing

    return testing.build_tokenizer(style)


@functools.lru_cache(maxsize=None)
def _model(model_type: str, style: str):
    from .. import testing

    return testing.build_model(model_type, _tokenizer(style), seed=0)


def _inputs(variant: Variant, frames: Sequence[int], prompts: Sequence[str], seeds: Sequence[int] = (1, 2)):
    from .. import testing

    model = _model(variant.model_type, variant.tokenizer_style)
    media = [[testing.VideoSpec(f, seed=s)] for f, s in zip(frames, seeds)]
    return testing.video_inputs(model, _tokenizer(variant.tokenizer_style), media, list(prompts))


PROMPTS = ("what happens?", "how many people are there? describe the scene in detail.")


# ------------------------------------------------------------------------------------------------ one cell
def _generate(model, inputs, **kw):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, **kw)


def _kept_budget(rows: list, records: list, ratio: float, exact: bool) -> str:
    """The budget column of a pruned cell: each video's kept count (from the plans) against its documented count,
    the report's `kept_by_strategy` against the plans, and one plan per video."""
    from ..engine.budgets import exact_keep_count, plain_keep_ceiling

    parts, held = [], True
    by_row: Dict[int, int] = {}
    for rec in records:
        T, Lf = rec.tokens.saliency.shape
        kept = int(rec.plan.kept_indices.numel())
        by_row[rec.row] = by_row.get(rec.row, 0) + kept
        if exact:
            want = exact_keep_count(T, Lf, ratio)
            held &= kept == want
            parts.append(f"{kept}={want}" if kept == want else f"{kept}!={want}")
        else:
            want = plain_keep_ceiling(T, Lf, ratio)
            held &= 0 < kept <= want
            parts.append(f"{kept}<={want}" if kept <= want else f"{kept}>{want}")
    reported = [r["kept_by_strategy"] for r in rows]
    if reported != [by_row.get(i, 0) for i in range(len(rows))]:
        held = False
        parts.append(f"report {reported} != plans {by_row}")
    if len(records) != len(rows):
        held = False
        parts.append(f"{len(records)} plans for {len(rows)} videos")
    return ("ok " if held else "FAIL ") + ", ".join(parts)


def _whole_budget(rows: list, records: list, variant: Variant) -> str:
    """The budget column at retention 1.0: no plan, every video reported unpruned and, in the stock layout, as many
    visual tokens reaching the LLM as the model's own."""
    held = not records and not any(r["pruned"] for r in rows) and (
        not variant.matches_stock or all(r["visual_tokens_after"] == r["visual_tokens_before"] for r in rows))
    parts = [f"{r['kept_by_strategy']} whole" for r in rows]
    if records:
        parts.append(f"{len(records)} plans at retention 1.0")
    return ("ok " if held else "FAIL ") + ", ".join(parts)


def _run_cell(variant: Variant, strategy: str, ratio: float, exact: bool, identity: str) -> Cell:
    import torch

    from ..config import TangoConfig
    from ..integration.api import enabled

    cell = Cell(variant.name, strategy, ratio, identity=identity)
    # at retention 1.0 the adapters splice the unpruned tokens and call no strategy (docs/usage.md): the cell then
    # checks that every video went through whole, with no plan, instead of a kept count
    whole = ratio >= 1.0
    model = _model(variant.model_type, variant.tokenizer_style)
    config = TangoConfig(retention_ratio=ratio, strategy=strategy, exact_budget=exact)
    records: list = []
    batch = _inputs(variant, variant.batch_frames, PROMPTS)
    singles = [_inputs(variant, [f], [p], [seed]) for f, p, seed in zip(variant.batch_frames, PROMPTS, (1, 2))]
    with enabled(model, config, on_plan=records.append, **variant.options) as handle:
        # generate on the 2-video batch
        out = _generate(model, batch)
        rows = handle.report()["samples"]
        batch_records = list(records)
        L = batch["input_ids"].shape[1]
        ok = out.shape == (2, L + NEW_TOKENS) and torch.equal(out[:, :L], batch["input_ids"]) \
            and all(r["pruned"] != whole for r in rows)
        cell.generate = "ok" if ok else f"FAIL shape {tuple(out.shape)}, pruned {[r['pruned'] for r in rows]}"
        cell.budget = _whole_budget(rows, batch_records, variant) if whole else \
            _kept_budget(rows, batch_records, ratio, exact)
        # batch == single: kept counts and new tokens of each row alone
        same, diffs = True, []
        for b, one in enumerate(singles):
            single = _generate(model, one)
            row = handle.report()["samples"][0]
            for key in ("kept_by_strategy", "visual_tokens_after"):
                if row[key] != rows[b][key]:
                    same = False
                    diffs.append(f"row {b} {key} {rows[b][key]} vs {row[key]}")
            if not torch.equal(out[b, L:], single[0, one["input_ids"].shape[1]:]):
                same = False
                diffs.append(f"row {b} new tokens differ")
        cell.batch = "ok" if same else "FAIL " + "; ".join(diffs)
        # determinism: the first single sample twice more
        records.clear()
        first = _generate(model, singles[0])
        again = _generate(model, singles[0])
        kept = [r.plan.kept_indices for r in records]
        same = (not kept if whole else len(kept) == 2 and torch.equal(kept[0], kept[1])) and torch.equal(first, again)
        cell.deterministic = "ok" if same else "FAIL kept indices or tokens differ between two runs"
    return cell


def _identity(variant: Variant, strategy: str) -> str:
    """Retention 1.0 vs the unpruned model: logits within 1e-5 and the same generated tokens."""
    import torch

    from ..config import TangoConfig
    from ..integration.api import enabled

    if not variant.matches_stock:
        return "n/a (options not in the stock model)"
    model = _model(variant.model_type, variant.tokenizer_style)
    inputs = _inputs(variant, variant.batch_frames, PROMPTS)
    ref_logits, ref_tokens = _unpruned(variant)
    with enabled(model, TangoConfig(retention_ratio=1.0, strategy=strategy), **variant.options):
        logits = model(**inputs).logits
        tokens = _generate(model, inputs)
    if logits.shape != ref_logits.shape:
        return f"FAIL logits shape {tuple(logits.shape)} vs {tuple(ref_logits.shape)}"
    if not torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-5):
        return f"FAIL max |diff| {float((logits - ref_logits).abs().max()):.2e}"
    return "ok" if torch.equal(tokens, ref_tokens) else "FAIL generated tokens differ"


_UNPRUNED: Dict[str, tuple] = {}


def _unpruned(variant: Variant):
    if variant.name not in _UNPRUNED:
        model = _model(variant.model_type, variant.tokenizer_style)
        inputs = _inputs(variant, variant.batch_frames, PROMPTS)
        _UNPRUNED[variant.name] = (model(**inputs).logits, _generate(model, inputs))
    return _UNPRUNED[variant.name]


# ------------------------------------------------------------------------------------------------ the matrix
def run_matrix(adapters: Optional[Sequence[str]] = None, strategies: Optional[Sequence[str]] = None,
               ratios: Optional[Sequence[float]] = None, exact_budget: bool = False) -> Tuple[List[Cell], List[str]]:
    """Run the matrix; returns (cells, notes). Filters as in the command (None = all / the defaults).

    A cell that raises is failed with the error in the notes; the other cells still run.
    """
    import torch

    variants, notes = resolve_adapters(adapters)
    strategies = resolve_strategies(strategies)
    ratios = list(ratios) if ratios is not None else list(DEFAULT_RATIOS)
    cells = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-time notes (timestamps, preset sinks) would bury the table
        for variant in variants:
            try:  # build the tiny model and the unpruned reference outside the cells' times
                _model(variant.model_type, variant.tokenizer_style)
                if variant.matches_stock:
                    _unpruned(variant)
            except Exception as exc:  # noqa: BLE001 - reported in every cell of this adapter
                notes.append(f"{variant.name}: building the tiny model failed: {type(exc).__name__}: {exc}")
            for strategy in strategies:
                start = time.perf_counter()
                try:
                    identity = _identity(variant, strategy)
                except Exception as exc:  # noqa: BLE001 - a broken cell is reported, the matrix goes on
                    identity = "FAIL error"
                    notes.append(f"{variant.name} x {strategy} identity: {type(exc).__name__}: {exc}")
                spent = time.perf_counter() - start
                for ratio in ratios:
                    start = time.perf_counter()
                    try:
                        cell = _run_cell(variant, strategy, ratio, exact_budget, identity)
                    except Exception as exc:  # noqa: BLE001
                        cell = Cell(variant.name, strategy, ratio, budget="FAIL error", identity=identity)
                        cell.errors.append(f"{type(exc).__name__}: {exc}")
                        notes.append(f"{variant.name} x {strategy} x {ratio:g}: {type(exc).__name__}: {exc}")
                    cell.seconds = time.perf_counter() - start + spent / len(ratios)
                    cells.append(cell)
    return cells, notes


def format_matrix(cells: Sequence[Cell], notes: Sequence[str], exact_budget: bool, seconds: float) -> str:
    from ..table import markdown_table

    failed = sum(c.failed for c in cells)
    rule = ("budget: kept = exact_keep_count(T, L, r) = T * max(1, ceil(L * r)) per video (exact_budget=True)"
            if exact_budget else "budget: 0 < kept <= plain_keep_ceiling(T, L, r) = ceil(r T L) + 2 T per video")
    if any(c.ratio >= 1.0 for c in cells):
        rule += "; at ratio 1: no plan, every video whole (the adapters call no strategy)"
    lines = [markdown_table(HEADER, [c.row() for c in cells]), "", rule]
    seen: Dict[str, List[str]] = {}
    for n in notes:  # the same error of one adapter in many cells: one line, with the number of cells
        seen.setdefault(re.sub(r"^(\S+) x \S+( x \S+| identity):", r"\1:", n, count=1), []).append(n)
    lines += [f"note: {same[0]}" if len(same) == 1 else f"note: {key} ({len(same)} checks)"
              for key, same in seen.items()]
    lines.append(f"{len(cells)} cells, {failed} failed, {seconds:.1f} s")
    return "\n".join(lines)


def cmd_matrix(args) -> int:
    adapters = _split(args.adapters)
    strategies = _split(args.strategies)
    ratios = resolve_ratios(_split(args.ratios))
    start = time.perf_counter()
    cells, notes = run_matrix(adapters, strategies, ratios, exact_budget=args.exact_budget)
    print(format_matrix(cells, notes, args.exact_budget, time.perf_counter() - start))
    if not cells:
        print("error: no cells to run (filters matched nothing)", file=sys.stderr)
        return 1
    return 1 if any(c.failed for c in cells) else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `matrix` command to the `tango-plugin` sub-parsers."""
    p = subparsers.add_parser("matrix", help="adapters x strategies x ratios on tiny random models, one table",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", nargs="+", metavar="NAME",
                   help="registered model types or variants like 'llava_onevision[average,grid]' (space- or "
                        "comma-separated; default: every type with a tiny recipe, plus the variants)")
    p.add_argument("--strategies", nargs="+", metavar="NAME",
                   help="registered strategies (default: all except names starting with 'test_')")
    p.add_argument("--ratios", nargs="+", metavar="R",
                   help=f"retention ratios in (0, 1] (default: {','.join(f'{r:g}' for r in DEFAULT_RATIOS)})")
    p.add_argument("--exact-budget", action="store_true",
                   help="run with TangoConfig(exact_budget=True): kept counts must equal exact_keep_count")
    p.set_defaults(func=cmd_matrix)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """`tango-plugin matrix` on its own (the same exit codes as the CLI: 1 = a cell failed, 2 = bad arguments)."""
    parser = argparse.ArgumentParser(prog="tango-plugin")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["matrix", *(argv or [])])
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
