"""Acquisition over several modelled outcomes: Pareto search, outcome constraints, feasibility.

The surrogate models ``m`` objectives first, then any outcome that only a constraint reads.
Without objective weights the search is for the Pareto front: qLogNEHVI (BoTorch's noisy,
log-smoothed expected hypervolume improvement, pending points as ``X_pending``) or qLogNParEGO
(random Chebyshev scalarisations). With weights it is today's scalarisation. Outcome
constraints (``roughness_nm <= 5``) become BoTorch constraint callables, which weight each
sample by its smoothed probability of feasibility; a learned feasibility classifier weights
the result again (:mod:`loop.feasibility`).

A Pareto search may be kept inside a trust region, as MORBO does (Daulton et al., UAI 2022):
a box around the measured point that adds the most hypervolume. From a few points in several
inputs, the GP is most uncertain at the box's corners, and a global search spends its picks
there (on DTLZ2 in six inputs every pick of 12 landed on the boundary and added nothing, while
random search added hypervolume); a local search improves the front it has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from botorch.acquisition import AcquisitionFunction, qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.acquisition.multi_objective.parego import qLogNParEGO
from botorch.acquisition.objective import LinearMCObjective, ScalarizedPosteriorTransform
from botorch.models.model import Model
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor

from loop.acquisition import Acquisition, Pick
from loop.errors import CampaignError
from loop.feasibility import FeasibilityWeighted
from loop.pareto import hypervolume, hypervolume_contributions, pareto_mask, reference_point
from loop.space import Categorical, Integer, Parameter, SearchSpace
from surrogates.base import Surrogate
from surrogates.feasibility import FeasibilityClassifier

PARETO_KINDS = ("qlognehvi", "qparego")
#: Kinds that can take outcome constraints and a feasibility weight (log-valued, Monte Carlo).
MODELLED_KINDS = ("qlogei", "qlognei", *PARETO_KINDS)


@dataclass(frozen=True)
class OutcomeConstraint:
    """``outcome op value`` on the modelled outcome in column ``column``."""

    name: str
    op: Literal["<=", ">="]
    value: float
    column: int

    def slack(self, Y: Tensor) -> Tensor:
        """BoTorch's convention: ``... x m`` samples → ``...``, feasible where ``<= 0``."""
        y = Y[..., self.column]
        return y - self.value if self.op == "<=" else self.value - y

    def met(self, y: float) -> bool:
        return y <= self.value if self.op == "<=" else y >= self.value

    def probability(self, mean: float, std: float) -> float:
        """P(met) under a normal marginal of the outcome."""
        if std <= 0:
            return float(self.met(mean))
        z = (self.value - mean) / std
        p_below = 0.5 * math.erfc(-z / math.sqrt(2))
        return p_below if self.op == "<=" else 1.0 - p_below


