"""Acquisition: which candidates to measure next.

Every strategy is BoTorch's own: analytic UCB/LCB and posterior standard deviation,
``qUpperConfidenceBound``, ``qLogExpectedImprovement``, ``qLogNoisyExpectedImprovement``,
``qPosteriorStandardDeviation``; Thompson sampling draws whole posterior functions (pathwise,
when the surrogate can) and takes their arg-max; ``random`` picks uniformly. Structure pools
may rank by the predicted height above the current convex hull instead
(``hull_probability``, ``hull_lcb``, ``hull_thompson``, ``hull_membership``:
:mod:`loop.hull_acquisition`).

Finite pools are scored in memory-bounded chunks: single picks of UCB/LCB and pure
exploration straight from the surrogate's chunked marginal predictions; batches and
Monte-Carlo strategies through ``optimize_acqf_discrete`` (sequential greedy, pending
candidates passed as ``X_pending``). Continuous and mixed spaces go through ``optimize_acqf``
under the space's linear constraints, one categorical combination and one batch member at a
time (:mod:`loop.space_optimization`).

Several objectives are scalarised with signed weights (``+w`` to maximise, ``-w`` to
minimise), so every strategy maximises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from botorch.acquisition import (
    AcquisitionFunction,
    PosteriorStandardDeviation,
    UpperConfidenceBound,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
    qPosteriorStandardDeviation,
    qUpperConfidenceBound,
)
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.models.model import Model
from botorch.optim import optimize_acqf_discrete
from botorch.posteriors.ensemble import EnsemblePosterior
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor

from loop.errors import CampaignError
from loop.hull_acquisition import (
    HULL_AWARE,
    HULL_KINDS,
    HULL_MEMBERSHIP,
    HULL_THOMPSON,
    HullEnergy,
    HullTarget,
    hull_acquisition,
    hull_membership,
    hull_scores,
)
from loop.space import SearchSpace
from loop.space_optimization import optimize_acqf_in_space
from surrogates.base import DEFAULT_CHUNK_SIZE, Surrogate
from surrogates.gp import SamplesPaths

Kind = Literal[
    "ucb",
    "qlogei",
    "qlognei",
    "max_variance",
    "thompson",
    "random",
    "hull_probability",
    "hull_lcb",
    "hull_thompson",
    "hull_membership",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
_THOMPSON_KINDS = ("thompson", HULL_THOMPSON)
#: Posterior functions drawn together in a Thompson batch (memory: this many x the pool).
_THOMPSON_GROUP = 64
_MARGINAL_KINDS = ("ucb", "max_variance", *HULL_KINDS)
_THOMPSON_SPACE_SAMPLES = 4096


@dataclass(frozen=True)
class Pick:
    """One chosen point: its row in the choices (pools) or its encoding, and its score."""

    X: Tensor
    """``d``-dim encoded candidate."""
    value: float
    """The acquisition value that chose it (NaN for random picks)."""
    index: int | None = None
    """Row in the pool's choices, for pools."""


