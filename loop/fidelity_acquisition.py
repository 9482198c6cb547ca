"""Choosing (candidate, fidelity) pairs: what to measure next, and how.

Three policies over a finite pool, each given which pairs are still open (not in the ledger)
and what is pending:

* ``mf_mes`` — BoTorch's ``qMultiFidelityMaxValueEntropy``: the information a measurement at
  fidelity *s* gives about the maximum at the target fidelity, divided by its cost
  (``InverseCostWeightedUtility`` over an ``AffineFidelityCostModel``, cost = target cost x
  fidelity input), over every open pair (``optimize_acqf_discrete``, sequential greedy;
  pending evaluations at every fidelity are its ``X_pending``);
* ``mf_ucb`` — cost-weighted UCB: the candidates with the highest UCB at the target fidelity
  (not yet measured there, nothing pending), each measured at the fidelity that most reduces
  the target's variance at it per unit cost (``cov(f_T, y_s)^2 / var(y_s) / cost_s``);
* ``mf_hull`` — ``mf_ucb`` for the convex hull of a structure pool: the candidates are those
  ``hull_thompson`` picks at the target fidelity (per pick one posterior draw, projected to the
  target fidelity, and the candidate deepest below the hull of the target's measurements),
  each measured at the fidelity that most reduces the target's variance per unit cost, as
  ``mf_ucb`` does;
* ``funnel`` — the fixed funnel: every candidate at the cheapest fidelity first, then the
  best of each fidelity promoted to the next one up (ranked by the value measured below, or,
  given a hull target, by its depth below the hull of the values measured below), whatever
  the model says.

Before the first fit, the model-based policies draw random candidates, cycling through the
fidelities so the model sees every one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from botorch.acquisition.cost_aware import InverseCostWeightedUtility
from botorch.acquisition.max_value_entropy_search import qMultiFidelityMaxValueEntropy
from botorch.acquisition.utils import project_to_target_fidelity
from botorch.models.cost import AffineFidelityCostModel
from botorch.optim import optimize_acqf_discrete
from torch import Tensor

from loop.acquisition import Acquisition, rows_of
from loop.fidelity import FIDELITY_KINDS, Fidelities
from loop.hull_acquisition import HullTarget
from surrogates.base import DEFAULT_CHUNK_SIZE, Surrogate
from surrogates.gp import GPSurrogate

#: Pool rows the max-value samples of ``mf_mes`` are drawn over (a random subset of a larger pool).
MES_CANDIDATE_SET = 1000


@dataclass(frozen=True)
class FidelityPick:
    """One chosen pair: the candidate's row in the choices, the fidelity, and its score."""

    row: int
    fidelity: str
    value: float


@dataclass(frozen=True)
class PairState:
    """What the ledger knows of every (candidate, fidelity) pair of the choices.

    Attributes:
        open: ``N x F`` bool, no evaluation of the pair yet (``F`` fidelities, cheapest first).
        pending: ``N x F`` bool, proposed or submitted.
        values: ``N x F`` measured objective values in their own sign (NaN where none).
    """

    open: Tensor
    pending: Tensor
    values: Tensor


