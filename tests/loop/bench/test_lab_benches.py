"""The multi-objective and transfer benchmarks: their problems, arms and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loop.bench import moo, transfer
from loop.pareto import hypervolume


def test_every_moo_arm_starts_from_the_same_designs_and_never_loses_hypervolume() -> None:
    problem = moo.problems()["thinfilm"]
    X = moo.initial_designs(problem, 5, seed=3)
    assert torch.equal(X, moo.initial_designs(problem, 5, seed=3))
    assert ((problem.bounds[0] <= X) & (problem.bounds[1] >= X)).all()
    start = hypervolume(problem.evaluate(X), problem.ref_point)
    for arm in ("random", "qlognehvi"):
        result = moo.run_arm(arm, problem, q=2, initial=5, iterations=1, seed=3)
        assert result["initial_hypervolume"] == pytest.approx(start)
        assert result["hypervolume"] >= result["initial_hypervolume"]


def test_the_thin_film_problem_trades_conductivity_against_roughness() -> None:
    problem = moo.problems()["thinfilm"]
    cool, hot = torch.tensor([[0.55, 0.78, 300.0, 30.0], [0.55, 0.78, 430.0, 30.0]], dtype=torch.double)
    (c_cool, r_cool), (c_hot, r_hot) = problem.evaluate(torch.stack([cool, hot])).tolist()
    assert c_hot > c_cool and r_hot < r_cool  # hotter: more conductive, rougher (roughness negated)


def test_moo_refuses_a_budget_that_is_not_a_multiple_of_q() -> None:
    with pytest.raises(ValueError, match="multiple of q"):
        moo.run([("branincurrin", 4)], seeds=1, initial=4, evaluations=6)


def test_plates_are_encoded_over_the_union_of_their_elements(tmp_path: Path) -> None:
    path = tmp_path / "plate.csv"
    path.write_text("fe_load,co_load,overpotential\n0.5,0.5,0.40\n0.5,0.5,0.42\n1.0,0.0,0.50\n")
    elements, frame = transfer.read_plate(path)
    assert elements == ["fe", "co"] and len(frame) == 2  # replicates averaged
    X, y = transfer.encode(frame, ["co", "fe", "ni"])
    assert X.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]
    assert y.reshape(-1).tolist() == pytest.approx([0.41, 0.50])


def test_a_campaign_stops_once_it_has_found_what_it_wanted() -> None:
    X = torch.linspace(0, 1, 30, dtype=torch.double).reshape(-1, 1)
    y = (X - 0.3) ** 2
    good = set(torch.argsort(y.reshape(-1))[:3].tolist())
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.double)
    n, found = transfer.experiments_to_find(
        X, y, lambda: transfer._surrogate(bounds, "cold", None), good, 2, initial=2, budget=30, seed=0
    )
    assert found == 2 and n is not None and 2 < n <= 30
