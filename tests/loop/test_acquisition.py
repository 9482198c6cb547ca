"""Tests of loop.acquisition: choosing from pools and optimising over spaces."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.acquisition import UpperConfidenceBound, qLogNoisyExpectedImprovement, qUpperConfidenceBound
from botorch.utils.datasets import SupervisedDataset

from loop.acquisition import KINDS, Acquisition
from loop.errors import CampaignError
from loop.space import Categorical, Continuous, LinearConstraint, SearchSpace
from surrogates.gp import GPSurrogate


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small, shared machine two threads make GP fits several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(X: torch.Tensor, Y: torch.Tensor, bounds: torch.Tensor) -> GPSurrogate:
    names = [f"x{i}" for i in range(X.shape[-1])], [f"y{i}" for i in range(Y.shape[-1])]
    torch.manual_seed(0)
    return GPSurrogate(input_bounds=bounds).fit(
        SupervisedDataset(X, Y, feature_names=names[0], outcome_names=names[1])
    )


@pytest.fixture(scope="module")
def model() -> tuple[GPSurrogate, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1-D GP of a bumpy function measured on [0, 0.7]; a pool of 201 points of [0, 1]."""
    X = torch.tensor([[0.0], [0.1], [0.25], [0.4], [0.5], [0.7]], dtype=torch.double)
    Y = torch.sin(8 * X) + 0.5 * X
    gp = fit(X, Y, torch.tensor([[0.0], [1.0]], dtype=torch.double))
    pool = torch.linspace(0.0, 1.0, 201, dtype=torch.double).unsqueeze(-1)
    return gp, X, Y, pool


def scores(gp: GPSurrogate, pool: torch.Tensor, weight: float, beta: float) -> torch.Tensor:
    """UCB of the signed objective, computed independently of Acquisition."""
    posterior = gp.posterior(pool)
    mean = posterior.mean.detach().squeeze(-1)
    std = posterior.variance.detach().squeeze(-1).sqrt()
    return weight * mean + math.sqrt(beta) * abs(weight) * std


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "ei"}, ["unknown acquisition 'ei'", "qlognei"]),
        ({"weights": []}, ["weights"]),
        ({"weights": [1.0, 0.0]}, ["weights", "non-zero"]),
        ({"weights": [math.nan]}, ["weights", "finite"]),
        ({"weights": [math.inf]}, ["weights"]),
        ({"beta": -1.0}, ["beta must be >= 0"]),
        ({"beta": math.nan}, ["beta"]),
    ],
)
def test_bad_settings_are_value_errors(kwargs, words):
    arguments = {"kind": "ucb", "weights": [1.0], **kwargs}
    with pytest.raises(ValueError) as info:
        Acquisition(**arguments)
    for word in words:
        assert word in str(info.value)


def test_scalarize_and_posterior_transform():
    single = Acquisition("ucb", [1.0])
    assert single.posterior_transform is None
    two = Acquisition("ucb", [2.0, -1.0])
    assert two.posterior_transform is not None
    Y = torch.tensor([[1.0, 3.0], [2.0, 0.5]], dtype=torch.double)
    assert two.scalarize(Y).tolist() == [-1.0, 3.5]
    assert Acquisition("ucb", [-1.0]).posterior_transform is not None


def test_build_gives_botorch_functions(model):
    gp, X, Y, _ = model
    assert isinstance(Acquisition("ucb", [1.0]).build(gp, X, Y, None, 1), UpperConfidenceBound)
    assert isinstance(Acquisition("ucb", [1.0]).build(gp, X, Y, None, 2), qUpperConfidenceBound)
    assert isinstance(Acquisition("qlognei", [1.0]).build(gp, X, Y, X[:1], 1), qLogNoisyExpectedImprovement)
    for kind in ("thompson", "random"):
        with pytest.raises(CampaignError, match=kind):
            Acquisition(kind, [1.0]).build(gp, X, Y, None, 1)


# --- pools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 1.0, 9.0])
def test_ucb_single_pick_is_the_argmax_of_mean_plus_sqrt_beta_std(model, beta):
    gp, X, Y, pool = model
    (pick,) = Acquisition("ucb", [1.0], beta=beta, chunk_size=50).select_from_pool(gp, pool, 1, X, Y, None, 0)
    expected = scores(gp, pool, 1.0, beta)
    assert pick.index == int(torch.argmax(expected))
    assert pick.value == pytest.approx(float(expected.max()), rel=1e-6)
    assert torch.equal(pick.X, pool[pick.index])


def test_more_exploration_moves_the_pick_to_the_unmeasured_region(model):
    gp, X, Y, pool = model
    greedy = Acquisition("ucb", [1.0], beta=0.0).select_from_pool(gp, pool, 1, X, Y, None, 0)[0]
    bold = Acquisition("ucb", [1.0], beta=100.0).select_from_pool(gp, pool, 1, X, Y, None, 0)[0]
    assert greedy.index != bold.index
    assert float(bold.X) > 0.8  # far from every measurement


