"""Fast marginal prediction of a fitted BoTorch ``SingleTaskGP`` over large candidate pools.

``model.posterior(X)`` over a pool either builds one joint ``N x N`` covariance (unchunked: 80 GB for
10^5 candidates) or, in t-batch mode (``X`` as ``N x 1 x d``), solves ``N`` separate small problems
with per-batch overhead. A pool only needs *marginal* means and variances, and those are

    mean(x) = m(x) + k(x, X) alpha,                    alpha = (K + S)^-1 (y - m(X))
    var(x)  = k(x, x) - || L^-1 k(X, x) ||^2,          L L^T = K + S

with ``K`` the training kernel matrix and ``S`` the noise. The predictors here compute the training-side
quantities once and then score the pool in chunks:

* :func:`exact_predict`: ``L^-1`` from the Cholesky factor of the training covariance; per chunk of ``c``
  candidates, one cross-covariance ``n x c`` and one ``n x n`` by ``n x c`` product, the one that cannot be
  avoided (``2 n^2 c`` flops as a GEMM; ``L^-1`` is lower triangular, so it runs as GEMMs on blocks of
  :data:`ROW_BLOCK` rows that skip the zero blocks: ``(B + 1) / 2B`` of that, 62.5% at n = 1000). Equal to
  ``model.posterior`` to round-off.
* :func:`mixed_precision_predict`: the same computation with the kernel evaluation and the product in
  float32 (about twice the GEMM rate), and the candidates whose float32 variance is too small to be trusted
  redone in float64. Approximate: std error kept below ``rtol`` (0.5%) by a measured error bound, not a proof
  (largest relative std error 2e-4 to 4e-4 at n = 1000 on Hartmann-6); mean error ~1e-5 of the mean's scale.
* :func:`love_predict`: gpytorch's LOVE (``fast_pred_var``): a rank-``k`` Lanczos root of ``(K + S)^-1``
  replaces ``L^-1``. Kept as a measured comparison, not recommended: where the posterior variance is a small
  fraction of the prior variance (a well-sampled GP) the variance is a small difference of two large numbers,
  and a rank-``k`` root misses the part of ``k(X, x)`` outside its ``k`` directions. At n = 1000 on
  Hartmann-6 (912 eigenvalues of ``K`` above the noise) rank 256 gives a ~300% std error, and even the ``k``
  exact leading eigenvectors give 265% (33% at ``k = 700``): the error is the method's, not a bug.

All return the latent ``f``'s posterior (no observation noise) in outcome units: the model's input
transform (``Normalize``) is applied to ``X`` and its outcome transform (``Standardize``) undone.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace
from typing import cast

import gpytorch
import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import ChainedOutcomeTransform, Standardize
from gpytorch.models.exact_prediction_strategies import DefaultPredictionStrategy
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor
from torch.nn import Module

from surrogates.log_outcomes import LogOutcomes, lognormal_moments

DEFAULT_CHUNK_SIZE = 4096
"""Candidates per chunk: the chunk's cross-covariance is ``n x chunk_size`` numbers."""

DEFAULT_LOVE_RANK = 256
"""Lanczos rank of the LOVE cache (gpytorch's ``max_root_decomposition_size``)."""

DEFAULT_MIXED_RTOL = 5e-3
"""Relative std error :func:`mixed_precision_predict` guards against (half of the 1% goal)."""

FLOAT32_ERROR_SAFETY = 4.0
"""Factor on the float32 variance error measured at the training inputs, for the error anywhere else."""

CALIBRATION_POINTS = 1024
"""Training inputs (at most) at which :func:`mixed_precision_predict` measures its float32 error."""

ROW_BLOCK = 256
"""Rows per block of the lower-triangular ``L^-1``: the blocks above the diagonal are zero and skipped."""


