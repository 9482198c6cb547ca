"""A multi-fidelity campaign: one oracle per fidelity, (candidate, fidelity) pairs chosen by cost.

It is a :class:`~loop.campaign.Campaign` (same ledger, cycles, crash safety and resume) whose
evaluations each carry a fidelity: the surrogate (:class:`~surrogates.multifidelity.MultiFidelityGP`)
learns from all of them with the fidelity as an input, the policy
(:class:`~loop.fidelity_acquisition.FidelityPolicy`) picks pairs, each evaluation goes to its
fidelity's oracle and is charged that fidelity's cost the moment it is proposed (so budgets
count what is committed, pending included), and only the target fidelity's results make the
best value. :meth:`Campaign.open <loop.campaign.Campaign.open>` gives one for ``[[oracles]]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from botorch.utils.datasets import SupervisedDataset

from loop.build import build_oracle, input_bounds
from loop.campaign import POOL_EXHAUSTED, Campaign
from loop.config import CampaignConfig
from loop.fidelity import Fidelities
from loop.fidelity_acquisition import FidelityPolicy, PairState
from loop.ledger import EvaluationRecord, Ledger, Proposal
from oracles.base import Oracle, Result
from surrogates.base import Surrogate
from surrogates.multifidelity import MultiFidelityGP


class MultiFidelityCampaign(Campaign):
    """A campaign over ``[[oracles]]`` (see the module docstring).

    Args:
        config: The validated configuration, with ``[[oracles]]``.
        ledger: The ledger to use; default: the one the configuration names.
        oracles: The oracle of each fidelity; default: the configured ones.
        surrogate: The surrogate over design inputs and the fidelity; default: a
            :class:`~surrogates.multifidelity.MultiFidelityGP`.
    """

    def __init__(
        self,
        config: CampaignConfig,
        ledger: Ledger | None = None,
        oracles: Mapping[str, Oracle] | None = None,
        surrogate: Surrogate | None = None,
    ) -> None:
        fidelities = Fidelities.from_config(config)
        if fidelities is None:
            raise ValueError("a multi-fidelity campaign needs [[oracles]]")
        self.fidelities = fidelities
        self.oracles: dict[str, Oracle] = dict(oracles or {})
        super().__init__(config, ledger, surrogate=surrogate)
        self.target_fidelity = fidelities.target
        section = config.acquisition
        weight = float(self.acquisition.weights[0])
        self.policy = FidelityPolicy(
            section.type, fidelities, weight, section.beta, section.chunk_size, self.acquisition.hull
        )

    def build_oracle(self) -> Oracle:
        assert self.config.oracles is not None
        for entry in self.config.oracles:
            if entry.fidelity not in self.oracles:
                self.oracles[entry.fidelity] = build_oracle(self.config, self.space, entry.oracle)
        return self.oracles[self.fidelities.target]

    def build_surrogate(self) -> Surrogate:
        bounds = input_bounds(self.space, self.pool)
        return MultiFidelityGP(bounds, warm_start=self.config.surrogate.warm_start)

    def oracle_for(self, evaluation: EvaluationRecord) -> Oracle:
        return self.oracles[evaluation.fidelity]

    def close(self) -> None:
        for oracle in self.oracles.values():
            if oracle is not self.oracle:
                oracle.close()
        super().close()

    # --- data -------------------------------------------------------------------------------

    def encode_at(self, evaluations: list[EvaluationRecord]) -> torch.Tensor:
        """``n x (d + 1)`` model inputs: each evaluation's candidate and its fidelity."""
        X = self.encode(e.params for e in evaluations)
        values = [self.fidelities[e.fidelity].value for e in evaluations]
        return torch.cat([X, torch.tensor(values, dtype=X.dtype).unsqueeze(-1)], dim=-1)

    def dataset(self) -> SupervisedDataset | None:
        done = [
            e for e in self.ledger.evaluations(self.id, ["done"]) if all(p in e.values for p in self.outcomes)
        ]
        if not done:
            return None
        Y = torch.tensor([[e.values[p] for p in self.outcomes] for e in done], dtype=torch.double)
        return SupervisedDataset(
            self.encode_at(done),
            Y,
            feature_names=[*self.inputs.feature_names, "fidelity"],
            outcome_names=self.outcomes,
        )

    def fit(self, cycle: int) -> Surrogate | None:
        return super().fit(cycle) if self.policy.needs_model else None

    def record(self, evaluation: EvaluationRecord, result: Result) -> None:
        # The fidelity's configured cost, whatever the oracle reports.
        cost = self.fidelities[evaluation.fidelity].cost
        super().record(evaluation, dataclasses.replace(result, cost=cost))

    # --- choosing pairs ---------------------------------------------------------------------

    def pair_state(self, known: list[EvaluationRecord]) -> PairState:
        """What the ledger knows of every (pool candidate, fidelity) pair."""
        assert self.pool is not None  # the configuration asks for a pool
        levels = {name: j for j, name in enumerate(self.fidelities.names)}
        shape = (len(self.pool.ids), len(levels))
        state = PairState(
            torch.ones(shape, dtype=torch.bool),
            torch.zeros(shape, dtype=torch.bool),
            torch.full(shape, math.nan, dtype=torch.double),
        )
        for e in known:
            i, j = self.pool.row_of(e.candidate), levels[e.fidelity]
            if i is None:  # not a candidate of this pool
                continue
            state.open[i, j] = False
            state.pending[i, j] = e.status in ("proposed", "submitted")
            if e.status == "done" and self.objectives[0] in e.values:
                state.values[i, j] = self.score(e)
        return state

    def free_pool_rows(self) -> list[int]:
        known = self.ledger.evaluations(self.id)
        return torch.nonzero(self.pair_state(known).open.any(dim=1)).reshape(-1).tolist()

    def propose(self, surrogate: Surrogate | None, cycle: int) -> list[Proposal]:
        """Choose the next pairs within what is left of the budget (experiments and cost)."""
        assert self.pool is not None
        experiments, cost = self.ledger.spent(self.id)
        section, stopping = self.config.acquisition, self.config.stopping
        q = section.initial_designs if experiments == 0 else section.batch_size
        if stopping.max_experiments is not None:
            q = min(q, stopping.max_experiments - experiments)
        if q <= 0:
            return []
        known = self.ledger.evaluations(self.id)
        pending = [e for e in known if e.status in ("proposed", "submitted")]
        X_pending = self.encode_at(pending) if pending else None
        state, seed = self.pair_state(known), self._seed(cycle)
        picks = self.policy.select(surrogate, self.pool.X, state, q, X_pending, seed)
        left = math.inf if stopping.max_cost is None else stopping.max_cost - cost
        proposals = []
        for pick in picks:
            price = self.fidelities[pick.fidelity].cost
            if price > left:
                continue
            left -= price
            candidate = self.pool.candidates[pick.row]
            mean = std = None
            if surrogate is not None:
                X = self.policy.augment(self.pool.X[pick.row : pick.row + 1], pick.fidelity)
                m, v = surrogate.predict(X)
                mean, std = m[0].tolist(), v[0].sqrt().tolist()
            proposals.append(Proposal(candidate, pick.value, mean, std, fidelity=pick.fidelity, cost=price))
        return proposals

    def decide(self, surrogate: Surrogate | None, cycle: int) -> tuple[list[EvaluationRecord], str | None]:
        batch, stop_reason = super().decide(surrogate, cycle)
        max_cost = self.config.stopping.max_cost
        if stop_reason == POOL_EXHAUSTED and max_cost is not None and self.free_pool_rows():
            _, cost = self.ledger.spent(self.id)
            stop_reason = f"budget spent: cost {cost:g} of {max_cost:g} (no evaluation fits what is left)"
        return batch, stop_reason

    def commit_proposals(
        self, cycle: int, proposals: Sequence[Proposal], surrogate: Surrogate | None
    ) -> list[EvaluationRecord]:
        if surrogate is not None or self.policy.needs_model:
            return super().commit_proposals(cycle, proposals, surrogate)
        # the funnel decides without a model: its name, not "random", goes in the cycle's row
        kind = self.config.acquisition.type
        ids = set(self.ledger.propose(self.id, self.run_id, cycle, proposals, kind, None))
        return [e for e in self.ledger.evaluations(self.id, ["proposed"]) if e.id in ids]
