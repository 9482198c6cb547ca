"""Fast marginal prediction of a fitted BoTorch ``SingleTaskGP`` over large candidate pools.

``model.posterior(X)`` over a pool either builds one joint ``N x N`` covariance (unchunked: 80 GB for
10^5 candidates) or, in t-batch mode (``X`` as ``N x 1 x d``), solves ``N`` separate small problems
with per-batch overhead. A pool only needs *marginal* means and variances, and those are

    mean(x) = m(x) + k(x, X) alpha,                    alpha = (K + S)^-1 (y - m(X))
    var(x)  = k(x, x) - || L^-1 k(X, x) ||^2,          L L^T = K + S

with ``K`` the training kernel matrix and ``S`` the noise. Both predictors here compute the training-side
quantities once and then score the pool in chunks:

* :func:`exact_predict`: ``L^-1`` from gpytorch's cached Cholesky factor of the training covariance; per
  chunk of ``c`` candidates, one cross-covariance ``n x c`` and one ``n x n`` by ``n x c`` GEMM
  (``2 n^2 c`` flops, the one product that cannot be avoided). Equal to ``model.posterior`` to
  round-off.
* :func:`love_predict`: gpytorch's LOVE (``fast_pred_var``): a rank-``k`` Lanczos root of the predictive
  covariance cache replaces ``L^-1``, so the per-chunk product is ``2 n k c`` flops. The mean stays exact;
  the variance is approximate (check its error with :func:`max_relative_std_error`).

Both return the latent ``f``'s posterior (no observation noise) in outcome units: the model's input
transform (``Normalize``) is applied to ``X`` and its outcome transform (``Standardize``) undone.
"""

from __future__ import annotations

from dataclasses import dataclass

import gpytorch
import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

DEFAULT_CHUNK_SIZE = 4096
"""Candidates per chunk: the chunk's cross-covariance is ``n x chunk_size`` doubles."""

DEFAULT_LOVE_RANK = 256
"""Lanczos rank of the LOVE cache (gpytorch's ``max_root_decomposition_size``)."""


@dataclass(frozen=True)
class _TrainingCache:
    """What a fitted GP's marginal predictions need from its training data.

    ``b`` is the model's batch shape (``[m]`` for ``m`` batched outputs, ``[]`` for one).
    """

    train_X: Tensor  # noqa: N815 - BoTorch naming
    """``b x n x d`` transformed training inputs."""
    alpha: Tensor
    """``b x n`` ``(K + S)^-1 (y - m(X))``."""
    root: Tensor
    """``b x r x n``: ``L^-1`` (exact, ``r = n``) or the LOVE root transposed (``r = k``)."""


