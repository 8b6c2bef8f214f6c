"""`tango-plugin matrix`: a fast subset by default, the whole matrix under `-m matrix`; a broken strategy fails its
cells and the exit code."""

from __future__ import annotations

import pytest
import torch

from tango_plugin.cli import matrix
from tango_plugin.engine.types import PrunePlan
from tango_plugin.strategies import PruningStrategy, register_strategy, unregister_strategy


def _rows(text: str) -> list:
    """The table's data rows as lists of cells."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_fast_subset_passes(capsys):
    rc = matrix.main(["--adapters", "qwen2_vl,llava_onevision[average,grid]", "--strategies", "tango", "topk",
                      "uniform", "--ratios", "0.25"])
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rc == 0, out
    assert len(rows) == 6 and "6 cells, 0 failed" in out
    assert {r[0] for r in rows} == {"qwen2_vl", "llava_onevision[average,grid]"}
    assert all(r[3].startswith("ok") and r[4] == r[5] == r[6] == "ok" for r in rows), out
    assert {r[7] for r in rows if r[0] == "qwen2_vl"} == {"ok"}
    assert all(r[7].startswith("n/a") for r in rows if r[0] != "qwen2_vl")
    assert "<=" in rows[0][3]  # plain budget: kept <= the documented ceiling


def test_retention_1_cells_check_that_every_video_goes_through_whole(capsys):
    # docs/usage.md's example: at 1.0 the adapters call no strategy, which the cells used to count as failures
    rc = matrix.main(["--adapters", "qwen2_vl", "llava_onevision[average,grid]", "--strategies", "tango,topk",
                      "--ratios", "0.25", "1.0"])
    out = capsys.readouterr().out
    assert rc == 0 and "8 cells, 0 failed" in out, out
    whole = [r for r in _rows(out) if r[2] == "1"]
    assert len(whole) == 4
    # qwen2_vl's tiny videos: 4 and 3 temporal patches of 16 tokens; llava_onevision[average,grid]: 8 frames of 16
    assert {r[3] for r in whole} == {"ok 64 whole, 48 whole", "ok 128 whole, 128 whole"}, out
    assert all(r[4] == r[5] == r[6] == "ok" for r in whole), out


def test_exact_budget_cells_show_the_exact_count(capsys):
    rc = matrix.main(["--adapters", "qwen2_vl", "--strategies", "tango", "--ratios", "0.3", "--exact-budget"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (row,) = _rows(out)
    # qwen2_vl tiny videos: 8 and 6 frames -> 4 and 3 temporal patches of 16 tokens; 4 * ceil(4.8) = 20, 3 * 5 = 15
    assert row[3] == "ok 20=20, 15=15"
    assert "exact_keep_count" in out


_CALLS = [0]


class _Flaky(PruningStrategy):
    """Keeps one token per frame, a different one on every call: breaks determinism."""

    def select(self, tokens, config):
        T, L, D = tokens.features.shape
        _CALLS[0] += 1
        flat = torch.arange(T) * L + (_CALLS[0] % L)
        return PrunePlan(flat, tokens.features.reshape(T * L, D)[flat])


@pytest.fixture
def flaky():
    register_strategy("test_flaky", _Flaky)
    yield "test_flaky"
    unregister_strategy("test_flaky")


def test_a_failing_cell_makes_the_command_exit_non_zero(capsys, flaky):
    rc = matrix.main(["--adapters", "qwen2_vl", "--strategies", f"{flaky},topk", "--ratios", "0.25"])
    out = capsys.readouterr().out
    assert rc == 1
    rows = {r[1]: r for r in _rows(out)}
    assert rows[flaky][4].startswith("FAIL") and rows["topk"][4] == "ok"
    assert "2 cells, 1 failed" in out
    # test_ strategies only run when named
    assert flaky not in matrix.resolve_strategies(None)


def test_bad_arguments_exit_2_and_unrecipied_adapters_are_noted(capsys):
    assert matrix.main(["--adapters", "gpt4v"]) == 2
    assert "unknown adapter 'gpt4v'" in capsys.readouterr().err
    assert matrix.main(["--adapters", "qwen2_vl[fancy]"]) == 2
    assert matrix.main(["--strategies", "nope"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert matrix.main(["--ratios", "0"]) == 2
    assert matrix.main(["--ratios", "abc"]) == 2
    variants, notes = matrix.resolve_adapters(None)
    names = [v.name for v in variants]
    assert "qwen2_vl" in names and "llava_onevision[average,grid]" in names and "llava_qwen" not in names
    assert any("llava_qwen" in n for n in notes)
    assert matrix._split(["a,b[c,d]", "e"]) == ["a", "b[c,d]", "e"]


def test_add_parser_wires_a_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    matrix.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["matrix", "--adapters", "qwen2_vl", "--exact-budget"])
    assert args.func is matrix.cmd_matrix and args.exact_budget and args.adapters == ["qwen2_vl"]


@pytest.mark.matrix
@pytest.mark.parametrize("exact", [False, True], ids=["plain", "exact_budget"])
def test_whole_matrix(request, capsys, exact):
    if "matrix" not in (request.config.option.markexpr or ""):
        pytest.skip("the whole matrix runs with `pytest -m matrix`")
    rc = matrix.main(["--exact-budget"] if exact else [])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out


def test_repeated_errors_are_noted_once_with_a_count():
    notes = ["skipped adapter 'x'", "a x s1 identity: ValueError: {boom}", "a x s1 x 0.1: ValueError: {boom}",
             "b x s2 x 0.1: KeyError: 3"]
    out = matrix.format_matrix([], notes, exact_budget=False, seconds=0.0)
    assert "note: a: ValueError: {boom} (2 checks)" in out
    assert "note: b x s2 x 0.1: KeyError: 3" in out and "note: skipped adapter 'x'" in out
