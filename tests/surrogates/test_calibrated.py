"""The recalibrated surrogate (std scaled, optional observation noise) and the GP's closed-form
leave-one-out z-scores against the direct computation."""

from __future__ import annotations

import pytest
import torch
from botorch.utils.datasets import SupervisedDataset

from surrogates.calibrated import CalibratedSurrogate, loo_z, noise_variance, predictive_moments
from surrogates.gp import GPSurrogate


def _fitted(m: int = 1) -> GPSurrogate:
    generator = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, generator=generator, dtype=torch.double)
    Y = torch.stack([torch.sin(4 * X[:, 0]) + X[:, 1] * k for k in range(1, m + 1)], dim=-1)
    Y = Y + 0.1 * torch.randn(Y.shape, generator=generator, dtype=torch.double)
    torch.manual_seed(0)
    return GPSurrogate().fit(
        SupervisedDataset(X, Y, feature_names=["a", "b"], outcome_names=[f"y{k}" for k in range(m)])
    )


@pytest.mark.parametrize("m", [1, 2])
def test_scaled_posterior_keeps_the_mean_and_scales_the_std(m: int) -> None:
    gp = _fitted(m)
    scale = torch.tensor([2.0, 0.5][:m], dtype=torch.double)
    X = torch.rand(5, 2, dtype=torch.double)
    with torch.no_grad():
        inner = gp.posterior(X)
        scaled = CalibratedSurrogate(gp, scale).posterior(X)
        assert torch.allclose(scaled.mean, inner.mean)
        assert torch.allclose(scaled.variance, inner.variance * scale.square())
        noisy = CalibratedSurrogate(gp, scale, observation_noise=True)
        assert torch.allclose(
            noisy.posterior(X).variance, gp.posterior(X, observation_noise=True).variance * scale.square()
        )
    _, latent, predictive = predictive_moments(gp, X)
    noise = noise_variance(gp, X)
    assert noise is not None and bool((noise > 0).all())
    assert torch.allclose(predictive, latent + noise)
    assert torch.allclose(noisy.predict(X)[1], predictive * scale.square())
    assert noisy.summary()["std_scale"] == scale.tolist()


def test_scaled_paths_spread_around_the_mean() -> None:
    gp = _fitted()
    X = torch.rand(7, 2, dtype=torch.double)
    torch.manual_seed(1)
    raw = gp.sample_paths(3)(X)
    torch.manual_seed(1)
    scaled = CalibratedSurrogate(gp, torch.tensor([3.0], dtype=torch.double)).sample_paths(3)(X)
    mean, _ = gp.predict(X)
    assert torch.allclose(scaled - mean, 3.0 * (raw - mean))


def test_closed_form_loo_matches_the_direct_computation() -> None:
    gp = _fitted()
    z = loo_z(gp)
    assert z is not None and z.shape == (1, 12)
    model = gp.fitted
    X = model.train_inputs[0]
    with torch.no_grad():
        prior = model.forward(X)
        C = model.likelihood(prior).covariance_matrix.detach()
        r = (model.train_targets - prior.mean).detach()
    for i in range(12):
        rest = [j for j in range(12) if j != i]
        k = C[i, rest]
        solve = torch.linalg.solve(C[rest][:, rest], torch.stack([r[rest], k], dim=-1))
        mean = k @ solve[:, 0]
        variance = C[i, i] - k @ solve[:, 1]
        assert float(z[0, i]) == pytest.approx(float((r[i] - mean) / variance.sqrt()), rel=1e-6)
    assert loo_z(CalibratedSurrogate(gp, torch.ones(1))) is None  # not a bare GP
