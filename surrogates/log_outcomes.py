"""Model some outcomes on a log scale: a positive quantity that spans orders of magnitude.

A film's conductivity, a reaction rate or a lifetime varies over decades, and most of a
search space sits near zero while a narrow region is large. A GP fitted to such values sees a
flat floor and one spike; fitted to their logarithm it sees a smooth hill (a Gaussian peak is a
quadratic), which a few results already describe. As Ax's ``LogY``, the GP models ``log y``
and its posterior is log-normal in ``y``: samples are exponentiated, and the mean and variance
are the log-normal's.

BoTorch's :class:`~botorch.models.transforms.outcome.Log` logs a subset of outputs but cannot
untransform a posterior over that subset; :class:`LogOutcomes` can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from botorch.models.transforms.outcome import ChainedOutcomeTransform, Log, OutcomeTransform, Standardize
from botorch.posteriors import Posterior
from botorch.posteriors.transformed import TransformedPosterior
from torch import Tensor


class LogOutcomes(Log):
    """The logarithm of outcomes ``outputs`` (indices into the ``m`` outcomes); the others
    pass unchanged.

    Args:
        outputs: Which outcomes are logged; at least one.
    """

    def __init__(self, outputs: Sequence[int]) -> None:
        if not outputs:
            raise ValueError("LogOutcomes needs at least one outcome index")
        super().__init__(outputs=sorted(set(outputs)))

    @property
    def logged(self) -> list[int]:
        """The logged outcomes' indices, sorted."""
        assert self._outputs is not None
        return list(self._outputs)

    def untransform_posterior(self, posterior: Posterior, X: Tensor | None = None) -> TransformedPosterior:
        """The posterior in outcome units: log-normal in the logged outcomes, unchanged in
        the others (``... x n x m`` samples, means and variances)."""

        def samples(s: Tensor) -> Tensor:
            return torch.where(_mask(s, self.logged), s.exp(), s)

        return TransformedPosterior(
            posterior=posterior,
            sample_transform=samples,
            mean_transform=lambda mu, var: lognormal_moments(mu, var, self.logged)[0],
            variance_transform=lambda mu, var: lognormal_moments(mu, var, self.logged)[1],
        )

    def subset_output(self, idcs: list[int]) -> OutcomeTransform:
        """The transform of outcomes ``idcs`` alone, renumbered; the identity where none of them
        is logged.

        Raises:
            ValueError: ``idcs`` holds a negative or repeated index.
        """
        if min(idcs, default=0) < 0 or len(set(idcs)) != len(idcs):
            raise ValueError(f"subset_output needs distinct indices >= 0, got {idcs}")
        kept = [idcs.index(i) for i in self.logged if i in idcs]
        return LogOutcomes(kept) if kept else ChainedOutcomeTransform()


def outcome_transform(m: int, log_outcomes: Sequence[int]) -> OutcomeTransform:
    """``Standardize`` over ``m`` outcomes, after the log of ``log_outcomes`` where any."""
    if not log_outcomes:
        return Standardize(m)
    return ChainedOutcomeTransform(log=LogOutcomes(log_outcomes), standardize=Standardize(m))


def lognormal_moments(mean: Tensor, variance: Tensor, logged: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``... x m`` means and variances in outcome units from those of the modelled scale,
    where outcomes ``logged`` were modelled as logarithms (the log-normal's moments)."""
    mask = _mask(mean, logged)
    return (
        torch.where(mask, (mean + variance / 2).exp(), mean),
        torch.where(mask, variance.expm1() * (2 * mean + variance).exp(), variance),
    )


def _mask(like: Tensor, logged: Sequence[int]) -> Tensor:
    """A boolean per outcome (``like``'s last dimension), true at ``logged``."""
    mask = torch.zeros(like.shape[-1], dtype=torch.bool, device=like.device)
    mask[list(logged)] = True
    return mask
