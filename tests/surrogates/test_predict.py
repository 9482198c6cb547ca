"""Tests for surrogates.predict: exact, mixed-precision and LOVE marginal predictions of a SingleTaskGP."""

from __future__ import annotations

import gpytorch
import pytest
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from surrogates import predict
from surrogates.predict import (
    DEFAULT_MIXED_RTOL,
    exact_predict,
    love_predict,
    max_relative_std_error,
    mixed_precision_predict,
)


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


@pytest.mark.parametrize("row_block", [7, 25, 1000])
def test_the_blocked_triangular_product_equals_the_posterior(
    monkeypatch: pytest.MonkeyPatch, row_block: int
) -> None:
    monkeypatch.setattr(predict, "ROW_BLOCK", row_block)  # 9, 3 (uneven) and 1 blocks of 60 rows
    model = _model(60, 2)
    X = _candidates(100)
    mean, variance = exact_predict(model, X)
    ref_mean, ref_variance = _reference(model, X)
    assert torch.allclose(mean, ref_mean, rtol=1e-6, atol=0)
    assert torch.allclose(variance, ref_variance, rtol=1e-6, atol=0)


def test_exact_predict_does_not_depend_on_the_chunk_size() -> None:
    model = _model(60)
    X = _candidates(300)
    a = exact_predict(model, X, chunk_size=7)
    b = exact_predict(model, X, chunk_size=1000)
    assert torch.allclose(a[0], b[0], rtol=1e-12) and torch.allclose(a[1], b[1], rtol=1e-12)


@pytest.mark.parametrize(("m", "fixed_noise"), [(1, False), (2, False), (1, True)])
def test_mixed_precision_is_within_its_tolerance(m: int, fixed_noise: bool) -> None:
    model = _model(200, m, fit=True, train_Yvar=fixed_noise)
    X = _candidates(500)
    mean, variance = mixed_precision_predict(model, X, chunk_size=128)
    ref_mean, ref_variance = exact_predict(model, X)
    assert mean.shape == variance.shape == (500, m) and mean.dtype == variance.dtype == torch.double
    assert max_relative_std_error(variance, ref_variance) <= DEFAULT_MIXED_RTOL
    assert ((mean - ref_mean).abs() / ref_mean.abs().amax(0)).max() <= 1e-4


def test_mixed_precision_redoes_in_float64_where_float32_cannot_resolve_the_variance() -> None:
    # Noise 1e-6 and candidates at the training points: the posterior variance there is ~1e-6 of the
    # prior's, below float32's resolution of k(x, x) - ||L^-1 k(X, x)||^2.
    generator = torch.Generator().manual_seed(3)
    train_X = torch.rand(150, 6, generator=generator, dtype=torch.double)
    Y = torch.sin(3 * train_X).sum(-1, keepdim=True)
    model = SingleTaskGP(
        train_X,
        Y,
        train_Yvar=torch.full_like(Y, 1e-6),
        input_transform=Normalize(6),
        outcome_transform=Standardize(1),
    ).eval()
    X = torch.cat([train_X, torch.rand(300, 6, generator=generator, dtype=torch.double)])
    _, exact = exact_predict(model, X)
    _, float32_only = mixed_precision_predict(model, X, rtol=1e12)  # nothing is redone
    _, mixed = mixed_precision_predict(model, X)
    assert max_relative_std_error(float32_only, exact) > 0.05
    assert max_relative_std_error(mixed, exact) <= DEFAULT_MIXED_RTOL


def test_love_is_gpytorchs_own_fast_pred_var() -> None:
    model = _model(120, fit=True)
    X = _candidates(100)
    torch.manual_seed(0)  # Lanczos starts from a random vector
    _, variance = love_predict(model, X, rank=10)
    torch.manual_seed(0)
    with (
        torch.no_grad(),
        gpytorch.settings.fast_pred_var(),
        gpytorch.settings.max_cholesky_size(0),
        gpytorch.settings.fast_computations(covar_root_decomposition=True),
        gpytorch.settings.max_root_decomposition_size(10),
    ):
        latent = model(model.transform_inputs(X))
        reference = latent.variance * model.outcome_transform.stdvs.square()
    model.prediction_strategy = None
    assert torch.allclose(variance.squeeze(-1), reference, rtol=1e-9, atol=0)
    _, exact = exact_predict(model, X)
    assert max_relative_std_error(variance, exact) > 0.1  # rank 10 of 120: LOVE's own error, not a bug


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
    with pytest.raises(ValueError, match="rtol"):
        mixed_precision_predict(model, torch.rand(5, 6, dtype=torch.double), rtol=0)
    with pytest.raises(ValueError, match="N x d"):
        mixed_precision_predict(model, torch.rand(5, dtype=torch.double))
