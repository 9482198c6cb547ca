"""The multi-objective and transfer benchmarks: their problems, arms and metrics."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from loop.bench import moo, transfer, transfer_hartmann
from loop.pareto import hypervolume
from surrogates.transfer import TransferGP


def test_every_moo_arm_starts_from_the_same_designs_and_never_loses_hypervolume() -> None:
    problem = moo.problems()["thinfilm"]
    X = moo.initial_designs(problem, 5, seed=3)
    assert torch.equal(X, moo.initial_designs(problem, 5, seed=3))
    assert ((problem.bounds[0] <= X) & (problem.bounds[1] >= X)).all()
    start = hypervolume(problem.evaluate(X), problem.ref_point)
    for arm in ("random", "qlognehvi", "qlognehvi_tr", "qlognehvi_tr_log"):
        result = moo.run_arm(arm, problem, q=2, initial=5, iterations=1, seed=3)
        assert result["initial_hypervolume"] == pytest.approx(start)
        assert result["hypervolume"] >= result["initial_hypervolume"]


def test_the_thin_film_problem_trades_conductivity_against_roughness() -> None:
    problem = moo.problems()["thinfilm"]
    cool, hot = torch.tensor([[0.55, 0.78, 300.0, 30.0], [0.55, 0.78, 430.0, 30.0]], dtype=torch.double)
    (c_cool, r_cool), (c_hot, r_hot) = problem.evaluate(torch.stack([cool, hot])).tolist()
    assert c_hot > c_cool and r_hot < r_cool  # hotter: more conductive, rougher (roughness negated)


def test_moo_refuses_a_budget_that_is_not_a_multiple_of_q_and_unknown_arms() -> None:
    with pytest.raises(ValueError, match="multiple of q"):
        moo.run([("branincurrin", 4)], seeds=1, initial=4, evaluations=6)
    with pytest.raises(ValueError, match=r"include the candidate 'qlognehvi_tr', got \['random'\]"):
        moo.run(
            [("branincurrin", 1)],
            seeds=1,
            initial=4,
            evaluations=1,
            arms=["random"],
            candidate="qlognehvi_tr",
        )
    with pytest.raises(ValueError, match="arms must be among"):
        moo.run([("branincurrin", 1)], seeds=1, initial=4, evaluations=1, arms=["qlognehvi", "turbo"])


def test_the_rule_judges_the_candidate_arm() -> None:
    result = moo.run(
        [("branincurrin", 1)],
        seeds=1,
        initial=4,
        evaluations=1,
        arms=["random", "qlognehvi"],
        candidate="random",
    )
    assert result["candidate"] == "random" and set(result["cases"]["branincurrin_q1"]) == {
        "random",
        "qlognehvi",
    }


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
    n, found, measured = transfer.experiments_to_find(
        X, y, lambda: transfer.make_surrogate(bounds, "cold", None), good, 2, initial=2, budget=30, seed=0
    )
    assert found == 2 and n is not None and 2 < n <= 30 and len(measured) == n
    assert len(good.intersection(measured[:-1])) == 1  # the last experiment found the second


def test_the_plate_benchmark_runs_chosen_arms_and_seeds_and_judges_only_all_three(tmp_path: Path) -> None:
    grid = torch.linspace(0, 1, 11, dtype=torch.double)
    for name, other in (("target", "ni"), ("source", "la")):
        rows = [f"{a:.1f},{1 - a:.1f},{(a - 0.35) ** 2 + 0.3:.4f}" for a in grid.tolist()] * 3
        header = f"fe_load,{other}_load,overpotential"
        (tmp_path / f"{name}.csv").write_text("\n".join([header, *rows]) + "\n")
    paths = (tmp_path / "target.csv", tmp_path / "source.csv")
    result = transfer.run(*paths, seeds=2, source_size=5, budget=6, arms=("cold",), first_seed=3)
    assert result["seeds"] == [3, 4] and list(result["arms"]) == ["cold"]
    assert "goal_met" not in result  # the rule needs every arm
    assert len(result["source_ranking"]["samples"]["spearman"]) == 2  # one per seed's source sample
    cold = result["arms"]["cold"]
    for n, quarters in zip(cold["experiments"], cold["by_source_quarter"], strict=True):
        assert sum(quarters) == (n or 6)  # every experiment, or the whole budget where not found
    for n, (with_source, rounds) in zip(cold["experiments"], cold["source_rounds"], strict=True):
        assert with_source == 0 and rounds == (n or 6) - 2  # a fit per pick after the 2 designs
    ranking_alone = transfer.run(*paths, seeds=1, source_size=5, arms=())
    assert ranking_alone["arms"] == {} and ranking_alone["source_ranking"]["whole_plate"]["spearman"] > 0.5
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['warm'\]"):
        transfer.run(*paths, seeds=1, arms=("cold", "warm"))


@pytest.mark.parametrize(("sign", "good_ranks"), [(1.0, [1, 2, 3, 4]), (-1.0, [27, 28, 29, 30])])
def test_the_source_ranking_says_where_a_source_alone_would_find_the_targets_best(
    sign: float, good_ranks: list[int]
) -> None:
    X = torch.linspace(0, 1, 30, dtype=torch.double).reshape(-1, 1)
    y = (X - 0.3) ** 2
    good = set(torch.argsort(y.reshape(-1))[:4].tolist())
    source = transfer.as_dataset(X[::2], sign * y[::2])  # the target itself, or inverted
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.double)
    ranking, rank = transfer.source_ranking(X, y, source, bounds, good, wanted=3)
    assert sorted(rank.tolist()) == list(range(1, 31))  # every row ranked once
    assert ranking["spearman"] == pytest.approx(sign, abs=0.05)
    assert ranking["good_ranks"] == good_ranks  # first in the source's order, or last
    assert ranking["experiments_to_find"] == good_ranks[2]  # until the 3rd of them is measured


def test_experiments_are_counted_by_quarter_of_a_source_ranking() -> None:
    rank = torch.tensor([3, 1, 8, 2, 5, 7, 4, 6])  # 8 rows: ranks 1-2, 3-4, 5-6 and 7-8 are the quarters
    assert transfer.by_quarter(rank, [1, 3, 0, 2, 5]) == [2, 1, 0, 2]


def test_a_pool_campaign_measures_distinct_rows_in_batches_up_to_its_budget() -> None:
    X = torch.linspace(0, 1, 30, dtype=torch.double).reshape(-1, 1)
    y = (X - 0.3) ** 2
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.double)
    measured = transfer.pool_campaign(
        X, y, lambda: transfer.make_surrogate(bounds, "cold", None), initial=2, budget=9, seed=0, batch=2
    )
    assert len(measured) == 9 and len(set(measured)) == 9  # 2 designs, 3 batches of 2, a last one of 1


def test_a_campaign_counts_the_rounds_in_which_a_source_was_used() -> None:
    X = torch.linspace(0, 1, 30, dtype=torch.double).reshape(-1, 1)
    y = (X - 0.3) ** 2
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.double)
    rounds = transfer.SourceRounds()
    cold = partial(transfer.make_surrogate, bounds, "cold", None)
    transfer.pool_campaign(X, y, cold, initial=2, budget=6, seed=0, on_fit=rounds)
    assert rounds.used == [False] * 4  # one fit per pick after the 2 designs; a cold GP has no source
    gp = TransferGP([("past", transfer.as_dataset(X[::3], y[::3]))], bounds)
    for used in (["past"], []):
        gp.used = used
        rounds(gp)
    assert rounds.counts() == [1, 6]


def test_the_hartmann_transfer_problem_is_baybes() -> None:
    X = transfer_hartmann.grid()
    y = transfer_hartmann.hartmann(X)
    # BayBE's grid of 20 points per axis, and its optimum there
    assert X.shape == (8000, 3) and float(y.min()) == pytest.approx(-3.83243, abs=1e-4)
    shifted = transfer_hartmann.source_values(X[:50], "shifted", seed=0)
    inverted = transfer_hartmann.source_values(X[:50], "inverted", seed=0)
    moved = transfer_hartmann.hartmann(X[:50] + torch.tensor([0.2, 0.0, 0.0], dtype=torch.double))
    noise = shifted - moved
    assert 0.08 < float(noise.std()) < 0.22  # the source's noise, sd 0.15
    assert torch.allclose(inverted + transfer_hartmann.hartmann(X[:50]), noise)  # same draws, negated
    best = transfer_hartmann.best_so_far(torch.tensor([3.0, 1.0, 2.0, 0.5]), [0, 2, 1, 3])
    assert best == [3.0, 2.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="unknown arm"):
        transfer_hartmann.run(1, arms=("cold", "warm"))


def test_the_hartmann_benchmark_reports_each_campaigns_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_hartmann, "BUDGET", 20)
    result = transfer_hartmann.run(1, arms=("cold",), first_seed=7)
    cold = result["arms"]["cold"]
    assert result["seeds"] == [7] and "goal_met" not in result
    assert cold["source_rounds"] == [[0, 9]]  # 2 designs, then 9 fits of batches of 2; no source
