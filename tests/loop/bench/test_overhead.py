"""Tests for loop.bench.overhead and the ``bench overhead`` command."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loop.bench.cli import app


def test_overhead_quick_reports_every_cell() -> None:
    methods = "naive,exact,mixed,love"
    args = ["overhead", "--n", "30", "--pools", "1500", "--methods", methods, "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cells = {c["method"]: c for c in report["cells"]}
    assert set(cells) == set(methods.split(","))
    for cell in cells.values():
        assert cell["status"] == "measured", cell
        assert cell["score_seconds"] > 0 and cell["peak_memory_bytes"] >= 0
        assert cell["bound_seconds"] > 0 and cell["ratio_to_bound"] > 0
    assert cells["exact"]["max_rel_mean_error"] < 1e-6 and cells["exact"]["max_rel_std_error"] < 1e-6
    assert "speedup_vs_naive" in cells["exact"] and "speedup_vs_naive" in cells["mixed"]
    for approximate in ("mixed", "love"):  # measured against exact on the whole pool
        assert cells[approximate]["error_reference"] == "exact, whole pool"
        assert 0 <= cells[approximate]["mean_rel_std_error"] <= cells[approximate]["max_rel_std_error"]
    assert cells["mixed"]["max_rel_std_error"] <= 0.01 and cells["mixed"]["max_rel_mean_error"] < 1e-4
    assert report["versions"]["botorch"]


def test_overhead_refuses_an_unknown_method() -> None:
    result = CliRunner().invoke(app, ["overhead", "--quick", "--methods", "magic"])
    assert result.exit_code != 0 and "magic" in result.output
