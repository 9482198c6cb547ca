"""Tests of surrogates.gp (and the Surrogate contract of surrogates.base)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from botorch.acquisition import UpperConfidenceBound, qLogNoisyExpectedImprovement
from botorch.models.model import Model
from botorch.utils.datasets import SupervisedDataset

from loop.errors import AlloopError
from surrogates.base import Surrogate, SurrogateError
from surrogates.gp import GPSurrogate

UNIT = torch.tensor([[0.0], [1.0]], dtype=torch.double)


def dataset(X: torch.Tensor, Y: torch.Tensor, Yvar: torch.Tensor | None = None) -> SupervisedDataset:
    return SupervisedDataset(
        X,
        Y,
        Yvar=Yvar,
        feature_names=[f"x{i}" for i in range(X.shape[-1])],
        outcome_names=[f"y{i}" for i in range(Y.shape[-1])],
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small, shared machine two threads make GP fits several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sine() -> tuple[GPSurrogate, torch.Tensor, torch.Tensor]:
    """A GP fitted to sin(6x) on 10 points of [0, 0.6] (inputs scaled by [0, 1])."""
    X = torch.linspace(0.0, 0.6, 10, dtype=torch.double).unsqueeze(-1)
    Y = torch.sin(6 * X)
    torch.manual_seed(0)
    return GPSurrogate(input_bounds=UNIT).fit(dataset(X, Y)), X, Y


@pytest.fixture(scope="module")
def two_outputs() -> tuple[GPSurrogate, torch.Tensor, torch.Tensor]:
    """A GP with two outputs on a 2-D input, with data-range scaling."""
    torch.manual_seed(1)
    X = torch.rand(20, 2, dtype=torch.double)
    Y = torch.stack([torch.sin(3 * X[:, 0]) + X[:, 1], (X**2).sum(-1)], dim=-1)
    return GPSurrogate().fit(dataset(X, Y)), X, Y


def test_fits_a_smooth_function_at_its_training_points(sine):
    gp, X, Y = sine
    mean, variance = gp.predict(X)
    assert mean.shape == variance.shape == (10, 1)
    assert (mean - Y).abs().max() < 0.05
    assert variance.sqrt().max() < 0.1


def test_uncertainty_grows_away_from_data(sine):
    gp, _, _ = sine
    near = gp.predict(torch.tensor([[0.3]], dtype=torch.double))[1].sqrt().item()
    far = gp.predict(torch.tensor([[1.0]], dtype=torch.double))[1].sqrt().item()
    assert far > 3 * near
    assert far > 0.2


def test_fits_a_2d_function_with_two_outputs(two_outputs):
    gp, X, Y = two_outputs
    assert gp.num_outputs == 2
    mean, variance = gp.predict(X)
    assert mean.shape == variance.shape == (20, 2)
    assert (mean - Y).abs().max() < 0.1
    posterior = gp.posterior(X[:5])
    assert posterior.mean.shape == (5, 2)
    assert gp.batch_shape == torch.Size([])  # no batch of inputs; outputs are the model's own batch
    assert gp.model.covar_module.batch_shape == torch.Size([2])  # one kernel per output


def test_predict_in_chunks_equals_one_call(two_outputs):
    gp, _, _ = two_outputs
    torch.manual_seed(3)
    X = torch.rand(37, 2, dtype=torch.double)
    whole = gp.predict(X, chunk_size=1000)
    chunked = gp.predict(X, chunk_size=5)
    assert torch.allclose(whole[0], chunked[0], atol=1e-10)
    assert torch.allclose(whole[1], chunked[1], atol=1e-10)
    assert (chunked[1] >= 0).all()


def test_sample_paths_average_to_the_posterior_mean(sine):
    gp, _, _ = sine
    X = torch.linspace(0.0, 1.0, 15, dtype=torch.double).unsqueeze(-1)
    torch.manual_seed(4)
    paths = gp.sample_paths(400)
    draws = paths(X)
    assert draws.shape == (400, 15, 1)
    mean, variance = gp.predict(X)
    std = variance.sqrt()
    assert ((draws.mean(0) - mean).abs() <= 4 * std / math.sqrt(400) + 1e-3).all()
    assert torch.allclose(draws.std(0), std, rtol=0.2, atol=1e-3)
    assert torch.equal(paths(X), draws)  # a path is a fixed function


def test_sample_paths_of_two_outputs(two_outputs):
    gp, X, _ = two_outputs
    torch.manual_seed(5)
    assert gp.sample_paths(3)(X[:4]).shape == (3, 4, 2)


def test_works_with_botorch_acquisition_functions(sine):
    gp, X, _ = sine
    assert isinstance(gp, Model) and isinstance(gp, Surrogate)
    candidates = torch.linspace(0.0, 1.0, 11, dtype=torch.double).reshape(11, 1, 1)
    ucb = UpperConfidenceBound(gp, beta=1.0)(candidates)
    mean, variance = gp.predict(candidates.squeeze(1))
    assert torch.allclose(ucb, (mean + variance.sqrt()).squeeze(-1), atol=1e-8)
    torch.manual_seed(6)
    nei = qLogNoisyExpectedImprovement(gp, X_baseline=X, cache_root=False)(candidates)
    assert nei.shape == (11,)
    assert torch.isfinite(nei).all()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"lengthscale_prior": False},
        {"log_outcomes": [1]},
        {"prior_mean_column": 0},
        {"noise": "observed"},
    ],
    ids=["default", "scaled-matern", "log-scale", "prior-mean", "observed-noise"],
)
def test_a_subset_of_outputs_predicts_as_those_outputs_of_the_whole(options):
    torch.manual_seed(2)
    X = torch.rand(12, 2, dtype=torch.double)
    Y = torch.stack([X.sum(-1), X.prod(-1) + 0.1, torch.sin(3 * X[:, 0])], dim=-1)
    gp = GPSurrogate(input_bounds=UNIT.expand(2, 2), **options).fit(dataset(X, Y, torch.full_like(Y, 1e-3)))
    whole = gp.posterior(X[:4])
    for outputs in ([1], [2, 0]):  # the logged outcome alone, and two unlogged ones reordered
        part = gp.subset_output(outputs)
        assert part.num_outputs == len(outputs)
        assert torch.allclose(part.posterior(X[:4]).mean, whole.mean[..., outputs])
        assert torch.allclose(part.posterior(X[:4]).variance, whole.variance[..., outputs])


def test_summary_is_json_serialisable(sine, two_outputs):
    for gp, n in ((sine[0], 10), (two_outputs[0], 20)):
        summary = gp.summary()
        assert json.loads(json.dumps(summary)) == summary
        assert summary["type"] == "GPSurrogate" and summary["n_train"] == n
        assert "lengthscales" in summary and summary["noise"] == "inferred"
        assert "noise_variance" in summary
    assert len(two_outputs[0].summary()["lengthscales"]) == 2  # per output...
    assert len(two_outputs[0].summary()["lengthscales"][0]) == 2  # ...per input


def test_rbf_without_prior_is_a_scaled_kernel(sine):
    _, X, Y = sine
    torch.manual_seed(2)
    gp = GPSurrogate(input_bounds=UNIT, kernel="rbf", lengthscale_prior=False).fit(dataset(X, Y))
    summary = gp.summary()
    assert summary["kernel"] == "rbf"
    assert summary["outputscale"] > 0  # ScaleKernel(RBF): maximum likelihood, no prior
    assert json.loads(json.dumps(summary)) == summary
    assert (gp.predict(X)[0] - Y).abs().max() < 0.05


def test_observed_noise_fits_noisy_points_less_tightly():
    X = torch.linspace(0.0, 1.0, 13, dtype=torch.double).unsqueeze(-1)
    Y = X.clone()
    Y[6] += 0.6  # an outlier in the middle of a straight line
    quiet = torch.full_like(Y, 1e-4)
    loud = quiet.clone()
    loud[6] = 1.0
    errors = []
    for Yvar in (quiet, loud):
        torch.manual_seed(7)
        gp = GPSurrogate(input_bounds=UNIT, noise="observed").fit(dataset(X, Y, Yvar))
        errors.append(abs(gp.predict(X[6:7])[0].item() - Y[6].item()))
        assert "noise_variance" not in gp.summary() and gp.summary()["noise"] == "observed"
    trusted, doubted = errors
    assert trusted < 0.1
    assert doubted > 0.3


def test_observed_noise_needs_yvar():
    X = torch.rand(5, 1, dtype=torch.double)
    with pytest.raises(SurrogateError, match="Yvar"):
        GPSurrogate(noise="observed").fit(dataset(X, X))


@pytest.mark.parametrize("name", ["X", "Y", "Yvar"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_training_data_is_refused(name, bad):
    data = {
        "X": torch.rand(6, 2, dtype=torch.double),
        "Y": torch.rand(6, 1, dtype=torch.double),
        "Yvar": torch.full((6, 1), 0.01, dtype=torch.double),
    }
    data[name][2, 0] = bad
    with pytest.raises(SurrogateError, match=f"training {name} contains NaN"):
        GPSurrogate(noise="observed").fit(dataset(data["X"], data["Y"], data["Yvar"]))


def test_empty_dataset_is_refused():
    empty = torch.zeros(0, 1, dtype=torch.double)
    with pytest.raises(SurrogateError, match="empty"):
        GPSurrogate().fit(dataset(empty, empty))


def test_unfitted_surrogate_refuses_questions():
    gp = GPSurrogate()
    X = torch.rand(3, 1, dtype=torch.double)
    with pytest.raises(SurrogateError, match="not been fitted"):
        gp.posterior(X)
    with pytest.raises(SurrogateError, match="not been fitted"):
        gp.predict(X)
    with pytest.raises(SurrogateError, match="not been fitted"):
        gp.summary()
    with pytest.raises(SurrogateError, match="not been fitted"):
        gp.sample_paths(1)
    err = SurrogateError("x")
    assert isinstance(err, AlloopError) and isinstance(err, RuntimeError)


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="kernel"):
        GPSurrogate(kernel="periodic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise"):
        GPSurrogate(noise="heteroscedastic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warm_max_iterations must be >= 1"):
        GPSurrogate(warm_max_iterations=0)


def test_refit_with_warm_start_uses_all_the_new_data(sine):
    _, X, Y = sine
    torch.manual_seed(8)
    gp = GPSurrogate(input_bounds=UNIT).fit(dataset(X[:6], Y[:6]))
    first = gp.model
    gp.fit(dataset(X, Y))
    assert gp.model is not first
    assert gp.summary()["n_train"] == 10
    assert (gp.predict(X)[0] - Y).abs().max() < 0.05


def test_warm_fits_on_large_datasets_are_capped(monkeypatch):
    # A cold fit, or a warm one on a small dataset, runs max_iterations; a warm fit on
    # LARGE_FIT observations or more starts near the optimum and stops at warm_max_iterations.
    import surrogates.gp as gp_module

    iterations: list[int] = []
    real_fit = gp_module.fit_gpytorch_mll

    def recording_fit(mll, optimizer_kwargs):
        iterations.append(optimizer_kwargs["options"]["maxiter"])
        return real_fit(mll, optimizer_kwargs={"options": {"maxiter": 2}})

    monkeypatch.setattr(gp_module, "fit_gpytorch_mll", recording_fit)
    torch.manual_seed(3)
    X = torch.rand(gp_module.LARGE_FIT, 2, dtype=torch.double)
    Y = (X**2).sum(-1, keepdim=True)
    unit = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    gp = GPSurrogate(input_bounds=unit, max_iterations=80, warm_max_iterations=7)
    gp.fit(dataset(X[:50], Y[:50])).fit(dataset(X[:60], Y[:60]))  # cold, then warm but small
    gp.fit(dataset(X, Y))  # warm and large
    GPSurrogate(max_iterations=80, warm_start=False).fit(dataset(X, Y))  # large but cold
    assert iterations == [80, 80, 7, 80]


# --- a prior mean from a cheap model's column (Δ-learning) ----------------------------------


@pytest.fixture(scope="module")
def cheap_and_expensive() -> tuple[torch.Tensor, torch.Tensor]:
    """2-D inputs: ``x0`` a position, ``x1`` a cheap model's prediction of the outcome, which
    is ``2 x1 + 0.1 sin(6 x0)``: the cheap model is right up to scale and a small wiggle."""
    torch.manual_seed(5)
    X = torch.rand(60, 2, dtype=torch.double)
    Y = 2 * X[:, 1:] + 0.1 * torch.sin(6 * X[:, :1])
    return X, Y


def test_a_prior_mean_column_carries_the_cheap_model_where_there_is_no_data(cheap_and_expensive):
    X, Y = cheap_and_expensive
    near, far = X[:, 1] < 0.4, X[:, 1] > 0.8  # train where the cheap prediction is low only
    unit = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.double)
    delta = GPSurrogate(input_bounds=unit, prior_mean_column=1).fit(dataset(X[near], Y[near]))
    plain = GPSurrogate(input_bounds=unit).fit(dataset(X[near], Y[near]))
    error_delta = (delta.predict(X[far])[0] - Y[far]).abs().mean()
    error_plain = (plain.predict(X[far])[0] - Y[far]).abs().mean()
    assert error_delta < 0.1 < error_plain
    # the fitted mean is the cheap column's scale (standardised outcome over normalised input)
    prior = delta.summary()["prior_mean"]
    assert prior["column"] == 1 and prior["weight"] > 0
    json.dumps(delta.summary())


def test_sample_paths_carry_the_prior_mean(cheap_and_expensive):
    X, Y = cheap_and_expensive
    near = X[:, 1] < 0.4
    unit = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.double)
    gp = GPSurrogate(input_bounds=unit, prior_mean_column=1).fit(dataset(X[near], Y[near]))
    torch.manual_seed(6)
    draws = gp.sample_paths(400)(X)[..., 0]
    mean, variance = gp.predict(X)
    assert ((draws.mean(0) - mean[:, 0]).abs() <= 4 * variance[:, 0].sqrt() / math.sqrt(400) + 1e-3).all()


def test_a_prior_mean_column_is_warm_started_and_checked(cheap_and_expensive):
    X, Y = cheap_and_expensive
    with pytest.raises(ValueError, match="prior_mean_column must be >= 0"):
        GPSurrogate(prior_mean_column=-1)
    gp = GPSurrogate(prior_mean_column=2)
    with pytest.raises(SurrogateError, match="prior_mean_column 2 is past the inputs' 2 columns"):
        gp.fit(dataset(X, Y))
    assert gp.model is None
    gp = GPSurrogate(prior_mean_column=1, max_iterations=50).fit(dataset(X[:40], Y[:40]))
    first = gp.summary()["prior_mean"]["weight"]
    gp.max_iterations = 1  # a warm refit of one iteration starts from the fitted mean
    assert gp.fit(dataset(X, Y)).summary()["prior_mean"]["weight"] == pytest.approx(first, rel=0.2)
