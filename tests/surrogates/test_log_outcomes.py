"""Outcomes modelled on a log scale: the GP learns ``log y`` and answers in ``y``."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.utils.datasets import SupervisedDataset

from surrogates.base import SurrogateError
from surrogates.gp import GPSurrogate
from surrogates.log_outcomes import LogOutcomes, lognormal_moments

UNIT = torch.tensor([[0.0], [1.0]], dtype=torch.double)


def peak(x: torch.Tensor) -> torch.Tensor:
    """A narrow positive peak at 0.5 over a floor near zero: a Gaussian, a parabola in log."""
    return torch.exp(-((x - 0.5) ** 2) / 0.02)


@pytest.fixture
def beside_the_peak() -> SupervisedDataset:
    X = torch.tensor([[0.0], [0.15], [0.3], [0.42], [0.62], [0.8], [1.0]], dtype=torch.double)
    return SupervisedDataset(X, peak(X), feature_names=["x"], outcome_names=["conductivity"])


def test_lognormal_moments_of_a_standard_normal_in_the_logged_column_only() -> None:
    mean, variance = lognormal_moments(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 3.0]]), [0])
    assert mean[0].tolist() == pytest.approx([math.exp(0.5), 2.0])
    assert variance[0].tolist() == pytest.approx([(math.e - 1) * math.e, 3.0])


def test_a_peak_unseen_by_the_data_is_predicted_better_on_a_log_scale(beside_the_peak) -> None:
    grid = torch.linspace(0, 1, 101, dtype=torch.double).reshape(-1, 1)
    errors, lowest = {}, {}
    for logged in ([], [0]):
        torch.manual_seed(0)
        gp = GPSurrogate(input_bounds=UNIT, log_outcomes=logged).fit(beside_the_peak)
        mean, _ = gp.predict(grid)
        errors[bool(logged)] = float((mean - peak(grid)).abs().mean())
        lowest[bool(logged)] = float(mean.min())
    assert errors[True] < 0.5 * errors[False]  # 0.021 against 0.058 when this was written
    assert lowest[True] > 0 > lowest[False]  # the log-normal never predicts a negative value


def test_predictions_posterior_and_paths_agree_with_one_outcome_logged() -> None:
    X = torch.rand(12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.double)
    Y = torch.cat([peak(X[:, :1]) + 0.01, X.sum(-1, keepdim=True) - 1.0], dim=-1)  # the second may be < 0
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.double)
    gp = GPSurrogate(input_bounds=bounds, log_outcomes=[0]).fit(
        SupervisedDataset(X, Y, feature_names=["a", "b"], outcome_names=["c", "d"])
    )
    test = torch.rand(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.double)
    posterior = gp.posterior(test)
    mean, variance = gp.predict(test)
    assert torch.allclose(posterior.mean, mean) and torch.allclose(posterior.variance, variance)
    torch.manual_seed(3)
    draws = gp.sample_paths(4000)(test)  # 4000 x 5 x 2
    assert (draws[..., 0] > 0).all()
    assert torch.allclose(draws.mean(0), mean, rtol=0.1, atol=0.02)
    assert gp.summary()["log_outcomes"] == [0]


def test_a_non_positive_value_of_a_logged_outcome_is_refused_by_name(beside_the_peak) -> None:
    bad = SupervisedDataset(
        beside_the_peak.X, beside_the_peak.Y - 0.5, feature_names=["x"], outcome_names=["conductivity"]
    )
    gp = GPSurrogate(input_bounds=UNIT, log_outcomes=[0])
    with pytest.raises(SurrogateError, match="'conductivity' is modelled on a log scale and must be > 0"):
        gp.fit(bad)
    assert gp.model is None  # nothing fitted
    with pytest.raises(SurrogateError, match="log_outcomes 1 is past the dataset's 1 outcomes"):
        GPSurrogate(input_bounds=UNIT, log_outcomes=[1]).fit(beside_the_peak)


def test_bad_log_outcome_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="log_outcomes must be >= 0"):
        GPSurrogate(log_outcomes=[-1])
    with pytest.raises(ValueError, match="noise = 'observed'"):
        GPSurrogate(noise="observed", log_outcomes=[0])
    with pytest.raises(ValueError, match="at least one outcome"):
        LogOutcomes([])


def test_a_subset_of_outcomes_keeps_the_log_of_those_it_holds_renumbered() -> None:
    logged = LogOutcomes([1, 3])
    subset = logged.subset_output([3, 0])
    assert isinstance(subset, LogOutcomes) and subset.logged == [0]  # outcome 3 is now the first
    Y = torch.tensor([[2.0, 5.0]])
    assert torch.allclose(logged.subset_output([2, 0])(Y)[0], Y)  # none logged: the identity
    for bad in ([1, 1], [-1]):
        with pytest.raises(ValueError, match="distinct indices >= 0"):
            logged.subset_output(bad)
