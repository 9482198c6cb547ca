"""The surrogate contract: a BoTorch ``Model`` that can fit itself to a dataset.

Because a surrogate *is* a BoTorch model, every BoTorch acquisition function takes it
unchanged. The one thing it adds is :meth:`Surrogate.fit`. :meth:`Surrogate.predict` gives
marginal means and variances over large candidate sets in memory-bounded chunks, which is how
finite pools are scored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, cast

import torch
from botorch.models.model import Model
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.errors import AlloopError

#: Candidates per chunk when a pool is scored: 4096 x n doubles stays small.
DEFAULT_CHUNK_SIZE = 4096


class Moments(Protocol):
    """A posterior with marginal moments (what BoTorch's ``Posterior`` base does not promise)."""

    @property
    def mean(self) -> Tensor: ...

    @property
    def variance(self) -> Tensor: ...


class SurrogateError(AlloopError, RuntimeError):
    """A surrogate could not be fitted or asked (no data, not fitted yet...)."""


class UniversalModelUnavailable(SurrogateError):
    """A universal potential cannot be loaded here: its package is not installed, or its
    weights are neither present nor downloadable."""


class Surrogate(Model, ABC):
    """A BoTorch model that fits itself."""

    @abstractmethod
    def fit(self, dataset: SupervisedDataset) -> Surrogate:
        """Fit to ``dataset`` (``n x d`` inputs, ``n x m`` outcomes, optional ``n x m``
        observed noise variances) and return ``self``."""

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description of the fitted model, for the ledger."""
        return {"type": type(self).__name__}

    @torch.no_grad()
    def predict(self, X: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
        """Marginal posterior mean and variance at every row of ``X``.

        Args:
            X: ``N x d`` candidates.
            chunk_size: Rows per posterior call; memory grows with ``chunk_size x n``.

        Returns:
            ``N x m`` means and ``N x m`` variances (outcome units).
        """
        means, variances = [], []
        for start in range(0, X.shape[0], chunk_size):
            # botorch's Posterior base declares no moments; the posteriors of surrogates
            # (GPyTorchPosterior, EnsemblePosterior) all have them
            posterior = cast(Moments, self.posterior(X[start : start + chunk_size]))
            means.append(posterior.mean)
            variances.append(posterior.variance.clamp_min(0.0))
        return torch.cat(means), torch.cat(variances)
