"""The Pareto search's trust region: where it lies, and that on DTLZ2 its picks add hypervolume."""

from __future__ import annotations

import pytest
import torch
from botorch.test_functions.multi_objective import DTLZ2
from botorch.utils.datasets import SupervisedDataset

from loop.errors import CampaignError
from loop.multiobjective import ModelledAcquisition
from loop.pareto import hypervolume
from loop.space import Categorical, Continuous, Integer, LinearConstraint, SearchSpace
from surrogates.gp import GPSurrogate

SMALL = {"num_restarts": 4, "raw_samples": 128, "mc_samples": 64, "max_iterations": 60}


def _pareto(trust_region: float | None, reference: list[float] | None = None) -> ModelledAcquisition:
    return ModelledAcquisition(
        "qlognehvi", [1.0, -1.0], None, 2, reference_point=reference, trust_region=trust_region, **SMALL
    )


def test_the_trust_region_is_centred_on_the_point_that_adds_most_hypervolume() -> None:
    space = SearchSpace(
        [
            Continuous("t", 0.0, 10.0),
            Integer("n", 0, 20),
            Categorical("gas", ("Ar", "N2")),
        ]
    )
    X = torch.tensor([[1.0, 5.0, 1.0, 0.0], [9.0, 17.0, 0.0, 1.0], [5.0, 10.0, 1.0, 0.0]], dtype=torch.double)
    # Maximise the first outcome, minimise the second; above (0, 10) in their own signs the
    # boxes of the first two rows are 1 x 5 and 6 x 1, overlapping by 1: the second adds 5,
    # the first 4, the third (dominated) nothing.
    Y = torch.tensor([[1.0, 5.0], [6.0, 9.0], [0.5, 6.0]], dtype=torch.double)
    t, n, gas = _pareto(0.35, [0.0, 10.0]).trust_region_space(space, X, Y).parameters
    assert (t.lower, t.upper) == pytest.approx((7.25, 10.0))  # 9 ± 1.75, clipped at the box
    assert (n.lower, n.upper) == (13, 20)  # 17 ± 3.5, widened to integers and clipped
    assert gas == space["gas"]
    # Nothing above a stricter reference point: no front to refine, the whole space.
    assert _pareto(0.35, [10.0, 0.0]).trust_region_space(space, X, Y) is space


def test_a_trust_region_is_refused_where_it_means_nothing() -> None:
    with pytest.raises(CampaignError, match="Pareto search"):
        ModelledAcquisition("qlognei", [1.0], [1.0], 1, trust_region=0.5)
    with pytest.raises(CampaignError, match=r"\(0, 1\]"):
        _pareto(1.5)
    space = SearchSpace(
        [Continuous("a", 0.0, 1.0), Continuous("b", 0.0, 1.0)], [LinearConstraint.simplex(["a", "b"])]
    )
    X, Y = torch.tensor([[0.5, 0.5]], dtype=torch.double), torch.tensor([[1.0, 1.0]], dtype=torch.double)
    with pytest.raises(CampaignError, match="linear constraints"):
        _pareto(0.5).trust_region_space(space, X, Y)


def test_on_dtlz2_the_trust_region_picks_add_hypervolume() -> None:
    # Six Sobol points in six inputs: the GP is most uncertain at the box's corners, where
    # DTLZ2 is worst, and a global search spends every pick there (BoTorch's own loop too).
    problem = DTLZ2(dim=6, num_objectives=2, negate=True).double()
    reference = torch.tensor([-1.1, -1.1], dtype=torch.double)
    X = torch.quasirandom.SobolEngine(6, scramble=True, seed=0).draw(6).double()
    Y = problem(X)
    space = SearchSpace([Continuous(f"x{i}", 0.0, 1.0) for i in range(6)])
    names = space.names
    acquisition = ModelledAcquisition(
        "qlognehvi", [1.0, 1.0], None, 2, reference_point=[-1.1, -1.1], trust_region=0.8, **SMALL
    )
    start = hypervolume(Y, reference)
    for step in range(6):
        gp = GPSurrogate(input_bounds=space.bounds, warm_start=False)
        torch.manual_seed(step)
        gp.fit(SupervisedDataset(X, Y, feature_names=names, outcome_names=["f1", "f2"]))
        lower, upper = acquisition.trust_region_space(space, X, Y).bounds
        (pick,) = acquisition.select_in_space(gp, space, 1, X, Y, None, seed=step)
        x = pick.X
        assert bool(((lower <= x) & (x <= upper)).all())
        X, Y = torch.cat([X, x[None]]), torch.cat([Y, problem(x[None])])
    assert hypervolume(Y, reference) > start
