"""Hull-aware acquisition: score candidates by their predicted height above the current hull.

What a structure search wants is every structure on, or within X meV/atom of, the convex hull
of formation energy, and that hull moves as results arrive. Each cycle the hull is rebuilt
from the evaluated structures (:func:`loop.stability.phase_diagram`) and kept as its facet
planes (:func:`loop.stability.hull_planes`), so ``E_hull(x)``, the hull's energy at a
candidate's composition, is one matrix product inside the acquisition function. With the
surrogate's Gaussian posterior ``N(μ, σ²)`` of formation energy per atom:

* ``hull_probability``: ``P(E ≤ E_hull + X) = Φ((E_hull + X - μ) / σ)``, the probability of
  landing within ``X`` (``within_mev``) of the current hull;
* ``hull_lcb``: ``E_hull - (μ - √β σ)``, minus the lower confidence bound of the height above
  the hull (an optimistic distance, largest for the most promising candidate);
* ``hull_thompson``: per pick, one posterior draw ``f`` of the whole pool and the row deepest
  below the hull in that draw, ``argmax E_hull - f`` (:class:`~loop.acquisition.Acquisition`
  draws the batch's functions together). Its cost grows linearly with the pool, where the
  Monte-Carlo batches below grow with the pool times the batch squared: it is the batch
  acquisition for screening pools of 10^4-10^5 structures.
* ``hull_membership``: the probability of being within ``X`` of the hull the pool will have,
  not of the current one, estimated from joint posterior draws of every unevaluated
  candidate: in each draw the hull is rebuilt from the results and the draw's energies
  (:func:`loop.stability.lower_hull_planes`, milliseconds), and a candidate counts where it
  lies within ``X`` of it (:func:`hull_membership`). The batch is the ``q`` most probable
  members. Against the current hull, every polymorph of an unexplored composition looks
  promising; against the drawn hull only those that could be the lowest there do, and a
  polymorph the model cannot tell from a measured hull structure counts as often as it ties.

Single picks use the closed forms; batches and pending candidates use their Monte-Carlo
versions (BoTorch's ``qProbabilityOfImprovement`` and ``qUpperConfidenceBound`` on the
per-sample margin ``E_hull + X - E``), so a batch is valued jointly with what is already
pending: candidates the model believes move together are not all picked at once. The hull
itself stays that of the evaluated structures until their results arrive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from botorch.acquisition import (
    AcquisitionFunction,
    qProbabilityOfImprovement,
    qUpperConfidenceBound,
)
from botorch.acquisition.analytic import AnalyticAcquisitionFunction
from botorch.acquisition.objective import MCAcquisitionObjective
from botorch.models.model import Model
from botorch.sampling import MCSampler
from botorch.utils.transforms import t_batch_mode_transform
from torch import Tensor
from torch.distributions import Normal

from loop.errors import CampaignError
from loop.stability import hull_energy, hull_planes, lower_hull_planes, phase_diagram
from surrogates.composition import fraction_names

HullKind = Literal["hull_probability", "hull_lcb"]
#: The hull-aware kinds with a closed form (and a Monte-Carlo batch version).
HULL_KINDS: tuple[HullKind, ...] = ("hull_probability", "hull_lcb")
HULL_THOMPSON = "hull_thompson"
HULL_MEMBERSHIP = "hull_membership"
#: Every kind that needs the candidates' compositions and a hull (a :class:`HullTarget`).
HULL_AWARE: tuple[str, ...] = (*HULL_KINDS, HULL_THOMPSON, HULL_MEMBERSHIP)
#: Temperature (eV/atom) of the sigmoid that smooths the Monte-Carlo "within X" indicator.
MC_TAU_EV = 1e-4
_FRACTION_TOL = 1e-6


class HullEnergy:
    """The current hull as a function of the model inputs.

    Args:
        planes: ``F x k`` facet planes (:func:`loop.stability.hull_planes`), eV/atom.
        columns: The ``k`` input columns holding the atomic fractions, in the planes' order.
    """

    def __init__(self, planes: Tensor, columns: Sequence[int]) -> None:
        self.planes = planes.double()
        self.columns = list(columns)

    def __call__(self, X: Tensor) -> Tensor:
        """``batch_shape x d`` inputs → ``batch_shape`` hull formation energies (eV/atom)."""
        fractions = X[..., self.columns]
        return (fractions @ self.planes.to(fractions).transpose(-1, -2)).amax(dim=-1)


@dataclass(frozen=True)
class HullTarget:
    """What a hull-aware acquisition needs to know of the model inputs and the goal.

    Args:
        elements: The chemical system.
        columns: Input columns holding each element's atomic fraction.
        within_mev: ``X``: the target distance above the hull (meV/atom).
    """

    elements: tuple[str, ...]
    columns: tuple[int, ...]
    within_mev: float = 0.0

    @classmethod
    def from_feature_names(
        cls, elements: Sequence[str], feature_names: Sequence[str], within_mev: float = 0.0
    ) -> HullTarget:
        """The target whose compositions are the ``x_<element>`` features.

        Raises:
            CampaignError: a feature ``x_<element>`` is missing.
        """
        names = fraction_names(elements)
        missing = [name for name in names if name not in feature_names]
        if missing:
            raise CampaignError(f"hull acquisition: the model inputs lack composition feature(s) {missing}")
        if within_mev < 0 or not math.isfinite(within_mev):
            raise CampaignError(f"hull acquisition: within_mev must be finite and >= 0, got {within_mev}")
        columns = tuple(list(feature_names).index(name) for name in names)
        return cls(tuple(elements), columns, float(within_mev))

    @property
    def within_ev(self) -> float:
        return self.within_mev / 1000.0

    def fractions(self, X: Tensor) -> Tensor:
        """``n x k`` atomic fractions of ``n x d`` inputs.

        Raises:
            CampaignError: the columns are not fractions (rows do not sum to 1).
        """
        fractions = X[..., list(self.columns)].double()
        if fractions.numel() and (
            (fractions < -_FRACTION_TOL).any() or ((fractions.sum(-1) - 1).abs() > _FRACTION_TOL).any()
        ):
            raise CampaignError(
                f"hull acquisition: input columns {list(self.columns)} are not atomic fractions of "
                f"{list(self.elements)}"
            )
        return fractions

    def hull(self, X_evaluated: Tensor | None, energies: Tensor | None) -> HullEnergy:
        """The hull of the evaluated structures.

        Args:
            X_evaluated: ``n x d`` inputs of the evaluated structures (``None``: none yet).
            energies: ``n`` their formation energies (eV/atom).
        """
        points: list[tuple[str, float]] = []
        if X_evaluated is not None and energies is not None:
            for row, energy in zip(self.fractions(X_evaluated).tolist(), energies.tolist(), strict=True):
                amounts = {el: x for el, x in zip(self.elements, row, strict=True) if x > _FRACTION_TOL}
                points.append((" ".join(f"{el}{x:.12g}" for el, x in amounts.items()), float(energy)))
        diagram = phase_diagram(points, self.elements)
        planes = torch.as_tensor(hull_planes(diagram, self.elements), dtype=torch.double)
        return HullEnergy(planes, self.columns)


def hull_membership(
    draws: Tensor,
    fractions: Tensor,
    measured_fractions: Tensor,
    measured_energies: Tensor,
    within_ev: float,
) -> tuple[Tensor, Tensor]:
    """How often each unevaluated candidate lies within ``X`` of the hull of a posterior draw.

    Args:
        draws: ``S x N`` joint draws of the candidates' formation energies (eV/atom).
        fractions: ``N x k`` their atomic fractions.
        measured_fractions: ``n x k`` atomic fractions of the evaluated structures.
        measured_energies: ``n`` their formation energies (eV/atom).
        within_ev: ``X`` (eV/atom).

    Returns:
        ``N`` fractions of the draws in which the candidate is within ``X`` of that draw's hull
        (of the results and the draw), and ``N`` its mean height above that hull (eV/atom).
    """
    every = torch.cat([measured_fractions.double(), fractions.double()]).numpy()
    compositions, index = np.unique(every.round(9), axis=0, return_inverse=True)
    index = index.reshape(-1)
    measured = np.full(len(compositions), np.inf)
    np.minimum.at(measured, index[: len(measured_energies)], measured_energies.double().numpy())
    mine, points = index[len(measured_energies) :], fractions.double().numpy()
    within, height = np.zeros(points.shape[0]), np.zeros(points.shape[0])
    for draw in draws.double().numpy():
        lowest = measured.copy()
        np.minimum.at(lowest, mine, draw)
        above = draw - hull_energy(lower_hull_planes(compositions, lowest), points)
        within += above <= within_ev
        height += above
    return torch.from_numpy(within / len(draws)), torch.from_numpy(height / len(draws))


# --- closed forms ---------------------------------------------------------------------------


def near_hull_probability(mean: Tensor, std: Tensor, hull_energy: Tensor, within_ev: float) -> Tensor:
    """``Φ((E_hull + X - μ) / σ)``: the probability of landing within ``X`` eV/atom of the hull.

    All tensors share one shape; ``std`` is clamped away from 0.
    """
    normal = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    return normal.cdf((hull_energy + within_ev - mean) / std.clamp_min(1e-12))


def hull_confidence_bound(mean: Tensor, std: Tensor, hull_energy: Tensor, beta: float) -> Tensor:
    """``E_hull - (μ - √β σ)``: minus the lower confidence bound of the height above the hull."""
    return hull_energy - (mean - math.sqrt(beta) * std)


def hull_scores(
    kind: HullKind, mean: Tensor, std: Tensor, hull_energy: Tensor, within_ev: float, beta: float
) -> Tensor:
    """The closed form of ``kind`` (larger is better)."""
    if kind == "hull_probability":
        return near_hull_probability(mean, std, hull_energy, within_ev)
    return hull_confidence_bound(mean, std, hull_energy, beta)


# --- BoTorch acquisition functions ----------------------------------------------------------


class AnalyticHullAcquisition(AnalyticAcquisitionFunction):
    """The closed form of a hull-aware acquisition, for ``q = 1`` without pending points.

    Args:
        model: A single-output model of formation energy per atom (eV/atom).
        kind: ``hull_probability`` or ``hull_lcb``.
        hull: The current hull.
        within_ev: ``X`` of ``hull_probability`` (eV/atom).
        beta: ``β`` of ``hull_lcb``.
    """

    def __init__(
        self, model: Model, kind: HullKind, hull: HullEnergy, within_ev: float = 0.0, beta: float = 1.0
    ) -> None:
        super().__init__(model=model)
        self.kind, self.hull, self.within_ev, self.beta = kind, hull, within_ev, beta

    # botorch types the decorated method as taking the base class, which no subclass's method is.
    @t_batch_mode_transform(expected_q=1)  # type: ignore[arg-type]
    def forward(self, X: Tensor) -> Tensor:
        """``batch_shape x 1 x d`` candidates → ``batch_shape`` values."""
        mean, sigma = self._mean_and_sigma(X)
        assert sigma is not None
        return hull_scores(
            self.kind, mean[..., 0], sigma[..., 0], self.hull(X[..., 0, :]), self.within_ev, self.beta
        )


class HullMargin(MCAcquisitionObjective):
    """Per posterior draw, how far below ``E_hull + X`` a candidate lands (eV/atom).

    Positive where the draw is within ``X`` of the hull; its expectation is ``E_hull + X - μ``.
    """

    def __init__(self, hull: HullEnergy, within_ev: float = 0.0) -> None:
        super().__init__()
        self.hull, self.within_ev = hull, within_ev

    def forward(self, samples: Tensor, X: Tensor | None = None) -> Tensor:
        """``sample_shape x batch_shape x q x 1`` draws at ``batch_shape x q x d`` inputs →
        ``sample_shape x batch_shape x q`` margins."""
        if X is None:
            raise CampaignError("the hull margin needs the candidates' inputs")
        return self.hull(X) + self.within_ev - samples[..., 0]


def hull_acquisition(
    kind: HullKind,
    model: Model,
    hull: HullEnergy,
    *,
    within_ev: float,
    beta: float,
    sampler: MCSampler,
    X_pending: Tensor | None,
    q: int,
) -> AcquisitionFunction:
    """The BoTorch acquisition function of ``kind``: analytic for one pick with nothing
    pending, else Monte-Carlo over the joint posterior of the batch and the pending points."""
    if q == 1 and X_pending is None:
        return AnalyticHullAcquisition(model, kind, hull, within_ev, beta)
    if kind == "hull_probability":
        return qProbabilityOfImprovement(
            model,
            best_f=0.0,
            sampler=sampler,
            objective=HullMargin(hull, within_ev),
            X_pending=X_pending,
            tau=MC_TAU_EV,
        )
    return qUpperConfidenceBound(
        model, beta=beta, sampler=sampler, objective=HullMargin(hull), X_pending=X_pending
    )
