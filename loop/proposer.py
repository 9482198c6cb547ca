"""Learning from the ledger and choosing the next batch: the campaign's side that talks to
the surrogate and the acquisition.

The training data is read from the ledger (done evaluations with every modelled outcome), the
surrogate is fitted with a seed of the campaign and the cycle, and the batch chosen is
committed to the ledger in one transaction with why each candidate was chosen (acquisition
value, posterior mean and std, the calibration record). The predictive std is recalibrated
here (``[surrogate] calibration``) for the stopping rules, and for the acquisition too unless
``calibration_applies_to = "stopping"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from botorch.utils.datasets import SupervisedDataset

from loop import calibration
from loop.acquisition import Acquisition, Pick
from loop.candidate import Candidate
from loop.config import CampaignConfig
from loop.feasibility import feasibility_data
from loop.ledger import EvaluationRecord, Proposal
from loop.pool import Pool, free_rows
from loop.recorder import CampaignRows
from loop.space import SearchSpace
from surrogates.base import Surrogate, SurrogateError
from surrogates.calibrated import CalibratedSurrogate, loo_z, predictive_moments

log = logging.getLogger("alloop")


class CandidateProposer(CampaignRows):
    """Mixin of :class:`~loop.campaign.Campaign`: training data, fit, propose, commit, and the
    calibrated views of the surrogate.

    It needs the campaign's ``config``, ``ledger``, ``id``, ``run_id``, ``space``, ``pool``,
    ``inputs``, ``objectives``, ``outcomes``, ``surrogate`` and ``acquisition``.
    """

    config: CampaignConfig
    space: SearchSpace | None
    pool: Pool | None
    inputs: Pool | SearchSpace
    objectives: list[str]
    outcomes: list[str]
    surrogate: Surrogate
    acquisition: Acquisition

    def dataset(self) -> SupervisedDataset | None:
        """Training data from the ledger: done evaluations with every modelled outcome measured."""
        done = [
            e for e in self.ledger.evaluations(self.id, ["done"]) if all(p in e.values for p in self.outcomes)
        ]
        if not done:
            return None
        X = self.encode(e.params for e in done)
        Y = torch.tensor([[e.values[p] for p in self.outcomes] for e in done], dtype=torch.double)
        Yvar = None
        if self.config.surrogate.noise == "observed":
            sds = [[e.uncertainties.get(p) for p in self.outcomes] for e in done]
            lacking = [e.candidate_id for e, row in zip(done, sds, strict=True) if None in row]
            if lacking:
                raise SurrogateError(
                    f"surrogate.noise = 'observed' but evaluations of {lacking[:5]} carry no uncertainty"
                )
            Yvar = torch.tensor([[sd**2 for sd in row if sd is not None] for row in sds], dtype=torch.double)
        return SupervisedDataset(
            X,
            Y,
            Yvar=Yvar,
            feature_names=self.inputs.feature_names,
            outcome_names=self.outcomes,
        )

    def fit(self, cycle: int) -> Surrogate | None:
        """The surrogate fitted to the ledger's data, or ``None`` while too little is known."""
        dataset = self.dataset()
        if dataset is None:
            return None
        torch.manual_seed(self._seed(cycle))
        return self.surrogate.fit(dataset)

    def propose(self, surrogate: Surrogate | None, cycle: int) -> list[Proposal]:
        """Choose the next batch (random designs until a surrogate exists)."""
        spent, _ = self.ledger.spent(self.id)
        section = self.config.acquisition
        q = section.initial_designs if spent == 0 else section.batch_size
        if self.config.stopping.max_experiments is not None:
            q = min(q, self.config.stopping.max_experiments - spent)
        if q <= 0:
            return []
        seed = self._seed(cycle)
        acquisition = self.acquisition if surrogate is not None else _random_like(self.acquisition)
        known = self.ledger.evaluations(self.id)
        if surrogate is not None and self.config.feasibility.learn:
            taught, success = feasibility_data(known)
            acquisition.learn_feasibility(self.encode(e.params for e in taught), success)
        pending = [e for e in known if e.status in ("proposed", "submitted")]
        X_pending = self.encode(e.params for e in pending) if pending else None
        data = self.dataset()
        X_base = data.X if data is not None else None
        Y_base = data.Y if data is not None else None
        if self.pool is not None:
            free = free_rows(self.pool, (e.candidate for e in known))
            if not free:
                return []
            choices = self.pool.X[free]
            # Acquisition's select_* are typed for a fitted surrogate and data; the random
            # strategy of the first cycle uses neither.
            picks = acquisition.select_from_pool(
                surrogate,  # type: ignore[arg-type]
                choices,
                q,
                X_base,  # type: ignore[arg-type]
                Y_base,  # type: ignore[arg-type]
                X_pending,
                seed,
            )
            candidates = []
            for p in picks:
                assert p.index is not None  # pool picks carry their row
                candidates.append(self.pool.candidates[free[p.index]])
        else:
            assert self.space is not None
            picks = acquisition.select_in_space(
                surrogate,  # type: ignore[arg-type]
                self.space,
                q,
                X_base,  # type: ignore[arg-type]
                Y_base,  # type: ignore[arg-type]
                X_pending,
                seed,
            )
            picks, candidates = self._new_candidates(picks, {e.candidate_id for e in known}, seed)
        return self._explain(surrogate, picks, candidates)

    def _new_candidates(
        self, picks: Sequence[Pick], known: set[str], seed: int
    ) -> tuple[list[Pick], list[Candidate]]:
        """Candidates of the picks; a pick that rounds to a known candidate (the optimiser
        went back to a measured point) is replaced by a random feasible one, which at least
        teaches the model something new."""
        assert self.space is not None
        kept: list[Pick] = []
        candidates: list[Candidate] = []
        seen = set(known)
        replacements = iter(self.space.sample(4 * len(picks) + 8, seed + 1))
        for pick, params in zip(picks, self.space.decode(torch.stack([p.X for p in picks])), strict=True):
            candidate = self.space.candidate(params)
            while candidate.id in seen:
                log.info("pick %s was measured already; replacing it by a random design", candidate.id)
                params = next(replacements)
                candidate = self.space.candidate(params)
                pick = Pick(self.space.encode([candidate.params])[0], math.nan)
            seen.add(candidate.id)
            kept.append(pick)
            candidates.append(candidate)
        return kept, candidates

    def commit_proposals(
        self, cycle: int, proposals: Sequence[Proposal], surrogate: Surrogate | None
    ) -> list[EvaluationRecord]:
        """Write the batch to the ledger (one transaction) and return its evaluations."""
        name = self.config.acquisition.type if surrogate is not None else "random"
        summary = self.surrogate_summary(surrogate) if surrogate is not None else None
        ids = set(self.ledger.propose(self.id, self.run_id, cycle, proposals, name, summary))
        return [e for e in self.ledger.evaluations(self.id, ["proposed"]) if e.id in ids]

    # --- calibration ------------------------------------------------------------------------

    def std_scales(self) -> dict[str, float]:
        """Per objective, the factor on the predictive std that ``[surrogate] calibration``
        fits to the campaign's z-scores so far (1 for ``"none"``)."""
        method = self.config.surrogate.calibration
        if method == "none":
            return dict.fromkeys(self.objectives, 1.0)
        return calibration.current_scales(self.ledger.predictions(self.id), self.objectives, method)

    def predictive_model(self, surrogate: Surrogate) -> CalibratedSurrogate:
        """The surrogate's distribution of a measurement (observation noise added, std
        recalibrated): what the stopping rules judge by."""
        scale = torch.tensor([self.std_scales()[p] for p in self.objectives], dtype=torch.double)
        return CalibratedSurrogate(_unwrapped(surrogate), scale, observation_noise=True)

    def acquisition_model(self, surrogate: Surrogate | None) -> Surrogate | None:
        """The model the acquisition scores: the surrogate, its latent std recalibrated
        where ``[surrogate] calibration`` applies to all decisions. Applied to the stopping
        rules only, the acquisition sees what it sees without a recalibration, and so picks
        what it would pick without one."""
        section = self.config.surrogate
        if surrogate is None or section.calibration == "none" or section.calibration_applies_to != "all":
            return surrogate
        scale = torch.tensor([self.std_scales()[p] for p in self.objectives], dtype=torch.double)
        return CalibratedSurrogate(surrogate, scale, observation_noise=False)

    def surrogate_summary(self, surrogate: Surrogate) -> dict[str, Any]:
        """The fitted surrogate's summary for the cycle's row, with its leave-one-out check."""
        summary = surrogate.summary()
        z = loo_z(surrogate)
        if z is not None:
            summary["loo"] = {p: calibration.summarize(z[i].tolist()) for i, p in enumerate(self.objectives)}
        return summary

    # --- inputs -----------------------------------------------------------------------------

    def encode(self, params: Iterable[Mapping[str, Any]]) -> torch.Tensor:
        """``n x d`` model inputs for candidates given by their parameters."""
        return self.inputs.encode(params)

    def _seed(self, cycle: int) -> int:
        return int(np.random.SeedSequence([self.config.campaign.seed, cycle]).generate_state(1)[0])

    def _explain(
        self, surrogate: Surrogate | None, picks: Sequence[Pick], candidates: Sequence[Any]
    ) -> list[Proposal]:
        if surrogate is None or not picks:
            return [Proposal(c, None) for c in candidates]
        X = torch.stack([p.X for p in picks])
        mean, latent, predictive = predictive_moments(_unwrapped(surrogate), X)
        std, noisy, scales = latent.sqrt(), predictive.sqrt(), self.std_scales()
        return [
            Proposal(
                c,
                p.value,
                mean[i].tolist(),
                std[i].tolist(),
                {
                    name: calibration.Prediction(
                        float(mean[i, j]), float(std[i, j]), float(noisy[i, j]), scales[name]
                    )
                    for j, name in enumerate(self.objectives)
                },
            )
            for i, (p, c) in enumerate(zip(picks, candidates, strict=True))
        ]


def _unwrapped(surrogate: Surrogate) -> Surrogate:
    return surrogate.inner if isinstance(surrogate, CalibratedSurrogate) else surrogate


def _random_like(acquisition: Acquisition) -> Acquisition:
    return Acquisition("random", acquisition.weights.tolist(), chunk_size=acquisition.chunk_size)
