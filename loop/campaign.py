"""The campaign: cycles of fit → propose → evaluate → record, until a stopping rule fires.

Everything a campaign knows is in its ledger, so any process may die at any instant and the
next one resumes: an open cycle's proposed candidates are dispatched, not re-chosen;
evaluations left ``submitted`` by a dead process are re-attached if the oracle can
(:class:`Reattachable`), else recorded as failed — never submitted twice.

The stages are separate methods (:meth:`Campaign.fit`, :meth:`Campaign.propose`,
:meth:`Campaign.dispatch`, :meth:`Campaign.record`) so a workflow engine can run each as a
task; :meth:`Campaign.run` composes them in plain Python. Fitting and proposing are
:class:`~loop.proposer.CandidateProposer`'s, dispatching and recording
:class:`~loop.recorder.EvaluationRecorder`'s; this module opens, resumes, runs and closes cycles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loop.acquisition import Acquisition
from loop.build import build_acquisition, build_oracle, build_space, build_surrogate
from loop.config import CampaignConfig, load_config
from loop.labconfig import modelled_outcomes
from loop.lease import CampaignLease
from loop.ledger import EvaluationRecord, Ledger
from loop.pool import Pool, free_rows
from loop.proposer import CandidateProposer
from loop.recorder import EvaluationRecorder
from loop.report import best_value, campaign_status
from loop.retry import RetryPolicy
from loop.schema import DEFAULT_FIDELITY
from loop.space import SearchSpace
from loop.stopping import StoppingRule, stopping_rules
from oracles.base import Oracle
from oracles.errors import OracleSetupError
from surrogates.base import Surrogate

log = logging.getLogger("alloop")

#: Why a campaign stops when nothing is left to propose.
POOL_EXHAUSTED = "the candidate pool is exhausted"


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    cycle: int
    proposed: int
    done: int
    failed: int
    best: float | None
    """The best objective value so far, in its own sign and units."""
    experiments: int
    cost: float
    stop_reason: str | None = None


@dataclass(frozen=True)
class CampaignReport:
    """Where a campaign stands after :meth:`Campaign.run`."""

    name: str
    cycles_run: int
    stop_reason: str | None
    experiments: int
    cost: float
    best: dict[str, Any] | None
    reports: list[CycleReport] = field(default_factory=list)


class Campaign(CandidateProposer, EvaluationRecorder):
    """A closed-loop campaign bound to its ledger.

    Args:
        config: The validated configuration.
        ledger: The ledger to use; default: the one the configuration names.
        oracle: The oracle to use; default: the one the configuration describes.
        surrogate: The surrogate to use; default: the configured GP.
    """

    def __init__(
        self,
        config: CampaignConfig,
        ledger: Ledger | None = None,
        oracle: Oracle | None = None,
        surrogate: Surrogate | None = None,
    ) -> None:
        self.config = config
        self.space: SearchSpace | None
        self.pool: Pool | None
        self.space, self.pool = build_space(config)
        #: What encodes candidates into model inputs: the pool if there is one, else the space.
        self.inputs: Pool | SearchSpace = self.pool if self.pool is not None else self.space  # type: ignore[assignment]
        self.objectives = [o.name for o in config.objectives]
        self.log_scale = [o.name for o in config.objectives if o.log_scale]
        #: What the surrogate models: the objectives, then outcomes only a constraint reads.
        self.outcomes = modelled_outcomes(config)
        self.oracle = oracle if oracle is not None else self.build_oracle()
        missing = [p for p in self.outcomes if p not in self.oracle.implemented_properties]
        if missing:
            raise OracleSetupError(
                f"oracle {type(self.oracle).__name__} does not measure objective(s) {missing}; "
                f"it implements {list(self.oracle.implemented_properties)}"
            )
        self.surrogate = surrogate if surrogate is not None else self.build_surrogate()
        self.acquisition: Acquisition = build_acquisition(config, self.space, self.pool)
        self.stopping: list[StoppingRule] = stopping_rules(config)
        spec = config.primary_oracle
        #: Retries of retryable failures in :meth:`run` (``[oracle] retries``).
        self.retry = RetryPolicy(spec.retries, spec.retry_delay_s, spec.retry_backoff)
        self._ledger = ledger
        self._id: int | None = None
        self._run_id: int | None = None

    #: The fidelity whose results count: the best value, targets, patience (:mod:`loop.fidelity`).
    target_fidelity = DEFAULT_FIDELITY

    def build_oracle(self) -> Oracle:
        """The configured oracle (called once, by the constructor, when none is given)."""
        return build_oracle(self.config, self.space)

    def build_surrogate(self) -> Surrogate:
        """The configured surrogate (called once, by the constructor, when none is given)."""
        return build_surrogate(self.config, self.space, self.pool)

    @classmethod
    def open(
        cls,
        config: CampaignConfig,
        ledger: Ledger | None = None,
        oracle: Oracle | None = None,
        surrogate: Surrogate | None = None,
    ) -> Campaign:
        """The campaign bound to its ledger: the ledger is opened (created if new, refused
        with one line naming its path if it cannot be used) and the campaign's row found or
        written. The constructor builds the pieces and writes nothing. A configuration with
        ``[[oracles]]`` gives a :class:`~loop.fidelity_campaign.MultiFidelityCampaign`.

        Raises:
            ValueError: an ``oracle`` given for a multi-fidelity campaign.
            LedgerError: the ledger cannot be used.
            CampaignError: the campaign exists in it with another configuration.
        """
        if cls is Campaign and config.oracles is not None:
            from loop.fidelity_campaign import MultiFidelityCampaign

            if oracle is not None:
                raise ValueError(
                    "a multi-fidelity campaign has one oracle per fidelity: see MultiFidelityCampaign"
                )

            campaign: Campaign = MultiFidelityCampaign(config, ledger, surrogate=surrogate)
        else:
            campaign = cls(config, ledger, oracle, surrogate)
        try:
            _ = campaign.id
        except BaseException:
            campaign.close()
            raise
        return campaign

    @property
    def ledger(self) -> Ledger:
        """The campaign's ledger (opened on first use, see :meth:`open`)."""
        if self._ledger is None:
            self._ledger = Ledger(self.config.ledger_location)
        return self._ledger

    @property
    def id(self) -> int:
        """The campaign's row in the ledger (found or written on first use, see :meth:`open`)."""
        if self._id is None:
            config = self.config
            self._id = self.ledger.open_campaign(
                config.campaign.name, config.model_dump(mode="json"), config.hash, config.campaign.seed
            )
        return self._id

    @classmethod
    def from_file(cls, path: str | Path, ledger: str | None = None) -> Campaign:
        """A campaign from a TOML file; ``ledger`` overrides the file's ledger location."""
        overrides = {
            "campaign.ledger": str(Path(ledger).resolve()) if ledger and "://" not in ledger else ledger
        }
        return cls.open(load_config(path, {k: v for k, v in overrides.items() if v}))

    @property
    def run_id(self) -> int:
        """This process's ``runs`` row, registered when it first writes: a resume that finds
        nothing to do adds none."""
        if self._run_id is None:
            self._run_id = self.ledger.start_run(self.id)
        return self._run_id

    @property
    def name(self) -> str:
        return self.config.campaign.name

    def close(self) -> None:
        self.oracle.close()
        if self._ledger is not None:
            self._ledger.close()

    # --- the loop ---------------------------------------------------------------------------

    def lease(self, label: str | None = None) -> CampaignLease:
        """The campaign's single-writer lease (``[execution] lock_wait_s``, ``lock_lease_s``)."""
        execution = self.config.execution
        return CampaignLease(
            self.ledger, self.name, label, wait_s=execution.lock_wait_s, lease_s=execution.lock_lease_s
        )

    def run(
        self,
        max_cycles: int | None = None,
        on_cycle: Callable[[CycleReport], None] | None = None,
        label: str | None = None,
    ) -> CampaignReport:
        """Run cycles until a stopping rule fires or ``max_cycles`` cycles have run, holding
        the campaign's lease (:meth:`lease`, as ``label``) throughout.

        Raises:
            CampaignBusy: another writer holds the campaign (nothing was written).
        """
        with self.lease(label):
            return self._run(max_cycles, on_cycle)

    def _run(self, max_cycles: int | None, on_cycle: Callable[[CycleReport], None] | None) -> CampaignReport:
        self.recover()
        reports: list[CycleReport] = []
        stop = self.stop_reason()
        while stop is None and (max_cycles is None or len(reports) < max_cycles):
            report = self.run_cycle()
            reports.append(report)
            if on_cycle is not None:
                on_cycle(report)
            stop = report.stop_reason or self.stop_reason()
        return self.finish(stop, reports)

    def finish(self, stop: str | None, reports: list[CycleReport]) -> CampaignReport:
        """Store why the campaign stopped (``None``: a cycle limit, not a rule) and report."""
        if stop:
            log.info("campaign %s stopped: %s", self.name, stop)
        self.ledger.set_stop_reason(self.id, stop)
        experiments, cost = self.ledger.spent(self.id)
        return CampaignReport(self.name, len(reports), stop, experiments, cost, self.best(), reports)

    def run_cycle(self) -> CycleReport:
        """One cycle: fit, propose (unless the open cycle already has), evaluate, record."""
        cycle, batch, undecided = self.open_batch()
        stop_reason = None
        if undecided:
            batch, stop_reason = self.decide(self.fit(cycle), cycle)
        outcomes = self.record_all(self.dispatch(batch), self.retry) if batch else []
        return self.close_cycle(cycle, len(batch), outcomes, stop_reason)

    def open_batch(self) -> tuple[int, list[EvaluationRecord], bool]:
        """The open cycle (a new one unless a dead run left one), its batch still to dispatch,
        and whether the cycle has yet to choose its batch (nothing was proposed in it)."""
        cycle = self.ledger.open_cycle(self.id, self.run_id)
        known = [e for e in self.ledger.evaluations(self.id) if e.cycle == cycle]
        return cycle, [e for e in known if e.status == "proposed"], not known

    def decide(self, surrogate: Surrogate | None, cycle: int) -> tuple[list[EvaluationRecord], str | None]:
        """The cycle's decision: stop (a rule that asks the surrogate fired, or nothing is left
        to propose) or choose a batch and commit it to the ledger.

        Returns:
            The committed batch and ``None``, or no batch and the stop reason.
        """
        stop_reason = self.improvement_exhausted(surrogate)
        if stop_reason is not None:
            return [], stop_reason
        proposals = self.propose(self.acquisition_model(surrogate), cycle)
        if not proposals:
            return [], POOL_EXHAUSTED
        return self.commit_proposals(cycle, proposals, surrogate), None

    def close_cycle(
        self, cycle: int, proposed: int, outcomes: Sequence[str | None], stop_reason: str | None
    ) -> CycleReport:
        """Close the cycle in the ledger and report it (``outcomes``: ``None`` per success,
        the error per failure, as :meth:`record_all` returns them)."""
        self.ledger.close_cycle(self.id, cycle, stop_reason)
        experiments, cost = self.ledger.spent(self.id)
        return CycleReport(
            cycle=cycle,
            proposed=proposed,
            done=sum(o is None for o in outcomes),
            failed=sum(o is not None for o in outcomes),
            best=best_value(self.best()),
            experiments=experiments,
            cost=cost,
            stop_reason=stop_reason,
        )

    # --- stopping ---------------------------------------------------------------------------

    def stop_reason(self) -> str | None:
        """Why the campaign should stop now (the rules that need no surrogate), or ``None``."""
        return self._first_reason([r for r in self.stopping if not r.needs_surrogate], None)

    def improvement_exhausted(self, surrogate: Surrogate | None) -> str | None:
        """The stop reason of a rule that asks the fitted surrogate whether more experiments
        can still pay off (``min_expected_improvement``, ``near_hull_mev``), else ``None``."""
        if surrogate is None:
            return None
        return self._first_reason([r for r in self.stopping if r.needs_surrogate], surrogate)

    def _first_reason(self, rules: Sequence[StoppingRule], surrogate: Surrogate | None) -> str | None:
        return next((reason for rule in rules if (reason := rule.reason(self, surrogate))), None)

    def free_pool_rows(self) -> list[int]:
        """Rows of the pool's candidates that the ledger does not know yet."""
        assert self.pool is not None
        return free_rows(self.pool, (e.candidate for e in self.ledger.evaluations(self.id)))

    # --- reporting --------------------------------------------------------------------------

    def score(self, evaluation: EvaluationRecord) -> float:
        """The evaluation's scalarised, signed objective (higher is better)."""
        Y = torch.tensor([[evaluation.values[p] for p in self.objectives]], dtype=torch.double)
        return float(self.acquisition.scalarize(Y)[0])

    def best(self) -> dict[str, Any] | None:
        """The best done evaluation by the (scalarised, signed) objective."""
        best: dict[str, Any] | None = campaign_status(self.ledger, self.name)["best"]
        return best