def test_minimize_picks_the_lower_confidence_bound(model):
    gp, X, Y, pool = model
    (pick,) = Acquisition("ucb", [-1.0], beta=1.0).select_from_pool(gp, pool, 1, X, Y, None, 0)
    posterior = gp.posterior(pool)
    lcb = posterior.mean.detach().squeeze(-1) - posterior.variance.detach().squeeze(-1).sqrt()
    assert pick.index == int(torch.argmin(lcb))
    assert pick.value == pytest.approx(-float(lcb.min()), rel=1e-6)
    (greedy,) = Acquisition("ucb", [-1.0], beta=0.0).select_from_pool(gp, pool, 1, X, Y, None, 0)
    assert greedy.index == int(torch.argmin(posterior.mean.detach().squeeze(-1)))


def test_max_variance_single_pick_is_the_most_uncertain(model):
    gp, X, Y, pool = model
    (pick,) = Acquisition("max_variance", [1.0]).select_from_pool(gp, pool, 1, X, Y, None, 0)
    assert pick.index == int(torch.argmax(gp.posterior(pool).variance.detach().squeeze(-1)))
    assert pick.index == 200  # x = 1, the farthest from the data


@pytest.mark.parametrize("kind", ["ucb", "qlogei", "qlognei", "max_variance", "thompson", "random"])
def test_batches_are_distinct_rows(model, kind):
    gp, X, Y, pool = model
    picks = Acquisition(kind, [1.0], mc_samples=32, chunk_size=64).select_from_pool(
        gp, pool, 3, X, Y, None, 1
    )
    rows = [p.index for p in picks]
    assert len(picks) == 3 and len(set(rows)) == 3
    assert all(0 <= r < 201 for r in rows)
    assert all(torch.equal(p.X, pool[p.index]) for p in picks)
    if kind == "random":
        assert all(math.isnan(p.value) for p in picks)
    else:
        assert all(math.isfinite(p.value) for p in picks)


def test_pending_at_the_best_point_changes_the_pick(model):
    gp, X, Y, pool = model
    for kind in ("qlognei", "ucb"):
        acquisition = Acquisition(kind, [1.0], mc_samples=64)
        (first,) = acquisition.select_from_pool(gp, pool, 1, X, Y, None, 2)
        (second,) = acquisition.select_from_pool(gp, pool, 1, X, Y, first.X.unsqueeze(0), 2)
        assert second.index != first.index, kind


@pytest.mark.parametrize("kind", ["thompson", "random"])
def test_stochastic_picks_are_reproducible_by_seed(model, kind):
    gp, X, Y, pool = model
    acquisition = Acquisition(kind, [1.0])
    first = [p.index for p in acquisition.select_from_pool(gp, pool, 3, X, Y, None, seed=11)]
    again = [p.index for p in acquisition.select_from_pool(gp, pool, 3, X, Y, None, seed=11)]
    assert first == again
    others = {
        tuple(p.index for p in acquisition.select_from_pool(gp, pool, 3, X, Y, None, seed=s))
        for s in range(5)
    }
    assert len(others) > 1  # other seeds, other picks


def test_thompson_follows_the_posterior(model):
    gp, X, Y, pool = model
    # Sampled maxima fall where the posterior's upper band is high, not at its lowest points.
    (pick,) = Acquisition("thompson", [1.0]).select_from_pool(gp, pool, 1, X, Y, None, seed=3)
    upper = scores(gp, pool, 1.0, 9.0)
    assert upper[pick.index] > torch.quantile(upper, 0.5)


def test_a_thompson_batch_draws_its_functions_together(model, monkeypatch):
    # One path draw of q functions serves the whole batch: the training solve and the pool's
    # cross-covariance are paid once, not once per pick.
    gp, X, Y, pool = model
    calls: list[int] = []
    draw = gp.sample_paths
    monkeypatch.setattr(gp, "sample_paths", lambda num: calls.append(num) or draw(num))
    picks = Acquisition("thompson", [1.0]).select_from_pool(gp, pool, 4, X, Y, None, seed=5)
    assert calls == [4]
    assert len({p.index for p in picks}) == 4
    # Larger batches draw in groups, so that memory stays a group's draws times the pool.
    calls.clear()
    monkeypatch.setattr("loop.acquisition._THOMPSON_GROUP", 3)
    picks = Acquisition("thompson", [1.0]).select_from_pool(gp, pool, 7, X, Y, None, seed=5)
    assert calls == [3, 3, 1]
    assert len({p.index for p in picks}) == 7


def test_pool_smaller_than_batch_and_empty_pool(model):
    gp, X, Y, pool = model
    picks = Acquisition("ucb", [1.0]).select_from_pool(gp, pool[:2], 5, X, Y, None, 0)
    assert sorted(p.index for p in picks) == [0, 1]
    assert Acquisition("ucb", [1.0]).select_from_pool(gp, pool[:0], 3, X, Y, None, 0) == []


