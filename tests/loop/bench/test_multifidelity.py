"""``alloop bench multifidelity`` on a tiny protocol: every method spends within the budget,
the funnel screens everything first, and the decision rule reads the medians."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from loop.bench.cli import app
from loop.bench.multifidelity import Settings, _decide, run_benchmark, run_one

TINY = Settings(pool_size=12, budget=3.0, initial_designs=2, single_batch=1, mf_batch=2, max_iterations=10)


@pytest.mark.parametrize("method", ["single", "mf_ucb", "funnel"])
def test_each_method_spends_within_the_budget(method: str) -> None:
    run = run_one("branin", method, 0, TINY)
    assert run.total_cost <= TINY.budget + 1e-9
    if math.isfinite(run.cost_to_target):
        assert run.cost_to_target <= run.total_cost and run.target_evaluations >= 1


def test_the_funnel_screens_the_whole_pool_before_a_target_evaluation() -> None:
    run = run_one("branin", "funnel", 0, TINY)
    if math.isfinite(run.cost_to_target):
        assert run.cost_to_target >= 12 * 0.1 + 1.0 - 1e-9


def test_the_decision_rule_compares_median_costs() -> None:
    def row(cost: float | None, reached: int = 10) -> dict[str, object]:
        return {"median_cost_to_target": cost, "reached": reached}

    assert _decide({"single": row(10.0), "mf_ucb": row(5.0), "funnel": row(6.0)}) == {
        "meets_half_cost": True,
        "beats_funnel": True,
    }
    assert _decide({"single": row(10.0), "mf_ucb": row(5.5), "funnel": row(4.0)}) == {
        "meets_half_cost": False,
        "beats_funnel": False,
    }
    assert _decide({"single": row(None, 0), "mf_ucb": row(9.0, 6)})["meets_half_cost"] is True


def test_the_summary_has_every_method_and_a_decision() -> None:
    summary = run_benchmark(["branin"], ["single", "mf_ucb", "funnel"], [0], TINY)
    branin = summary["problems"]["branin"]
    assert set(branin["methods"]) == {"single", "mf_ucb", "funnel"}
    assert set(branin["decision"]) == {"meets_half_cost", "beats_funnel"}
    json.dumps(summary)  # JSON-ready


def test_an_unknown_method_is_named() -> None:
    result = CliRunner().invoke(app, ["multifidelity", "--methods", "single,magic", "--json"])
    assert result.exit_code != 0 and "magic" in result.output