@dataclass(frozen=True)
class _TrainingCache:
    """What a fitted GP's marginal predictions need from its training data, in one precision.

    ``b`` is the model's batch shape (``[m]`` for ``m`` batched outputs, ``[]`` for one).
    """

    covar_module: Module
    """The model's kernel, or a copy of it in the cache's precision."""
    train_X: Tensor  # noqa: N815 - BoTorch naming
    """``b x n x d`` transformed training inputs."""
    alpha: Tensor
    """``b x n`` ``(K + S)^-1 (y - m(X))``."""
    root: Tensor
    """``b x r x n``: ``L^-1`` (exact, ``r = n``) or the LOVE root transposed (``r = k``)."""
    lower_triangular: bool
    """Whether ``root`` is lower triangular (``L^-1``), so that its product can skip the zero blocks."""


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
    X = _check(model, X, chunk_size)
    cache = _exact_cache(model)
    return _untransform(model, *_map_chunks(model, cache, X, chunk_size))


def mixed_precision_predict(
    model: SingleTaskGP,
    X: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rtol: float = DEFAULT_MIXED_RTOL,
) -> tuple[Tensor, Tensor]:
    """Marginal posterior mean and variance with the kernel and the GEMM in float32, corrected in float64.

    The exact computation (:func:`exact_predict`) with float32 copies of the kernel, ``alpha`` and ``L^-1``.
    float32 makes an absolute variance error ``e`` (rounding of ``k(X, x)`` amplified by ``L^-1``), which
    is measured once per call at (up to :data:`CALIBRATION_POINTS`) training inputs, where the posterior
    variance is smallest. A candidate whose float32 variance is below
    ``FLOAT32_ERROR_SAFETY * e / (2 * rtol)`` (where the std error ``e / (2 var)`` could exceed ``rtol``) is
    redone in float64, so a model with a tiny noise costs up to :func:`exact_predict`'s time but keeps the
    accuracy. The bound is empirical: on Hartmann-6 at n = 1000 the largest float32 variance error over
    5 x 10^4 candidates was 1.8 ``e``, and no candidate was redone (the threshold, 7.6e-4 of the prior
    variance, is below the smallest variance, 2e-3).

    Args:
        model: A fitted ``SingleTaskGP``.
        X: ``N x d`` candidates in the model's raw input space.
        chunk_size: Candidates per chunk.
        rtol: Target largest relative error of the std; it sets which candidates are redone in float64.

    Returns:
        ``N x m`` means (error ~1e-5 of their scale) and ``N x m`` variances, in outcome units.

    Raises:
        ValueError: If ``X`` is not ``N x d``, ``chunk_size < 1`` or ``rtol <= 0``.
    """
    if rtol <= 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    X = _check(model, X, chunk_size)
    exact = _exact_cache(model)
    single = replace(
        exact,
        covar_module=copy.deepcopy(model.covar_module).float(),
        train_X=exact.train_X.float(),
        alpha=exact.alpha.float(),
        root=exact.root.float(),
    )
    # The float32 variance error at the training inputs, where the variance (hence the relative error) is
    # smallest; its size is set by the prior variance, L^-1 and the size of k(X, x), similar everywhere.
    probe = exact.train_X.reshape(-1, *exact.train_X.shape[-2:])[0, :CALIBRATION_POINTS]  # p x d
    with torch.no_grad():
        _, at_train = _chunk(model, single, probe)
        _, at_train_exact = _chunk(model, exact, probe)
    error = float((at_train - at_train_exact).abs().max())
    floor = FLOAT32_ERROR_SAFETY * error / (2 * rtol)
    return _untransform(model, *_map_chunks(model, single, X, chunk_size, exact, floor))