class ModelledAcquisition(Acquisition):
    """An acquisition over ``num_outputs`` modelled outcomes.

    Args:
        kind: One of :data:`MODELLED_KINDS` (or any scalar kind without constraints).
        signs: ``m`` objective signs (``+1`` maximise, ``-1`` minimise).
        weights: ``m`` signed weights (scalarisation), or ``None`` for a Pareto search.
        num_outputs: Modelled outcomes: the ``m`` objectives, then constraint-only ones.
        constraints: Outcome constraints.
        reference_point: Pareto: ``m`` values in each objective's own sign and units
            (default: inferred from the front of the data).
        feasibility_floor: Learn feasibility from failures, with this floor; ``None``: don't.
        input_bounds: ``2 x d`` bounds that scale the classifier's inputs.
        trust_region: Pareto, in a space without linear constraints: search only a box of
            this side (a fraction of each numeric parameter's range, in ``(0, 1]``; TuRBO's
            0.8 is a fair start) centred on the measured point that adds the most hypervolume,
            once a measured point is above the reference point; ``None``: the whole space.
        **options: As :class:`~loop.acquisition.Acquisition`.
    """

    def __init__(
        self,
        kind: str,
        signs: Sequence[float],
        weights: Sequence[float] | None,
        num_outputs: int,
        constraints: Sequence[OutcomeConstraint] = (),
        reference_point: Sequence[float] | None = None,
        feasibility_floor: float | None = None,
        input_bounds: Tensor | None = None,
        trust_region: float | None = None,
        **options: Any,
    ) -> None:
        pareto = kind in PARETO_KINDS
        super().__init__(
            "qlognei" if pareto else kind,  # type: ignore[arg-type]
            list(signs) if weights is None else weights,
            **options,
        )
        if (constraints or feasibility_floor is not None) and kind not in MODELLED_KINDS:
            raise CampaignError(f"acquisition {kind!r} cannot take outcome constraints or feasibility")
        if trust_region is not None and (not pareto or not 0 < trust_region <= 1):
            raise CampaignError(
                f"a trust region is for a Pareto search, with a side in (0, 1], got {trust_region}"
            )
        self.trust_region = trust_region
        self.kind = kind  # type: ignore[assignment]
        self.signs = torch.tensor(list(signs), dtype=torch.double)
        self.num_outputs = num_outputs
        self.constraints = list(constraints)
        self.reference_point = None if reference_point is None else list(reference_point)
        self.feasibility_floor = feasibility_floor
        self.input_bounds = input_bounds
        self.classifier: FeasibilityClassifier | None = None

    @property
    def padded_weights(self) -> Tensor:
        """The weights over all modelled outcomes (zero for constraint-only ones)."""
        return torch.cat([self.weights, torch.zeros(self.num_outputs - self.weights.numel()).double()])

    @property
    def posterior_transform(self) -> ScalarizedPosteriorTransform | None:
        if self.num_outputs == 1 and self.weights.item() == 1.0:
            return None
        return ScalarizedPosteriorTransform(self.padded_weights)

    def scalarize(self, Y: Tensor) -> Tensor:
        return Y.double()[..., : self.weights.numel()] @ self.weights

    def learn_feasibility(self, X: Tensor, success: Tensor) -> None:
        """Fit the feasibility classifier (only once something has failed for good)."""
        if self.feasibility_floor is None or bool(success.all()):
            self.classifier = None
            return
        assert self.input_bounds is not None, "feasibility needs input_bounds"
        self.classifier = FeasibilityClassifier(self.input_bounds).fit(X, success)

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
        if self.trust_region is not None:
            space = self.trust_region_space(space, X_baseline, Y_baseline)
        return super().select_in_space(model, space, q, X_baseline, Y_baseline, X_pending, seed)

    def trust_region_space(self, space: SearchSpace, X: Tensor, Y: Tensor) -> SearchSpace:
        """``space`` narrowed to the trust region around the measured point (``X``: ``n x d``
        encoded, ``Y``: ``n x num_outputs``) that adds the most hypervolume; the whole space
        while nothing measured is above the reference point (there is no front to refine, and
        a box around the best of the rest may hold nothing above it)."""
        assert self.trust_region is not None, "no trust region was configured"
        if space.constraints:
            raise CampaignError("a trust region needs a search space without linear constraints")
        signed = Y.double()[:, : self.signs.numel()] * self.signs
        ref = reference_point(signed, self.reference_point, self.signs)
        if hypervolume(signed, ref) == 0:
            return space  # no front above the reference point yet to refine: search it all
        gains = hypervolume_contributions(signed, ref)
        if not bool((gains > 0).any()):  # a front point measured twice: either copy
            gains = pareto_mask(signed).double()
        centre = X[int(gains.argmax())]
        narrowed: list[Parameter] = []
        for p in space.parameters:
            if isinstance(p, Categorical):
                narrowed.append(p)
                continue
            middle = float(centre[space.columns(p.name)[0]])
            half = self.trust_region * (p.upper - p.lower) / 2
            lower, upper = max(p.lower, middle - half), min(p.upper, middle + half)
            if isinstance(p, Integer):  # widened to the integers around it
                narrowed.append(Integer(p.name, math.floor(lower), math.ceil(upper), p.unit))
            else:
                narrowed.append(dataclasses.replace(p, lower=lower, upper=upper))
        return SearchSpace(narrowed)

    def _constraint_callables(self) -> list[Callable[[Tensor], Tensor]] | None:
        return [c.slack for c in self.constraints] or None

    def build(
        self, model: Model, X_baseline: Tensor, Y_baseline: Tensor, X_pending: Tensor | None, q: int
    ) -> AcquisitionFunction:
        acqf = self._build(model, X_baseline, Y_baseline, X_pending, q)
        if self.classifier is not None and self.feasibility_floor is not None:
            return FeasibilityWeighted(acqf, self.classifier, self.feasibility_floor)
        return acqf

    def _build(
        self, model: Model, X_baseline: Tensor, Y_baseline: Tensor, X_pending: Tensor | None, q: int
    ) -> AcquisitionFunction:
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]))
        constraints = self._constraint_callables()
        m = self.signs.numel()
        if self.kind in PARETO_KINDS:
            noisy: dict[str, Any] = {
                "X_baseline": X_baseline,
                "sampler": sampler,
                "objective": WeightedMCMultiOutputObjective(self.signs, outcomes=list(range(m))),
                "constraints": constraints,
                "X_pending": X_pending,
                "prune_baseline": True,
                "cache_root": False,
            }
            if self.kind == "qparego":
                return qLogNParEGO(model, **noisy)
            signed = Y_baseline.double()[:, :m] * self.signs
            ref_point = reference_point(signed, self.reference_point, self.signs)
            return qLogNoisyExpectedHypervolumeImprovement(model, ref_point=ref_point, **noisy)
        if constraints is None:
            return super().build(model, X_baseline, Y_baseline, X_pending, q)
        objective = LinearMCObjective(self.padded_weights)
        if self.kind == "qlognei":
            return qLogNoisyExpectedImprovement(
                model,
                X_baseline=X_baseline,
                sampler=sampler,
                objective=objective,
                constraints=constraints,
                X_pending=X_pending,
                cache_root=False,
            )
        feasible = torch.stack([c.slack(Y_baseline) <= 0 for c in self.constraints]).all(dim=0)
        scores = self.scalarize(Y_baseline)
        best_f = scores[feasible].max() if feasible.any() else scores.min()
        return qLogExpectedImprovement(
            model,
            best_f=best_f,
            sampler=sampler,
            objective=objective,
            constraints=constraints,
            X_pending=X_pending,
        )
