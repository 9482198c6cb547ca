"""Transfer from past campaigns: a multi-task GP (task = campaign) with a guard against
negative transfer.

BoTorch's ``MultiTaskGP`` (an index kernel over tasks times an ARD Matern kernel over inputs)
is fitted to the target campaign's data (task 0) and each source campaign's (tasks 1...), and
predicts the target task. Before a source is used, the guard asks two questions of the target's
own results:

1. Does the source rank them right, beyond chance? BoTorch's index kernel
   (``PositiveIndexKernel``, with a prior favouring strong correlation) can only borrow from a
   positively correlated source, and a source is worth following only where it is right, so
   the ranking of the target's results by the source's own GP must agree with theirs with a
   one-sided Kendall test significant at :data:`AGREEMENT_LEVEL`. That takes at least four
   results (without ties, all four ranked right), and a source that is right about the target's trend but
   wrong at its optimum steers no picks on a chance agreement over a handful of results.
2. Does it predict them better? The target data's held-out predictive log-likelihood
   (``k``-fold, hyper-parameters fitted once on all data) with the source must be at least
   that of the target-only GP.

A source is used only while both answers are yes; until they can be given the campaign is a
cold start. So an inverted source, or one right about the target's trend and wrong at its
optimum, steers none of the first picks (in the benchmarks neither cost experiments at the
median of ten campaigns), and a helpful one is used from the round its picks show it right.
The guard judges a source only by the target's results: one that happens to order them right
is used, whatever its origin (benchmarks/RESULTS.md: the plates reversed and their shuffled
control, BayBE's shifted Hartmann).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from botorch.models import MultiTaskGP, SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.utils.datasets import SupervisedDataset
from scipy.stats import kendalltau
from torch import Tensor

from surrogates.base import DEFAULT_CHUNK_SIZE, Surrogate, SurrogateError
from surrogates.gp import GPSurrogate

#: The one-sided significance level at which a source's ranking of the target's results must
#: agree with theirs (Kendall's tau) before it is used; at 0.05 that needs four results or more.
AGREEMENT_LEVEL = 0.05


class TransferGP(GPSurrogate):
    """A GP over the target campaign that borrows from source campaigns that help.

    Args:
        sources: ``(name, dataset)`` of each source campaign (one outcome, the target's inputs).
        input_bounds: ``2 x d`` bounds that map inputs to the unit cube.
        folds: Folds of the guard's held-out likelihood.
        guard: ``False`` uses every source unjudged (for benchmarks of the guard itself).
        **options: As :class:`~surrogates.gp.GPSurrogate` (the cold-start GP); its warm
            start and iteration caps apply to the joint GPs too, each set of sources
            warm-started from its own last fit.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, SupervisedDataset]],
        input_bounds: Tensor,
        folds: int = 5,
        guard: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(input_bounds=input_bounds, **options)
        if any(s.Y.shape[-1] != 1 for _, s in sources):
            raise SurrogateError("transfer needs single-outcome source data")
        self.sources = list(sources)
        self.folds, self.guard = folds, guard
        self.used: list[str] = []
        #: Kendall's tau between each source's predictions and the target's results, last fit.
        self.agreement: dict[str, float] = {}
        #: Its one-sided p-value: the chance of agreeing at least as well with no relation.
        self.agreement_p: dict[str, float] = {}
        self._cold: SingleTaskGP | None = None
        # Each source's own GP (its data never change), fitted when first judged.
        self._alone: dict[int, SingleTaskGP] = {}
        # The last fitted joint GP of each set of sources (indices into ``sources``): the
        # warm start of the next round's fit on that set.
        self._joint: dict[tuple[int, ...], MultiTaskGP] = {}

    def fit(self, dataset: SupervisedDataset) -> TransferGP:
        if dataset.Y.shape[-1] != 1:
            raise SurrogateError("transfer needs a single-outcome campaign")
        self.model = self._cold  # warm-start the cold GP from the last cold fit
        super().fit(dataset)  # the cold start: the guard's yardstick and the fallback
        self._cold = self.model
        if not self.sources:
            return self
        X, Y = dataset.X.double(), dataset.Y.double()
        fitted: dict[tuple[int, ...], MultiTaskGP] = {}  # this round's joint GPs, by sources
        self.agreement, self.agreement_p = {}, {}
        used = self._judged(X, Y, fitted) if self.guard else list(range(len(self.sources)))
        self.used = [self.sources[i][0] for i in used]
        if used:
            key = tuple(used)
            if key not in fitted:  # one used source: the guard's joint GP is the model
                fitted[key] = self._fit_joint(X, Y, key)
            self.model = fitted[key]
        self._joint.update(fitted)
        return self

    def _judged(self, X: Tensor, Y: Tensor, fitted: dict[tuple[int, ...], MultiTaskGP]) -> list[int]:
        """The sources whose ranking of the target's results agrees with theirs at
        :data:`AGREEMENT_LEVEL` and that predict them at least as well as the cold GP; records
        each one's :attr:`agreement` and :attr:`agreement_p`, and the joint GPs it fits in
        ``fitted``."""
        if X.shape[0] < 2:  # nothing to rank
            return []
        ranked = []
        for i, (name, _) in enumerate(self.sources):
            alone = self._source_alone(i)
            with torch.no_grad():
                predicted = alone.posterior(X).mean.reshape(-1)
            self.agreement[name], self.agreement_p[name] = _kendall_agreement(predicted, Y.reshape(-1))
            if self.agreement_p[name] <= AGREEMENT_LEVEL:
                ranked.append(i)
        if not ranked:
            return []
        assert self._cold is not None
        cold = _held_out_log_likelihood(X, Y, self._cold_factory(), self._cold, self.folds)
        used = []
        for i in ranked:
            joint = fitted[(i,)] = self._fit_joint(X, Y, (i,))
            make = self._joint_factory([self.sources[i][1]])
            if _held_out_log_likelihood(X, Y, make, joint, self.folds) >= cold:
                used.append(i)
        return used

    def _source_alone(self, i: int) -> SingleTaskGP:
        """Source ``i``'s own GP, fitted once."""
        if i not in self._alone:
            source = self.sources[i][1]
            model = self._cold_factory()(source.X.double(), source.Y.double())
            self._alone[i] = self._fit_hyperparameters(model, None)
        return self._alone[i]

    def _fit_joint(self, X: Tensor, Y: Tensor, sources: tuple[int, ...]) -> MultiTaskGP:
        """The joint GP of the target data and ``sources``, warm-started from its last fit."""
        model = self._joint_factory([self.sources[i][1] for i in sources])(X, Y)
        return self._fit_hyperparameters(model, self._joint.get(sources))

    def _cold_factory(self) -> Callable[[Tensor, Tensor], SingleTaskGP]:
        def make(X: Tensor, Y: Tensor) -> SingleTaskGP:
            return SingleTaskGP(
                X,
                Y,
                covar_module=self._covar_module(X.shape[-1], torch.Size()),
                input_transform=Normalize(X.shape[-1], bounds=self.input_bounds),
                outcome_transform=Standardize(1),
            )

        return make

    def _joint_factory(self, sources: Sequence[SupervisedDataset]) -> Callable[[Tensor, Tensor], MultiTaskGP]:
        assert self.input_bounds is not None
        bounds = torch.cat([self.input_bounds.double(), torch.tensor([[0.0], [1.0]]).double()], dim=-1)

        def make(X: Tensor, Y: Tensor) -> MultiTaskGP:
            parts_X = [_with_task(X, 0)] + [_with_task(s.X.double(), i + 1) for i, s in enumerate(sources)]
            parts_Y = [Y] + [s.Y.double() for s in sources]
            d = X.shape[-1]
            return MultiTaskGP(
                torch.cat(parts_X),
                torch.cat(parts_Y),
                task_feature=-1,
                output_tasks=[0],
                input_transform=Normalize(d + 1, indices=list(range(d)), bounds=bounds),
                outcome_transform=Standardize(1),
            )

        return make

    @torch.no_grad()
    def predict(self, X: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
        if isinstance(self.model, MultiTaskGP):
            return Surrogate.predict(self, X, chunk_size)
        return super().predict(X, chunk_size)

    def summary(self) -> dict[str, Any]:
        if not isinstance(self.model, MultiTaskGP):
            return {**super().summary(), "type": "TransferGP", "sources_used": [], **self._agreement()}
        return {
            "type": "TransferGP",
            # gpytorch keeps train_inputs as a tuple of tensors; its stubs see a Module attribute
            "n_train": int(cast(tuple[Tensor, ...], self.model.train_inputs)[0].shape[-2]),
            "sources_used": list(self.used),
            **self._agreement(),
        }

    def _agreement(self) -> dict[str, Any]:
        return {
            "source_agreement": {n: round(t, 3) for n, t in self.agreement.items()},
            "source_agreement_p": {n: round(p, 4) for n, p in self.agreement_p.items()},
        }


def _kendall_agreement(predicted: Tensor, observed: Tensor) -> tuple[float, float]:
    """Kendall's tau-b of two ``n`` vectors and its one-sided p-value against no positive
    association (SciPy's: exact for small ``n`` without ties, else the normal approximation);
    ``(0, 1)`` where either is constant."""
    result = kendalltau(predicted.numpy(), observed.numpy(), alternative="greater")
    tau, p = float(result.statistic), float(result.pvalue)
    return (0.0, 1.0) if math.isnan(tau) or math.isnan(p) else (tau, p)


def _with_task(X: Tensor, task: int) -> Tensor:
    return torch.cat([X, torch.full((X.shape[0], 1), float(task), dtype=X.dtype)], dim=-1)


@torch.no_grad()
def _held_out_log_likelihood(
    X: Tensor, Y: Tensor, make: Callable[[Tensor, Tensor], Any], fitted: Any, folds: int
) -> float:
    """Sum over ``k`` folds of the target's held-out predictive log-density, each fold's model
    built on the other folds with the hyper-parameters of ``fitted`` (fitted on everything)."""
    n = X.shape[0]
    k = max(2, min(folds, n))
    order = torch.arange(n)
    total = 0.0
    # Each fold standardises its own outcomes; everything else is the full fit's.
    state = {k: v for k, v in fitted.state_dict().items() if not k.startswith("outcome_transform")}
    for fold in range(k):
        held = order % k == fold
        model = make(X[~held], Y[~held])
        model.load_state_dict(state, strict=False)
        model.eval()
        posterior = model.posterior(X[held], observation_noise=True)
        mean, variance = posterior.mean.reshape(-1), posterior.variance.reshape(-1).clamp_min(1e-12)
        y = Y[held].reshape(-1)
        total += float((-0.5 * ((y - mean) ** 2 / variance + variance.log() + math.log(2 * math.pi))).sum())
    return total
