"""A Gaussian-process classifier of P(success): where evaluations fail for good.

A latent GP ``f`` (ARD Matern-5/2) with a probit link: ``P(success | x) = E[Φ(f(x))] =
Φ(μ(x) / sqrt(1 + σ²(x)))`` (gpytorch's ``BernoulliLikelihood``), fitted by variational
inference with one inducing point per training input (a few hundred at most in a lab
campaign). The probability is differentiable in ``x``, so it can weight an acquisition that a
gradient optimiser maximises.
"""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.likelihoods import BernoulliLikelihood
from gpytorch.mlls import VariationalELBO
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy
from torch import Tensor

from surrogates.base import SurrogateError


class _LatentGP(gpytorch.models.ApproximateGP):
    def __init__(self, inducing: Tensor) -> None:
        distribution = CholeskyVariationalDistribution(inducing.shape[0], dtype=inducing.dtype)
        strategy = VariationalStrategy(self, inducing, distribution, learn_inducing_locations=False)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=inducing.shape[-1])
        )

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class FeasibilityClassifier:
    """P(success) learned from successes and non-retryable failures.

    Args:
        input_bounds: ``2 x d`` bounds that map inputs to the unit cube.
        iterations: Adam steps of the variational fit.
    """

    def __init__(self, input_bounds: Tensor, iterations: int = 150) -> None:
        self.input_bounds = input_bounds.double()
        self.iterations = iterations
        self.model: _LatentGP | None = None

    def _unit(self, X: Tensor) -> Tensor:
        lower, upper = self.input_bounds
        return (X.double() - lower) / (upper - lower).clamp_min(1e-12)

    def fit(self, X: Tensor, success: Tensor) -> FeasibilityClassifier:
        """Fit to ``n x d`` inputs and their ``n`` outcomes (1 = success, 0 = failure).

        Raises:
            SurrogateError: no data.
        """
        if X.shape[0] == 0:
            raise SurrogateError("the feasibility classifier needs at least one evaluation")
        Xu = self._unit(X)
        y = success.double().reshape(-1)
        model = _LatentGP(Xu).double()
        likelihood = BernoulliLikelihood()
        model.covar_module.base_kernel.lengthscale = 0.3
        model.train()
        likelihood.train()
        mll = VariationalELBO(likelihood, model, num_data=y.numel())
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(self.iterations):
            optimizer.zero_grad()
            loss = -mll(model(Xu), y)
            loss.backward()
            optimizer.step()
        model.eval()
        self.model = model
        return self

    def log_probability(self, X: Tensor) -> Tensor:
        """``log P(success)`` at ``... x d`` inputs (``...``-dim), differentiable in ``X``."""
        if self.model is None:
            raise SurrogateError("the feasibility classifier has not been fitted yet")
        shape = X.shape[:-1]
        flat = self._unit(X.reshape(-1, X.shape[-1]))
        with gpytorch.settings.fast_pred_var(False):
            latent = self.model(flat)
        z = latent.mean / (1.0 + latent.variance).sqrt()
        return torch.special.log_ndtr(z).reshape(shape)

    @torch.no_grad()
    def probability(self, X: Tensor) -> Tensor:
        """P(success) at ``N x d`` inputs (``N``)."""
        return self.log_probability(X).exp()
