"""Recalibrated uncertainty: a surrogate whose posterior std is scaled, and the GP's
closed-form leave-one-out check.

:class:`CalibratedSurrogate` wraps a fitted surrogate: same mean, std multiplied by a factor
per outcome (``f' = mean + s · (f - mean)``), optionally with the observation noise added
first (the *predictive* distribution of a measurement). It is a BoTorch model, so any
acquisition function takes it unchanged, and it draws scaled Thompson paths when the wrapped
model draws paths. :func:`predictive_moments` gives latent and predictive variances at once.
The factor itself is fitted elsewhere (``loop.calibration``); this module only applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from botorch.models import SingleTaskGP
from botorch.posteriors import GPyTorchPosterior, Posterior
from botorch.utils.datasets import SupervisedDataset
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from torch import Tensor

from surrogates.base import DEFAULT_CHUNK_SIZE, Moments, Surrogate, SurrogateError
from surrogates.gp import SamplesPaths


@torch.no_grad()
def noise_variance(model: Surrogate, X: Tensor) -> Tensor | None:
    """The observation-noise variance the model adds to a measurement, ``m``-dim (outcome
    units), read at the first row of ``X`` (``N x d``): homoscedastic noise (the GP's inferred
    noise, or BoTorch's mean observed noise at new points). ``None``: the model's posterior
    cannot add noise."""
    x = X[:1]
    try:
        noisy = cast(Moments, model.posterior(x, observation_noise=True)).variance
    except NotImplementedError:
        return None
    return (noisy - cast(Moments, model.posterior(x)).variance).clamp_min(0.0).reshape(-1)


@torch.no_grad()
def predictive_moments(
    model: Surrogate, X: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, latent variance and predictive variance (latent + noise) at every row of ``X``.

    Args:
        model: A fitted surrogate.
        X: ``N x d`` inputs.
        chunk_size: Rows per prediction chunk.

    Returns:
        Three ``N x m`` tensors (outcome units); a model that cannot add noise is taken as
        noise-free.
    """
    mean, latent = model.predict(X, chunk_size=chunk_size)
    noise = noise_variance(model, X)
    return mean, latent, latent if noise is None else latent + noise


class CalibratedSurrogate(Surrogate, SamplesPaths):
    """A fitted surrogate with its posterior std scaled by ``scale`` (one factor per outcome).

    Args:
        inner: The fitted surrogate.
        scale: ``m`` factors on the std (1: unchanged).
        observation_noise: Add the observation noise before scaling (the predictive
            distribution of a measurement, for stopping rules), or not (the latent function,
            for acquisition).
    """

    scale: Tensor  # a buffer: it moves with the module

    def __init__(self, inner: Surrogate, scale: Tensor, observation_noise: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", scale.double().reshape(-1))
        self.observation_noise = observation_noise

    def fit(self, dataset: SupervisedDataset) -> CalibratedSurrogate:
        self.inner.fit(dataset)
        return self

    @property
    def num_outputs(self) -> int:
        return self.inner.num_outputs

    @property
    def batch_shape(self) -> torch.Size:
        return self.inner.batch_shape

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: Any = None,
        **kwargs: Any,
    ) -> Posterior:
        if output_indices is not None:
            raise SurrogateError("a recalibrated surrogate does not subset its outputs")
        noise = self.observation_noise or observation_noise
        inner = self.inner.posterior(X, observation_noise=noise, **kwargs)
        if not isinstance(inner, GPyTorchPosterior):
            kind = type(inner).__name__
            raise SurrogateError(f"cannot recalibrate a {kind}: a Gaussian posterior is needed")
        posterior = GPyTorchPosterior(self._scaled(inner.distribution, X.shape[-2]))
        return posterior if posterior_transform is None else posterior_transform(posterior)

    def _scaled(self, mvn: MultivariateNormal, n: int) -> MultivariateNormal:
        s = self.scale.to(mvn.mean)
        if not isinstance(mvn, MultitaskMultivariateNormal):
            return MultivariateNormal(mvn.mean, mvn.lazy_covariance_matrix * s.square().reshape(()))
        factors = s.repeat(n) if mvn._interleaved else s.repeat_interleave(n)
        covar = mvn.covariance_matrix * (factors.unsqueeze(-1) * factors.unsqueeze(-2))
        return MultitaskMultivariateNormal(mvn.mean, covar, interleaved=mvn._interleaved)

    @torch.no_grad()
    def predict(self, X: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
        mean, latent, predictive = predictive_moments(self.inner, X, chunk_size)
        variance = predictive if self.observation_noise else latent
        return mean, variance * self.scale.square()

    def sample_paths(self, num_samples: int) -> Callable[[Tensor], Tensor]:
        if not isinstance(self.inner, SamplesPaths):
            raise NotImplementedError(f"{type(self.inner).__name__} draws no paths")
        paths = self.inner.sample_paths(num_samples)

        @torch.no_grad()
        def evaluate(X: Tensor) -> Tensor:
            mean, _ = self.inner.predict(X)
            return mean + self.scale * (paths(X) - mean)

        return evaluate

    def summary(self) -> dict[str, Any]:
        return {**self.inner.summary(), "std_scale": self.scale.tolist()}


@torch.no_grad()
def loo_z(surrogate: Surrogate) -> Tensor | None:
    """Closed-form leave-one-out z-scores of a fitted exact GP, ``m x n`` (``None`` for other
    surrogates): with ``C = K + S`` the training covariance with noise and ``r`` the centred
    targets, the held-out residual of point ``i`` is ``[C⁻¹r]_i / [C⁻¹]_ii`` and its predictive
    variance ``1 / [C⁻¹]_ii`` (Rasmussen & Williams 2006, eq. 5.12), so
    ``z_i = [C⁻¹r]_i / sqrt([C⁻¹]_ii)``. The outcome standardisation cancels in ``z``;
    the hyper-parameters are not refitted without the point (a slightly optimistic check)."""
    model = getattr(surrogate, "model", None)
    if not isinstance(model, SingleTaskGP):
        return None
    X = model.train_inputs[0]
    prior = model.forward(X)
    marginal = model.likelihood(prior, X) if _fixed_noise(model) else model.likelihood(prior)
    C = marginal.covariance_matrix
    L = torch.linalg.cholesky(C + 1e-9 * torch.eye(C.shape[-1], dtype=C.dtype))
    C_inv = torch.cholesky_inverse(L)
    r = (model.train_targets - prior.mean).unsqueeze(-1)
    z = (C_inv @ r).squeeze(-1) / C_inv.diagonal(dim1=-2, dim2=-1).sqrt()
    return z.reshape(-1, X.shape[-2])


def _fixed_noise(model: SingleTaskGP) -> bool:
    from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

    return isinstance(model.likelihood, FixedNoiseGaussianLikelihood)
