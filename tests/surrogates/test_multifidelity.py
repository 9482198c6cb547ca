"""Whole posterior functions of the multi-fidelity GP (surrogates.multifidelity)."""

from __future__ import annotations

import pytest
import torch
from botorch.utils.datasets import SupervisedDataset

from surrogates.multifidelity import MultiFidelityGP, fidelity_features

CHEAP = 0.01


@pytest.fixture(scope="module")
def fitted() -> MultiFidelityGP:
    """A GP on 60 points of a 3-D function measured at the target (1) and at 0.01, with a bias."""
    torch.manual_seed(0)
    X = torch.rand(60, 4, dtype=torch.double)
    X[:, -1] = torch.where(torch.rand(60) < 0.6, CHEAP, 1.0)
    Y = (torch.sin(3 * X[:, :3]).sum(-1) + 0.5 * (1 - X[:, -1]) * X[:, 0]).unsqueeze(-1)
    bounds = torch.stack([torch.zeros(3), torch.ones(3)]).double()
    data = SupervisedDataset(X, Y, feature_names=["a", "b", "c", "fidelity"], outcome_names=["y"])
    return MultiFidelityGP(bounds, max_iterations=50).fit(data)


def points() -> torch.Tensor:
    torch.manual_seed(1)
    T = torch.rand(6, 4, dtype=torch.double)
    T[:3, -1], T[3:, -1] = 1.0, CHEAP
    return T


def test_random_features_reproduce_the_fidelity_kernel(fitted: MultiFidelityGP) -> None:
    model = fitted.fitted
    Z = model.input_transform(points())
    levels = torch.tensor([CHEAP], dtype=torch.double)
    torch.manual_seed(0)
    features = fidelity_features(model.covar_module, num_inputs=4, num_outputs=8192, levels=levels)(Z)
    exact = model.covar_module(Z).to_dense().detach()
    # within a few percent, across fidelities too (the cheap-target terms carry no bias term)
    assert torch.allclose(features @ features.T, exact, atol=0.05 * float(exact.max()))


def test_thompson_paths_follow_the_posterior_at_every_fidelity(fitted: MultiFidelityGP) -> None:
    T = points()
    torch.manual_seed(0)
    draws = torch.cat([fitted.sample_paths(200)(T)[..., 0] for _ in range(5)])  # 5 feature draws
    assert draws.shape == (1000, 6)
    posterior = fitted.posterior(T)
    mean = posterior.mean[:, 0].detach()
    std = posterior.variance[:, 0].detach().sqrt()
    assert torch.all((draws.mean(0) - mean).abs() < 4 * std)
    assert torch.all((draws.std(0) / std - 1).abs() < 0.8)  # random features: the right order
