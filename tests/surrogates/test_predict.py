"""Tests for surrogates.predict: exact chunked and LOVE marginal predictions of a SingleTaskGP."""

from __future__ import annotations

import pytest
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from surrogates.predict import exact_predict, love_predict, max_relative_std_error


def _model(n: int, m: int = 1, fit: bool = False, train_Yvar: bool = False) -> SingleTaskGP:
    """A GP on 6-dim inputs far from the unit cube, with outcomes far from standard."""
    generator = torch.Generator().manual_seed(n + m)
    X = 3 * torch.rand(n, 6, generator=generator, dtype=torch.double) + 1
    columns = [10 + 5 * torch.sin(2 * X).sum(-1), torch.cos(X).sum(-1) - 3][:m]
    Y = torch.stack(columns, -1) + 0.05 * torch.randn(n, m, generator=generator, dtype=torch.double)
    model = SingleTaskGP(
        X,
        Y,
        train_Yvar=torch.full_like(Y, 0.01) if train_Yvar else None,
        input_transform=Normalize(6),
        outcome_transform=Standardize(m),
    )
    if fit:
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model.eval()


def _candidates(k: int) -> torch.Tensor:
    return 3 * torch.rand(k, 6, generator=torch.Generator().manual_seed(7), dtype=torch.double) + 1


def _reference(model: SingleTaskGP, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        posterior = model.posterior(X.unsqueeze(-2))  # t-batch: exact marginals, no noise
    return posterior.mean.squeeze(-2), posterior.variance.squeeze(-2)


@pytest.mark.parametrize(("m", "fixed_noise"), [(1, False), (2, False), (1, True)])
def test_exact_predict_equals_the_posterior(m: int, fixed_noise: bool) -> None:
    model = _model(60, m, train_Yvar=fixed_noise)
    X = _candidates(300)
    mean, variance = exact_predict(model, X, chunk_size=128)
    ref_mean, ref_variance = _reference(model, X)
    assert mean.shape == variance.shape == (300, m)
    assert torch.allclose(mean, ref_mean, rtol=1e-6, atol=0)
    assert torch.allclose(variance, ref_variance, rtol=1e-6, atol=0)


def test_exact_predict_does_not_depend_on_the_chunk_size() -> None:
    model = _model(60)
    X = _candidates(300)
    a = exact_predict(model, X, chunk_size=7)
    b = exact_predict(model, X, chunk_size=1000)
    assert torch.allclose(a[0], b[0], rtol=1e-12) and torch.allclose(a[1], b[1], rtol=1e-12)


def test_love_mean_is_exact_and_std_error_is_small_at_full_rank() -> None:
    model = _model(80)
    X = _candidates(200)
    mean, variance = love_predict(model, X, rank=80)
    ref_mean, ref_variance = _reference(model, X)
    assert torch.allclose(mean, ref_mean, rtol=1e-6, atol=0)
    assert max_relative_std_error(variance, ref_variance) <= 0.01


def test_love_error_grows_as_the_rank_shrinks() -> None:
    model = _model(80)
    X = _candidates(200)
    _, exact = exact_predict(model, X)
    errors = [max_relative_std_error(love_predict(model, X, rank=k)[1], exact) for k in (4, 80)]
    assert errors[0] > errors[1]


def test_bad_input_is_refused() -> None:
    model = _model(20, fit=False)
    with pytest.raises(ValueError, match="N x d"):
        exact_predict(model, torch.rand(5, dtype=torch.double))
    with pytest.raises(ValueError, match="columns"):
        exact_predict(model, torch.rand(5, 3, dtype=torch.double))
    with pytest.raises(ValueError, match="chunk_size"):
        exact_predict(model, torch.rand(5, 6, dtype=torch.double), chunk_size=0)
    with pytest.raises(ValueError, match="rank"):
        love_predict(model, torch.rand(5, 6, dtype=torch.double), rank=0)