def test_max_expected_improvement(model):
    gp, X, Y, pool = model
    acquisition = Acquisition("qlognei", [1.0])
    ei = acquisition.max_expected_improvement(gp, Y, pool, None)
    assert math.isfinite(ei) and ei > 0
    space = SearchSpace([Continuous("x0", 0.0, 1.0)])
    assert acquisition.max_expected_improvement(gp, Y, None, space) == pytest.approx(ei, rel=0.2)
    assert acquisition.max_expected_improvement(gp, Y, X, None) < ei  # measured points improve less


def test_two_objectives_are_scalarised_with_signed_weights():
    torch.manual_seed(4)
    X = torch.rand(12, 1, dtype=torch.double)
    Y = torch.cat([torch.sin(6 * X), X**2], dim=-1)
    gp = fit(X, Y, torch.tensor([[0.0], [1.0]], dtype=torch.double))
    pool = torch.linspace(0.0, 1.0, 101, dtype=torch.double).unsqueeze(-1)
    weights = torch.tensor([1.0, -2.0], dtype=torch.double)
    (pick,) = Acquisition("ucb", weights.tolist(), beta=4.0).select_from_pool(gp, pool, 1, X, Y, None, 0)
    mean, variance = gp.predict(pool)
    expected = mean @ weights + 2.0 * (variance @ weights.square()).sqrt()
    assert pick.index == int(torch.argmax(expected))


# --- continuous and mixed spaces --------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed() -> tuple[SearchSpace, GPSurrogate, torch.Tensor, torch.Tensor]:
    """A composition simplex of three fractions with a two-valued categorical, and a GP on it."""
    space = SearchSpace(
        [
            Continuous("a", 0.0, 1.0),
            Continuous("b", 0.0, 1.0),
            Continuous("c", 0.0, 1.0),
            Categorical("gas", ("Ar", "N2")),
        ],
        [LinearConstraint.simplex(["a", "b", "c"])],
    )
    X = space.encode(space.sample(14, seed=0))
    Y = (-((X[:, 0] - 0.6) ** 2) - (X[:, 1] - 0.3) ** 2 + 0.2 * X[:, 4]).unsqueeze(-1)
    return space, fit(X, Y, space.bounds), X, Y


def assert_feasible(space: SearchSpace, x: torch.Tensor) -> None:
    bounds = space.bounds
    assert x.shape == (space.dim,)
    assert ((x >= bounds[0] - 1e-9) & (x <= bounds[1] + 1e-9)).all()
    assert float(x[:3].sum()) == pytest.approx(1.0, abs=1e-6)
    one_hot = x[3:].tolist()
    assert sorted(one_hot) == [0.0, 1.0]
    space.canonical(space.decode(x.unsqueeze(0))[0])


@pytest.mark.parametrize("kind", ["ucb", "qlognei"])
def test_select_in_space_respects_simplex_bounds_and_one_hot(mixed, kind):
    space, gp, X, Y = mixed
    acquisition = Acquisition(kind, [1.0], mc_samples=32, num_restarts=2, raw_samples=32, max_iterations=30)
    picks = acquisition.select_in_space(gp, space, 2, X, Y, None, seed=5)
    assert len(picks) == 2
    for pick in picks:
        assert_feasible(space, pick.X)
        assert math.isfinite(pick.value)
        assert pick.index is None
    assert not torch.allclose(picks[0].X, picks[1].X, atol=1e-4)  # the second is chosen given the first


@pytest.mark.parametrize("kind", ["thompson", "random"])
def test_sampled_picks_in_space_are_feasible_and_reproducible(mixed, kind):
    space, gp, X, Y = mixed
    acquisition = Acquisition(kind, [1.0])
    picks = acquisition.select_in_space(gp, space, 3, X, Y, None, seed=8)
    again = acquisition.select_in_space(gp, space, 3, X, Y, None, seed=8)
    assert len(picks) == 3
    assert all(torch.equal(p.X, q.X) for p, q in zip(picks, again, strict=True))
    for pick in picks:
        assert_feasible(space, pick.X)
    assert len({tuple(p.X.tolist()) for p in picks}) == 3


def test_select_in_space_finds_the_optimum_of_a_clear_model(mixed):
    space, gp, X, Y = mixed
    acquisition = Acquisition("ucb", [1.0], beta=0.0, num_restarts=3, raw_samples=64, max_iterations=50)
    (pick,) = acquisition.select_in_space(gp, space, 1, X, Y, None, seed=0)
    candidates = space.encode(space.sample(2000, seed=1))
    best_sampled = float(gp.posterior(candidates).mean.detach().max())
    assert pick.value >= best_sampled - 1e-3  # the optimiser beats (or ties) dense random search


def test_kinds_are_the_documented_ones():
    assert set(KINDS) == {
        "ucb",
        "qlogei",
        "qlognei",
        "max_variance",
        "thompson",
        "random",
        "hull_probability",
        "hull_lcb",
        "hull_thompson",
        "hull_membership",
    }
