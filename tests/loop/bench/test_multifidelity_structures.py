"""``alloop bench multifidelity``'s structure problem (part (b)) on a tiny Cu-Au pool: CHGNet's
cheap energies are computed once, every method's spend adds up, and the decision rule."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.bench import discovery_mlip
from loop.bench import multifidelity_structures as structures
from loop.bench.cli import app
from loop.bench.discovery import DiscoveryProtocol, Truth, load_truth
from loop.bench.multifidelity import PoolProblem
from loop.structures import StructureSpaceOptions

#: fcc Cu-Au orderings of 1-4 atoms, the pure elements included (the discovery pool has none).
CUAU = StructureSpaceOptions(elements=["Cu", "Au"], lattice=["fcc"], max_atoms=4, min_species=1)
TINY = structures.StructureProtocol(
    DiscoveryProtocol(CUAU, budget=8, batch_size=3, initial=4), max_iterations=20
)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Truth, PoolProblem]:
    pytest.importorskip("chgnet")
    truth = load_truth(TINY.discovery, tmp_path_factory.mktemp("mf-structures"))
    return truth, structures.structure_problem(truth, TINY)


def test_cheap_energies_are_computed_once_and_cached_beside_the_pool(
    pool: tuple[Truth, PoolProblem], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth, problem = pool
    assert problem.hull is not None
    first = truth.chgnet_formation_energies()
    assert truth.cache_path("chgnet-energy.npz").is_file()

    def no_chgnet(*args: object) -> None:
        raise AssertionError("CHGNet ran again")

    monkeypatch.setattr(discovery_mlip, "single_point_energies", no_chgnet)
    again = load_truth(TINY.discovery, truth.path.parent)  # a fresh run reads the cache
    assert again.chgnet_formation_energies().tolist() == first.tolist()


def test_cheap_formation_energies_put_the_pure_elements_at_zero(pool: tuple[Truth, PoolProblem]) -> None:
    truth, problem = pool
    pure = [i for i, formula in enumerate(truth.formulas) if formula in ("Cu", "Au")]
    assert len(pure) == 2
    for row in pure:
        assert problem.measure(row, "chgnet") == pytest.approx(0.0, abs=1e-4)
        assert problem.measure(row, "emt") == pytest.approx(0.0, abs=1e-6)
    mixed = [problem.measure(row, "chgnet") for row in range(len(truth.pool)) if row not in pure]
    assert any(abs(e) > 1e-3 for e in mixed)


@pytest.mark.parametrize("method", structures.METHODS)
def test_each_method_spends_what_it_measured(pool: tuple[Truth, PoolProblem], method: str) -> None:
    truth, problem = pool
    measured: Counter[str] = Counter()
    emt_rows: set[int] = set()

    def counted(row: int, fidelity: str) -> float:
        measured[fidelity] += 1
        if fidelity == "emt":
            emt_rows.add(row)
        return problem.measure(row, fidelity)

    run = structures.run_one(method, 0, truth, dataclasses.replace(problem, measure=counted), TINY)
    assert run.total_cost == pytest.approx(0.01 * measured["chgnet"] + 1.0 * measured["emt"])
    assert run.total_cost <= TINY.settings.budget + 1e-9
    assert measured["emt"] >= 2  # a couple of rounds at the target
    if method == "single":
        assert measured["chgnet"] == 0
    if method == "funnel":  # the whole pool screened before the first EMT evaluation
        assert measured["chgnet"] == len(truth.pool)
    found = sum(truth.pool.ids[row] in truth.targets for row in emt_rows)  # only EMT counts
    assert run.final_recall == pytest.approx(found / len(truth.targets))
    if math.isfinite(run.cost_to_target):
        assert run.cost_to_target <= run.total_cost and run.target_evaluations <= measured["emt"]


def test_the_decision_counts_unreached_baselines_as_the_budget() -> None:
    def runs(*costs: float | None) -> dict[str, object]:
        return {"runs": [{"cost_to_target": c} for c in costs]}

    met = structures.decide(
        {"single": runs(None, None, 900.0), "mf_hull": runs(400.0, 500.0, None), "funnel": runs(600.0)},
        budget=1000.0,
    )
    assert met == {"meets_half_cost": True, "beats_funnel": True}
    missed = structures.decide({"single": runs(700.0), "mf_hull": runs(None, None, 300.0)}, budget=1000.0)
    assert missed == {"meets_half_cost": False, "beats_funnel": None}


def test_a_method_of_another_problem_is_refused_before_anything_runs(tmp_path: Path) -> None:
    args = ["multifidelity", "--problems", "structures", "--methods", "mf_ucb", "--workdir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "mf_ucb" in result.output
    assert not any(tmp_path.iterdir())