def exact_predict(
    model: SingleTaskGP, X: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[Tensor, Tensor]:
    """Exact marginal posterior mean and variance of the latent function at every row of ``X``.

    Args:
        model: A fitted ``SingleTaskGP`` (one or ``m`` batched outputs, any kernel, any Gaussian
            likelihood), in eval mode or not (it is put in eval mode).
        X: ``N x d`` candidates in the model's raw input space.
        chunk_size: Candidates per chunk; memory grows with ``n x chunk_size``.

    Returns:
        ``N x m`` means and ``N x m`` variances, in outcome units, equal to
        ``model.posterior(X[i:i+1])`` row by row (``observation_noise=False``) up to round-off.

    Raises:
        ValueError: If ``X`` is not ``N x d`` or ``chunk_size < 1``.
    """
    return _predict(model, X, chunk_size, love_rank=None)


def love_predict(
    model: SingleTaskGP,
    X: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rank: int = DEFAULT_LOVE_RANK,
) -> tuple[Tensor, Tensor]:
    """Marginal posterior mean (exact) and LOVE-approximate variance at every row of ``X``.

    Uses gpytorch's ``fast_pred_var`` cache (Pleiss et al., 2018): a rank-``rank`` Lanczos root ``R``
    (``n x rank``) with ``R R^T`` ≈ ``(K + S)^-1``, so the variance is ``k(x, x) - ||R^T k(X, x)||^2``.

    Args:
        model: A fitted ``SingleTaskGP``.
        X: ``N x d`` candidates in the model's raw input space.
        chunk_size: Candidates per chunk.
        rank: Lanczos rank; the error falls quickly with it (``rank >= n`` is exact up to Lanczos
            round-off).

    Returns:
        ``N x m`` means and ``N x m`` variances, in outcome units.

    Raises:
        ValueError: If ``X`` is not ``N x d``, ``chunk_size < 1`` or ``rank < 1``.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return _predict(model, X, chunk_size, love_rank=rank)


def max_relative_std_error(approximate: Tensor, exact: Tensor, floor: float = 0.0) -> float:
    """Largest ``|sqrt(v_approx) - sqrt(v_exact)| / sqrt(v_exact)`` over candidates and outputs.

    Args:
        approximate: ``N x m`` approximate variances.
        exact: ``N x m`` exact variances.
        floor: Variances below this (absolute) are left out, to skip candidates at training points.
    """
    std, ref = approximate.clamp_min(0).sqrt(), exact.clamp_min(0).sqrt()
    keep = exact > floor
    if not keep.any():
        return 0.0
    return float(((std - ref).abs()[keep] / ref[keep]).max())


@torch.no_grad()
def _predict(model: SingleTaskGP, X: Tensor, chunk_size: int, love_rank: int | None) -> tuple[Tensor, Tensor]:
    if X.ndim != 2:
        raise ValueError(f"X must be an N x d matrix, got shape {tuple(X.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    model.eval()
    cache = _training_cache(model, love_rank)
    if X.shape[-1] != cache.train_X.shape[-1]:
        raise ValueError(f"X has {X.shape[-1]} columns, the model was trained on {cache.train_X.shape[-1]}")
    X = X.to(cache.train_X)
    means, variances = [], []
    for start in range(0, X.shape[0], chunk_size):
        x = model.transform_inputs(X[start : start + chunk_size])  # c x d
        x = x.expand(*cache.train_X.shape[:-2], *x.shape)  # b x c x d
        cross = model.covar_module(cache.train_X, x).to_dense()  # b x n x c
        prior_var = model.covar_module(x, diag=True)  # b x c
        mean = model.mean_module(x) + (cross * cache.alpha.unsqueeze(-1)).sum(-2)  # b x c
        reduced = cache.root @ cross  # b x r x c: the one GEMM
        variance = (prior_var - reduced.square().sum(-2)).clamp_min(0.0)
        means.append(mean)
        variances.append(variance)
    mean, variance = torch.cat(means, dim=-1), torch.cat(variances, dim=-1)  # b x N
    mean = mean.T if mean.ndim == 2 else mean.unsqueeze(-1)  # N x m
    variance = variance.T if variance.ndim == 2 else variance.unsqueeze(-1)
    return _untransform(model, mean, variance)


def _training_cache(model: SingleTaskGP, love_rank: int | None) -> _TrainingCache:
    """``alpha`` and the root of ``(K + S)^-1`` of a fitted model, from gpytorch's own caches."""
    train_X = model.train_inputs[0]
    train_y = model.train_targets  # b x n, outcome-transformed
    prior = model.forward(train_X)
    noisy = model.likelihood(prior, train_X)  # K + S, as gpytorch's exact prediction builds it
    L = psd_safe_cholesky(noisy.lazy_covariance_matrix.to_dense())
    alpha = torch.cholesky_solve((train_y - prior.mean).unsqueeze(-1), L).squeeze(-1)
    if love_rank is None:
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
        root = torch.linalg.solve_triangular(L, eye, upper=False)  # L^-1
        return _TrainingCache(train_X, alpha, root)
    # LOVE: gpytorch's prediction strategy builds the Lanczos cache on a fast_pred_var call;
    # max_cholesky_size(0) makes it use Lanczos (by default it factorises up to 4096 points exactly).
    with (
        gpytorch.settings.fast_pred_var(),
        gpytorch.settings.max_cholesky_size(0),
        gpytorch.settings.fast_computations(covar_root_decomposition=True),
        gpytorch.settings.max_root_decomposition_size(love_rank),
        gpytorch.settings.skip_posterior_variances(False),
    ):
        model.prediction_strategy = None  # a fresh cache under these settings...
        try:
            model(train_X[..., :1, :])
            covar_cache = model.prediction_strategy.covar_cache  # b x n x k, C C^T ≈ (K + S)^-1
        finally:
            model.prediction_strategy = None  # ...that later exact posteriors must not reuse
    return _TrainingCache(train_X, alpha, covar_cache.to_dense().transpose(-1, -2))


def _untransform(model: SingleTaskGP, mean: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:
    """Undo a ``Standardize`` outcome transform on ``N x m`` means and variances."""
    transform = getattr(model, "outcome_transform", None)
    if transform is None:
        return mean, variance
    if not isinstance(transform, Standardize):
        raise ValueError(f"unsupported outcome transform {type(transform).__name__}; only Standardize")
    means, stdvs = transform.means.reshape(-1), transform.stdvs.reshape(-1)  # m
    return mean * stdvs + means, variance * stdvs.square()