class FidelityPolicy:
    """A configured policy (module docstring) that picks pairs.

    Args:
        kind: One of :data:`~loop.fidelity.FIDELITY_KINDS`.
        fidelities: The campaign's fidelities.
        weight: The objective's signed weight (``+1`` maximise, ``-1`` minimise).
        beta: ``mf_ucb``: mean + sqrt(beta) · std.
        chunk_size: Pairs scored at once.
        hull: The compositions in the design inputs and the distance to the hull aimed at:
            required by ``mf_hull`` (with a minimised objective, formation energy per atom);
            the funnel given one ranks by depth below the hull.
    """

    def __init__(
        self,
        kind: str,
        fidelities: Fidelities,
        weight: float = 1.0,
        beta: float = 1.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        hull: HullTarget | None = None,
    ) -> None:
        if kind not in FIDELITY_KINDS:
            raise ValueError(f"unknown fidelity policy {kind!r}; choose one of {list(FIDELITY_KINDS)}")
        self.kind, self.fidelities, self.hull = kind, fidelities, hull
        self.weight, self.beta, self.chunk_size = float(weight), float(beta), chunk_size
        self.ranking: Acquisition | None = None
        if kind == "mf_hull":
            # the checks of the single-fidelity hull_thompson: a hull target, one minimised objective
            self.ranking = Acquisition("hull_thompson", [self.weight], chunk_size=chunk_size, hull=hull)

    @property
    def needs_model(self) -> bool:
        return self.kind != "funnel"

    def augment(self, X: Tensor, fidelity: str) -> Tensor:
        """``N x d`` design inputs → ``N x (d + 1)`` model inputs at ``fidelity``."""
        column = torch.full((X.shape[0], 1), self.fidelities[fidelity].value, dtype=X.dtype)
        return torch.cat([X, column], dim=-1)

    def select(
        self,
        model: Surrogate | None,
        X: Tensor,
        state: PairState,
        q: int,
        X_pending: Tensor | None,
        seed: int,
    ) -> list[FidelityPick]:
        """Up to ``q`` distinct open pairs.

        Args:
            model: The fitted surrogate over ``d + 1`` inputs (``None`` before the first fit).
            X: ``N x d`` design inputs of the pool's candidates.
            state: What is known of each pair.
            q: Pairs wanted.
            X_pending: ``p x (d + 1)`` pending evaluations (inputs with their fidelity), or ``None``.
            seed: Seeds the random draws.
        """
        if self.kind == "funnel":
            return self._funnel(X, state, q)
        if model is None:
            return self._initial(state, q, seed)
        if self.kind == "mf_ucb":
            return self._ucb(model, X, state, q)
        if self.kind == "mf_hull":
            return self._hull_thompson(model, X, state, q, seed)
        return self._mes(model, X, state, q, X_pending, seed)

    # --- policies ---------------------------------------------------------------------------

    def _initial(self, state: PairState, q: int, seed: int) -> list[FidelityPick]:
        rng = np.random.default_rng(seed)
        free = torch.nonzero(state.open.all(dim=1)).reshape(-1).tolist()
        rows = rng.permutation(free)[:q].tolist()
        names = self.fidelities.names
        return [FidelityPick(int(r), names[i % len(names)], math.nan) for i, r in enumerate(rows)]

    def _funnel(self, X: Tensor, state: PairState, q: int) -> list[FidelityPick]:
        picks: list[FidelityPick] = []
        taken: set[int] = set()
        for level, name in enumerate(self.fidelities.names):
            eligible = state.open[:, level] & ~state.pending.any(dim=1)
            if level == 0:
                order = torch.nonzero(eligible).reshape(-1).tolist()
                scores = [math.nan] * len(order)
            else:
                below = state.values[:, level - 1]
                eligible &= ~torch.isnan(below)
                rows = torch.nonzero(eligible).reshape(-1)
                ranking = below if self.hull is None else self._depth_below_hull(X, below)
                ranked = torch.argsort(ranking[rows], descending=True, stable=True)
                order = rows[ranked].tolist()
                scores = ranking[rows][ranked].tolist()
            for row, score in zip(order, scores, strict=True):
                if len(picks) == q:
                    return picks
                if row not in taken:
                    taken.add(row)
                    picks.append(FidelityPick(row, name, float(score)))
        return picks

    def _depth_below_hull(self, X: Tensor, values: Tensor) -> Tensor:
        """``N``: how far each candidate's measured value (``N``, signed, NaN where none) lies
        below the hull of all of them (eV/atom; NaN where none)."""
        assert self.hull is not None
        measured = ~torch.isnan(values)
        energies = values / self.weight  # formation energies, eV/atom
        hull = self.hull.hull(X[measured], energies[measured])
        return hull(X.double()) - energies

    def _target_rows(self, state: PairState) -> Tensor:
        """Rows not yet measured at the target fidelity, with nothing pending."""
        target = self.fidelities.names.index(self.fidelities.target)
        return torch.nonzero(state.open[:, target] & ~state.pending.any(dim=1)).reshape(-1)

    def _best_fidelity(self, model: Surrogate, x: Tensor, state: PairState, row: int) -> str:
        """The open fidelity of ``row`` that most reduces the target's variance there per unit cost."""
        gains = {
            name: self._variance_reduction(model, x, name) / self.fidelities[name].cost
            for level, name in enumerate(self.fidelities.names)
            if bool(state.open[row, level])
        }
        return max(gains, key=lambda n: gains[n])

    @torch.no_grad()
    def _ucb(self, model: Surrogate, X: Tensor, state: PairState, q: int) -> list[FidelityPick]:
        rows = self._target_rows(state)
        if rows.numel() == 0:
            return []
        mean, variance = model.predict(self.augment(X[rows], self.fidelities.target), self.chunk_size)
        ucb = self.weight * mean[:, 0] + math.sqrt(self.beta) * abs(self.weight) * variance[:, 0].sqrt()
        picks = []
        for i in torch.argsort(ucb, descending=True)[:q].tolist():
            row = int(rows[i])
            picks.append(FidelityPick(row, self._best_fidelity(model, X[row], state, row), float(ucb[i])))
        return picks

    @torch.no_grad()
    def _hull_thompson(
        self, model: Surrogate, X: Tensor, state: PairState, q: int, seed: int
    ) -> list[FidelityPick]:
        assert self.ranking is not None
        rows = self._target_rows(state)
        if rows.numel() == 0:
            return []
        target = self.fidelities.target
        values = state.values[:, self.fidelities.names.index(target)]
        measured = ~torch.isnan(values)
        # The design inputs keep their columns ahead of the fidelity's, where the hull reads them.
        chosen = self.ranking.select_from_pool(
            model,
            self.augment(X[rows], target),
            q,
            self.augment(X[measured], target),
            (values[measured] / self.weight).unsqueeze(-1),
            None,
            seed,
        )
        picks = []
        for pick in chosen:
            assert pick.index is not None
            row = int(rows[pick.index])
            picks.append(FidelityPick(row, self._best_fidelity(model, X[row], state, row), pick.value))
        return picks

    def _variance_reduction(self, model: Surrogate, x: Tensor, fidelity: str) -> float:
        """How much measuring ``x`` (``d``) at ``fidelity`` shrinks the target's latent variance there."""
        pair = torch.cat([self.augment(x[None], fidelity), self.augment(x[None], self.fidelities.target)])
        posterior = model.posterior(pair[None], observation_noise=True)
        covariance = posterior.mvn.covariance_matrix[0]  # type: ignore[attr-defined]
        return float(covariance[0, 1].square() / covariance[0, 0].clamp_min(1e-12))

    def _mes(
        self, model: Surrogate, X: Tensor, state: PairState, q: int, X_pending: Tensor | None, seed: int
    ) -> list[FidelityPick]:
        names = self.fidelities.names
        pairs = torch.nonzero(state.open)  # (row, level) of every open pair
        if pairs.shape[0] == 0:
            return []
        values = torch.tensor([self.fidelities[n].value for n in names], dtype=X.dtype)
        choices = torch.cat([X[pairs[:, 0]], values[pairs[:, 1]].unsqueeze(-1)], dim=-1)
        d = X.shape[-1]
        generator = torch.Generator().manual_seed(seed)
        subset = torch.randperm(X.shape[0], generator=generator)[:MES_CANDIDATE_SET]
        top = self.fidelities[self.fidelities.target].cost
        torch.manual_seed(seed)
        acqf = qMultiFidelityMaxValueEntropy(
            model.fitted if isinstance(model, GPSurrogate) else model,  # fantasizes with X_pending
            candidate_set=self.augment(X[subset], self.fidelities.target),
            cost_aware_utility=InverseCostWeightedUtility(
                AffineFidelityCostModel(fidelity_weights={d: top}, fixed_cost=0.0)
            ),
            project=lambda Z: project_to_target_fidelity(Z, {d: 1.0}, d + 1),
            maximize=self.weight > 0,
            X_pending=X_pending,
        )
        chosen, scores = optimize_acqf_discrete(
            acqf, q=min(q, choices.shape[0]), choices=choices, max_batch_size=self.chunk_size, unique=True
        )
        picks = []
        for index, score in zip(rows_of(chosen, choices), scores.reshape(-1).tolist(), strict=True):
            row, level = pairs[index].tolist()
            picks.append(FidelityPick(int(row), names[level], float(score)))
        return picks