def love_predict(
    model: SingleTaskGP,
    X: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rank: int = DEFAULT_LOVE_RANK,
) -> tuple[Tensor, Tensor]:
    """Marginal posterior mean (exact) and LOVE-approximate variance at every row of ``X``.

    Uses gpytorch's ``fast_pred_var`` cache (Pleiss et al., 2018): a rank-``rank`` Lanczos root ``R``
    (``n x rank``) with ``R R^T`` ≈ ``(K + S)^-1``, so the variance is ``k(x, x) - ||R^T k(X, x)||^2``.
    The variance error is absolute, a fraction of the prior variance: large relative to a posterior
    variance that is much smaller than the prior's (see the module docstring; 300% at n = 1000, rank 256,
    on Hartmann-6). Prefer :func:`mixed_precision_predict`.

    Args:
        model: A fitted ``SingleTaskGP``.
        X: ``N x d`` candidates in the model's raw input space.
        chunk_size: Candidates per chunk.
        rank: Lanczos rank (``rank >= n`` is exact up to Lanczos round-off).

    Returns:
        ``N x m`` means and ``N x m`` variances, in outcome units.

    Raises:
        ValueError: If ``X`` is not ``N x d``, ``chunk_size < 1`` or ``rank < 1``.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    X = _check(model, X, chunk_size)
    cache = _love_cache(model, rank)
    return _untransform(model, *_map_chunks(model, cache, X, chunk_size))


def relative_std_error(approximate: Tensor, exact: Tensor) -> Tensor:
    """Elementwise ``|sqrt(v_approx) - sqrt(v_exact)| / sqrt(v_exact)`` (negative variances read as 0).

    Args:
        approximate: ``N x m`` approximate variances.
        exact: ``N x m`` exact variances.

    Returns:
        ``N x m`` relative errors of the standard deviations (``inf`` where the exact variance is 0 and
        the approximate one is not).
    """
    std, ref = approximate.clamp_min(0).sqrt(), exact.clamp_min(0).sqrt()
    return (std - ref).abs() / ref


def max_relative_std_error(approximate: Tensor, exact: Tensor, floor: float = 0.0) -> float:
    """Largest :func:`relative_std_error` over candidates and outputs.

    Args:
        approximate: ``N x m`` approximate variances.
        exact: ``N x m`` exact variances.
        floor: Variances at or below this (absolute) are left out, to skip candidates at training points.
    """
    keep = exact > floor
    if not keep.any():
        return 0.0
    return float(relative_std_error(approximate, exact)[keep].max())


def _check(model: SingleTaskGP, X: Tensor, chunk_size: int) -> Tensor:
    """Validate the arguments, put the model in eval mode, return ``X`` in the training data's dtype."""
    if X.ndim != 2:
        raise ValueError(f"X must be an N x d matrix, got shape {tuple(X.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    model.eval()
    train_X = model.train_inputs[0]
    if X.shape[-1] != train_X.shape[-1]:
        raise ValueError(f"X has {X.shape[-1]} columns, the model was trained on {train_X.shape[-1]}")
    return X.to(train_X)


@torch.no_grad()
def _map_chunks(
    model: SingleTaskGP,
    cache: _TrainingCache,
    X: Tensor,
    chunk_size: int,
    fallback: _TrainingCache | None = None,
    floor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``N x m`` means and variances in the model's (standardised) units, chunk by chunk.

    Candidates whose variance under ``cache`` is at most ``floor`` are redone with ``fallback`` (if given).
    """
    means, variances = [], []
    for start in range(0, X.shape[0], chunk_size):
        x = model.transform_inputs(X[start : start + chunk_size])  # c x d
        mean, variance = _chunk(model, cache, x)
        if fallback is not None:
            redo = (variance <= floor).reshape(-1, x.shape[0]).any(0)  # c
            if redo.any():
                mean[..., redo], variance[..., redo] = _chunk(model, fallback, x[redo])
        means.append(mean)
        variances.append(variance)
    mean, variance = torch.cat(means, dim=-1), torch.cat(variances, dim=-1)  # b x N
    mean = mean.T if mean.ndim == 2 else mean.unsqueeze(-1)  # N x m
    variance = variance.T if variance.ndim == 2 else variance.unsqueeze(-1)
    return mean, variance.clamp_min(0.0)


def _chunk(model: SingleTaskGP, cache: _TrainingCache, x: Tensor) -> tuple[Tensor, Tensor]:
    """``b x c`` means and (unclamped) variances at ``c x d`` transformed inputs, in the model's dtype.

    The kernel, ``alpha`` and the root product run in the cache's dtype; the mean function in the model's.
    """
    x = x.expand(*cache.train_X.shape[:-2], *x.shape)  # b x c x d
    low = x.to(cache.train_X.dtype)
    cross = cache.covar_module(cache.train_X, low).to_dense()  # b x n x c
    prior_var = cache.covar_module(low, diag=True)  # b x c
    mean = model.mean_module(x) + (cache.alpha.unsqueeze(-2) @ cross).squeeze(-2)  # b x c
    if cache.lower_triangular:  # the one GEMM, b x n x c
        edges = [*range(0, cache.root.shape[-1], ROW_BLOCK), cache.root.shape[-1]]
        blocks = [cache.root[..., a:b, :b] @ cross[..., :b, :] for a, b in itertools.pairwise(edges)]
        reduced = torch.cat(blocks, dim=-2)  # (B + 1) / 2B of the flops of a full product, B blocks
    else:
        reduced = cache.root @ cross  # b x r x c
    variance = prior_var - reduced.square_().sum(-2)
    return mean.to(x.dtype), variance.to(x.dtype)


@torch.no_grad()
def _exact_cache(model: SingleTaskGP) -> _TrainingCache:
    """``alpha`` and ``L^-1`` of a fitted model, from the covariance gpytorch's exact prediction builds."""
    train_X, L, alpha = _cholesky(model)
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
    root = torch.linalg.solve_triangular(L, eye, upper=False)  # L^-1
    return _TrainingCache(model.covar_module, train_X, alpha, root, lower_triangular=True)


@torch.no_grad()
def _love_cache(model: SingleTaskGP, rank: int) -> _TrainingCache:
    """``alpha`` (exact) and gpytorch's LOVE root of ``(K + S)^-1`` of a fitted model."""
    train_X, _, alpha = _cholesky(model)
    # gpytorch's prediction strategy builds the Lanczos cache on a fast_pred_var call. BoTorch turns
    # fast_computations.covar_root_decomposition off at import and gpytorch factorises exactly up to
    # max_cholesky_size points: both are overridden so that LOVE really uses Lanczos.
    with (
        gpytorch.settings.fast_pred_var(),
        gpytorch.settings.max_cholesky_size(0),
        gpytorch.settings.fast_computations(covar_root_decomposition=True),
        gpytorch.settings.max_root_decomposition_size(rank),
        gpytorch.settings.skip_posterior_variances(False),
    ):
        # A fresh cache under these settings, that later exact posteriors must not reuse. gpytorch does
        # not declare ExactGP.prediction_strategy, so torch's Module types it as Tensor | Module.
        model.prediction_strategy = None  # type: ignore[assignment]
        try:
            model(train_X[..., :1, :])
            strategy = cast(DefaultPredictionStrategy, model.prediction_strategy)
            covar_cache = strategy.covar_cache  # b x n x k, C C^T ≈ (K + S)^-1
        finally:
            model.prediction_strategy = None  # type: ignore[assignment]
    root = covar_cache.to_dense().transpose(-1, -2)
    return _TrainingCache(model.covar_module, train_X, alpha, root, lower_triangular=False)


def _cholesky(model: SingleTaskGP) -> tuple[Tensor, Tensor, Tensor]:
    """``b x n x d`` training inputs, ``b x n x n`` Cholesky factor ``L`` of ``K + S`` and ``b x n`` alpha."""
    train_X = model.train_inputs[0]
    train_y = model.train_targets  # b x n, outcome-transformed
    prior = model.forward(train_X)
    noisy = model.likelihood(prior, train_X)  # K + S, as gpytorch's exact prediction builds it
    L = psd_safe_cholesky(noisy.lazy_covariance_matrix.to_dense())
    # Two triangular solves, not torch.cholesky_solve: that takes ~0.2 s for one right-hand side at n = 1000.
    half = torch.linalg.solve_triangular(L, (train_y - prior.mean).unsqueeze(-1), upper=False)
    alpha = torch.linalg.solve_triangular(L.mT, half, upper=True).squeeze(-1)
    return train_X, L, alpha


def _untransform(model: SingleTaskGP, mean: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:
    """Undo the outcome transform on ``N x m`` means and variances: ``Standardize``, after
    :class:`~surrogates.log_outcomes.LogOutcomes` where some outcomes were logged."""
    transform = getattr(model, "outcome_transform", None)
    if transform is None:
        return mean, variance
    steps = list(transform.values()) if isinstance(transform, ChainedOutcomeTransform) else [transform]
    for step in reversed(steps):
        if isinstance(step, Standardize):
            means, stdvs = step.means.reshape(-1), step.stdvs.reshape(-1)  # m
            mean, variance = mean * stdvs + means, variance * stdvs.square()
        elif isinstance(step, LogOutcomes):
            mean, variance = lognormal_moments(mean, variance, step.logged)
        else:
            raise ValueError(
                f"unsupported outcome transform {type(step).__name__}; only Standardize and LogOutcomes"
            )
    return mean, variance