class Acquisition:
    """A configured acquisition strategy.

    Args:
        kind: One of :data:`KINDS`.
        weights: ``m`` signed objective weights (``+w`` maximise, ``-w`` minimise).
        beta: UCB/LCB exploration: mean ± sqrt(beta) · std.
        mc_samples: Quasi-MC samples of the Monte-Carlo strategies; posterior draws of
            ``hull_membership``.
        chunk_size: Pool candidates scored at once.
        num_restarts: Restarts of the continuous optimiser.
        raw_samples: Raw samples that seed the continuous optimiser.
        max_iterations: Iterations of the continuous optimiser per start.
        hull: Compositions and goal of the hull-aware kinds (required by them, which also
            need one minimised objective: formation energy per atom).
    """

    def __init__(
        self,
        kind: Kind,
        weights: Sequence[float],
        beta: float = 1.0,
        mc_samples: int = 128,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        num_restarts: int = 10,
        raw_samples: int = 256,
        max_iterations: int = 200,
        hull: HullTarget | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown acquisition {kind!r}; choose one of {list(KINDS)}")
        if not weights or any(w == 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"objective weights must be finite and non-zero, got {list(weights)}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if kind in HULL_AWARE and (hull is None or len(weights) != 1 or weights[0] > 0):
            raise ValueError(
                f"acquisition {kind!r} needs the candidates' compositions and one minimised "
                "objective (formation energy per atom)"
            )
        self.hull = hull
        self.kind, self.beta = kind, float(beta)
        self.weights = torch.tensor(list(weights), dtype=torch.double)
        self.mc_samples, self.chunk_size = mc_samples, chunk_size
        self.num_restarts, self.raw_samples = num_restarts, raw_samples
        self.max_iterations = max_iterations

    @property
    def posterior_transform(self) -> ScalarizedPosteriorTransform | None:
        if self.weights.numel() == 1 and self.weights.item() == 1.0:
            return None
        return ScalarizedPosteriorTransform(self.weights)

    def scalarize(self, Y: Tensor) -> Tensor:
        """``n x m`` outcomes → ``n`` scalar objective values (larger is better)."""
        return Y.double() @ self.weights

    def learn_feasibility(self, X: Tensor, success: Tensor) -> None:
        """Learn P(success) from ``n x d`` evaluated inputs and ``n`` outcomes (1 = success,
        0 = failed for good); strategies that weight by it override this."""

    # --- building BoTorch acquisition functions --------------------------------------------

    def build(
        self, model: Model, X_baseline: Tensor, Y_baseline: Tensor, X_pending: Tensor | None, q: int
    ) -> AcquisitionFunction:
        """The BoTorch acquisition function of this strategy.

        Args:
            model: The fitted surrogate.
            X_baseline: ``n x d`` measured candidates.
            Y_baseline: ``n x m`` their outcomes.
            X_pending: ``p x d`` candidates submitted but not yet returned, or ``None``.
            q: The batch size to be chosen.
        """
        transform = self.posterior_transform
        analytic = q == 1 and X_pending is None
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]))
        if self.kind in HULL_KINDS:
            assert self.hull is not None
            return hull_acquisition(
                self.kind,
                model,
                self.current_hull(X_baseline, Y_baseline),
                within_ev=self.hull.within_ev,
                beta=self.beta,
                sampler=sampler,
                X_pending=X_pending,
                q=q,
            )
        if self.kind == "ucb":
            if analytic:
                return UpperConfidenceBound(model, beta=self.beta, posterior_transform=transform)
            return qUpperConfidenceBound(
                model, beta=self.beta, sampler=sampler, posterior_transform=transform, X_pending=X_pending
            )
        if self.kind == "max_variance":
            if analytic:
                return PosteriorStandardDeviation(model, posterior_transform=transform)
            return qPosteriorStandardDeviation(
                model, sampler=sampler, posterior_transform=transform, X_pending=X_pending
            )
        if self.kind == "qlogei":
            return qLogExpectedImprovement(
                model,
                best_f=self.scalarize(Y_baseline).max(),
                sampler=sampler,
                posterior_transform=transform,
                X_pending=X_pending,
            )
        if self.kind == "qlognei":
            return qLogNoisyExpectedImprovement(
                model,
                X_baseline=X_baseline,
                sampler=sampler,
                posterior_transform=transform,
                X_pending=X_pending,
                cache_root=False,
            )
        raise CampaignError(f"acquisition {self.kind!r} is not a BoTorch acquisition function")

    def current_hull(self, X_baseline: Tensor | None, Y_baseline: Tensor | None) -> HullEnergy:
        """The hull of the measured candidates (``n x d`` inputs, ``n x 1`` formation energies)."""
        assert self.hull is not None, "only the hull-aware kinds have a hull"
        return self.hull.hull(X_baseline, None if Y_baseline is None else Y_baseline[:, 0])

    # --- pools ------------------------------------------------------------------------------

    @torch.no_grad()
    def select_from_pool(
        self,
        model: Surrogate,
        choices: Tensor,
        q: int,
        X_baseline: Tensor,
        Y_baseline: Tensor,
        X_pending: Tensor | None,
        seed: int,
    ) -> list[Pick]:
        """Choose ``min(q, N)`` distinct rows of ``choices`` (``N x d``, unmeasured, not pending)."""
        q = min(q, choices.shape[0])
        if q == 0:
            return []
        if self.kind == "random":
            drawn = np.random.default_rng(seed).choice(choices.shape[0], size=q, replace=False)
            return [Pick(choices[i], math.nan, int(i)) for i in drawn]
        if self.hull is not None:
            self.hull.fractions(choices)  # refuses inputs that carry no compositions
        if self.kind in _THOMPSON_KINDS:
            return self._thompson(model, choices, q, seed, self._hull_margin(choices, X_baseline, Y_baseline))
        if self.kind == HULL_MEMBERSHIP:
            return self._hull_membership(model, choices, q, X_baseline, Y_baseline, X_pending, seed)
        if q == 1 and X_pending is None and self.kind in _MARGINAL_KINDS:
            scores = self._marginal_scores(model, choices, X_baseline, Y_baseline)
            best = int(torch.argmax(scores))
            return [Pick(choices[best], float(scores[best]), best)]
        torch.manual_seed(seed)
        acqf = self.build(model, X_baseline, Y_baseline, X_pending, q)
        X, values = optimize_acqf_discrete(
            acqf, q=q, choices=choices, max_batch_size=self.chunk_size, unique=True
        )
        rows = rows_of(X, choices)
        return [Pick(choices[r], float(v), r) for r, v in zip(rows, values.reshape(-1).tolist(), strict=True)]

    def _marginal_scores(
        self, model: Surrogate, choices: Tensor, X_baseline: Tensor | None, Y_baseline: Tensor | None
    ) -> Tensor:
        """UCB (or std, or a hull-aware closed form) of the scalarised objective from chunked
        marginal predictions."""
        mean, variance = model.predict(choices, chunk_size=self.chunk_size)
        if self.kind in HULL_KINDS:
            assert self.hull is not None
            hull = self.current_hull(X_baseline, Y_baseline)
            std = variance[:, 0].clamp_min(0).sqrt()
            return hull_scores(
                self.kind,
                mean[:, 0],
                std,
                hull(choices),
                self.hull.within_ev,
                self.beta,
            )
        scalar_mean = mean @ self.weights
        scalar_std = (variance @ self.weights.square()).clamp_min(0).sqrt()
        if self.kind == "max_variance":
            return scalar_std
        return scalar_mean + math.sqrt(self.beta) * scalar_std

    def _hull_margin(
        self, choices: Tensor, X_baseline: Tensor | None, Y_baseline: Tensor | None
    ) -> Tensor | None:
        """``hull_thompson``: what a draw of ``-E`` is offset by, ``E_hull + X`` (``N``); else ``None``."""
        if self.kind != HULL_THOMPSON:
            return None
        assert self.hull is not None
        return self.current_hull(X_baseline, Y_baseline)(choices.double()) + self.hull.within_ev

    def _thompson(
        self, model: Surrogate, choices: Tensor, q: int, seed: int, offset: Tensor | None = None
    ) -> list[Pick]:
        """Batch Thompson sampling: one posterior draw per pick, each taking its best row not
        taken yet (of the draw plus ``offset``, ``N``, where given). With path-sampling models
        the draws are made together, up to :data:`_THOMPSON_GROUP` at once, so the
        training-set solve and the pool's cross-covariance are shared by the group."""
        torch.manual_seed(seed)
        picks: list[Pick] = []
        taken: list[int] = []
        draws: Tensor | None = None
        for i in range(q):
            if i % _THOMPSON_GROUP == 0:  # at most a group's draws of the pool in memory
                draws = self._sample_functions(model, choices, min(_THOMPSON_GROUP, q - i))
            if draws is not None:
                values = draws[i % _THOMPSON_GROUP]
            else:
                values = self._sample_function(model, choices)
            if offset is not None:
                values = values + offset.to(values)
            values[taken] = -math.inf
            best = int(torch.argmax(values))
            taken.append(best)
            picks.append(Pick(choices[best], float(values[best]), best))
        return picks

    def _hull_membership(
        self,
        model: Surrogate,
        choices: Tensor,
        q: int,
        X_baseline: Tensor,
        Y_baseline: Tensor,
        X_pending: Tensor | None,
        seed: int,
    ) -> list[Pick]:
        """The ``q`` candidates most often within ``X`` of a posterior draw's hull (ties: the
        lowest mean height above it). Pending candidates are drawn with the pool, so they shape
        each draw's hull, but are not picked again."""
        assert self.hull is not None
        torch.manual_seed(seed)
        X = choices if X_pending is None else torch.cat([choices, X_pending.to(choices)])
        energies = self._joint_draws(model, X) / self.weights[0]  # the draws are of -w E
        probability, height = hull_membership(
            energies,
            self.hull.fractions(X),
            self.hull.fractions(X_baseline),
            Y_baseline[:, 0],
            self.hull.within_ev,
        )
        probability, height = probability[: choices.shape[0]], height[: choices.shape[0]]
        ranked = np.lexsort((height.numpy(), -probability.numpy()))[:q]
        return [Pick(choices[r], float(probability[r]), int(r)) for r in ranked]

    def _joint_draws(self, model: Surrogate, X: Tensor) -> Tensor:
        """Joint posterior draws of the scalarised objective at every row of ``X`` (``S x N``):
        an equally weighted ensemble's members, else ``mc_samples`` draws (paths where the
        model has them, up to :data:`_THOMPSON_GROUP` at once)."""
        members = None if isinstance(model, SamplesPaths) else self._members(model, X)
        if members is not None:
            return members
        groups = []
        for start in range(0, self.mc_samples, _THOMPSON_GROUP):
            num = min(_THOMPSON_GROUP, self.mc_samples - start)
            draws = self._sample_functions(model, X, num)
            if draws is None:
                draws = torch.stack([self._sample_function(model, X) for _ in range(num)])
            groups.append(draws)
        return torch.cat(groups)

    def _members(self, model: Surrogate, X: Tensor) -> Tensor | None:
        """An equally weighted ensemble's members at every row of ``X`` (``s x N``, scalarised):
        its joint posterior exactly, in one call; ``None`` for other models."""
        posterior = model.posterior(X, posterior_transform=self.posterior_transform)
        if not isinstance(posterior, EnsemblePosterior):
            return None
        weights = posterior.mixture_weights
        if not torch.allclose(weights, weights.reshape(-1)[0].expand_as(weights)):
            return None
        return posterior.values.reshape(-1, X.shape[0])

    def _sample_functions(self, model: Surrogate, X: Tensor, num: int) -> Tensor | None:
        """``num`` joint posterior draws of the scalarised objective at every row of ``X``
        (``num x N``), or ``None`` for models that cannot sample paths."""
        if not isinstance(model, SamplesPaths):
            return None
        paths = model.sample_paths(num)
        parts = [paths(X[s : s + self.chunk_size]) for s in range(0, X.shape[0], self.chunk_size)]
        return torch.cat(parts, dim=-2) @ self.weights

    def _sample_function(self, model: Surrogate, X: Tensor) -> Tensor:
        """One joint posterior draw over all of ``X`` (``N``), for models without paths (fine
        for pools of a few thousand)."""
        return model.posterior(X, posterior_transform=self.posterior_transform).rsample().reshape(-1)

    # --- continuous and mixed spaces --------------------------------------------------------

    def select_in_space(
        self,
        model: Surrogate,
        space: SearchSpace,
        q: int,
        X_baseline: Tensor,
        Y_baseline: Tensor,
        X_pending: Tensor | None,
        seed: int,
    ) -> list[Pick]:
        """Choose ``q`` points of ``space`` by optimising the acquisition under its constraints."""
        if self.kind == "random" or self.kind in _THOMPSON_KINDS:
            pool = space.encode(space.sample(q if self.kind == "random" else _THOMPSON_SPACE_SAMPLES, seed))
            if self.kind == "random":
                return [Pick(x, math.nan) for x in pool]
            offset = self._hull_margin(pool, X_baseline, Y_baseline)
            return [Pick(p.X, p.value) for p in self._thompson(model, pool, q, seed, offset)]
        torch.manual_seed(seed)
        acqf = self.build(model, X_baseline, Y_baseline, X_pending, q)
        X, values = optimize_acqf_in_space(
            acqf, space, q, X_pending, seed, self.raw_samples, self.num_restarts, self.max_iterations
        )
        return [Pick(x, v) for x, v in zip(X, values.tolist(), strict=True)]

    # --- stopping ---------------------------------------------------------------------------

    @torch.no_grad()
    def max_expected_improvement(
        self, model: Surrogate, Y_baseline: Tensor, choices: Tensor | None, space: SearchSpace | None
    ) -> float:
        """The largest expected improvement over the best measured value (objective units)."""
        ei = LogExpectedImprovement(
            model, best_f=self.scalarize(Y_baseline).max(), posterior_transform=self.posterior_transform
        )
        if choices is None:
            assert space is not None, "either choices or a space is needed"
            choices = space.encode(space.sample(_THOMPSON_SPACE_SAMPLES, seed=0))
        best = max(
            float(ei(choices[s : s + self.chunk_size].unsqueeze(-2)).max())
            for s in range(0, choices.shape[0], self.chunk_size)
        )
        return math.exp(best)


def rows_of(X: Tensor, choices: Tensor) -> list[int]:
    """Distinct row indices of the points ``X`` (``q x d``) in ``choices`` (``N x d``).

    Two candidates may share a feature row (two structures with the same descriptors), so each
    point takes the nearest row not taken yet.
    """
    distances = torch.cdist(X.double(), choices.double())
    rows: list[int] = []
    for row_distances in distances:
        if rows:
            row_distances = row_distances.clone()
            row_distances[rows] = math.inf
        rows.append(int(row_distances.argmin()))
    return rows
