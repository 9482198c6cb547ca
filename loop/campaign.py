"""The campaign: cycles of fit → propose → evaluate → record, until a stopping rule fires.

Everything a campaign knows is in its ledger, so any process may die at any instant and the
next one resumes: an open cycle's proposed candidates are dispatched, not re-chosen;
evaluations left ``submitted`` by a dead process are re-attached if the oracle can
(:class:`Reattachable`), else recorded as failed — never submitted twice.

The stages are separate methods (:meth:`Campaign.fit`, :meth:`Campaign.propose`,
:meth:`Campaign.dispatch`, :meth:`Campaign.record`) so a workflow engine can run each as a
task; :meth:`Campaign.run` composes them in plain Python.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botorch.utils.datasets import SupervisedDataset

from loop.acquisition import Acquisition, Pick
from loop.build import build_acquisition, build_oracle, build_space, build_surrogate
from loop.candidate import Candidate
from loop.config import CampaignConfig, load_config
from loop.lease import CampaignLease
from loop.ledger import EvaluationRecord, Ledger, Proposal
from loop.pool import Pool
from loop.report import best_value, campaign_status
from loop.retry import RetryPolicy
from loop.space import SearchSpace
from oracles.base import Oracle, Reattachable, Result
from oracles.errors import EvaluationFailed, OracleSetupError
from surrogates.base import Surrogate, SurrogateError

log = logging.getLogger("alloop")


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


class Campaign:
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
        self.oracle = oracle if oracle is not None else build_oracle(config, self.space)
        missing = [p for p in self.objectives if p not in self.oracle.implemented_properties]
        if missing:
            raise OracleSetupError(
                f"oracle {type(self.oracle).__name__} does not measure objective(s) {missing}; "
                f"it implements {list(self.oracle.implemented_properties)}"
            )
        self.surrogate = (
            surrogate if surrogate is not None else build_surrogate(config, self.space, self.pool)
        )
        self.acquisition: Acquisition = build_acquisition(config)
        spec = config.oracle
        #: Retries of retryable failures in :meth:`run` (``[oracle] retries``).
        self.retry = RetryPolicy(spec.retries, spec.retry_delay_s, spec.retry_backoff)
        self.ledger = ledger if ledger is not None else Ledger(config.ledger_location)
        self.id = self.ledger.open_campaign(
            config.campaign.name, config.model_dump(mode="json"), config.hash, config.campaign.seed
        )
        self._run_id: int | None = None

    @classmethod
    def from_file(cls, path: str | Path, ledger: str | None = None) -> Campaign:
        """A campaign from a TOML file; ``ledger`` overrides the file's ledger location."""
        overrides = {
            "campaign.ledger": str(Path(ledger).resolve()) if ledger and "://" not in ledger else ledger
        }
        return cls(load_config(path, {k: v for k, v in overrides.items() if v}))

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
        self.ledger.close()

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
        cycle = self.ledger.open_cycle(self.id, self.run_id)
        batch = [e for e in self.ledger.evaluations(self.id, ["proposed"]) if e.cycle == cycle]
        stop_reason = None
        if not batch and not any(e.cycle == cycle for e in self.ledger.evaluations(self.id)):
            surrogate = self.fit(cycle)
            stop_reason = self.improvement_exhausted(surrogate)
            if stop_reason is None:
                proposals = self.propose(surrogate, cycle)
                if not proposals:
                    stop_reason = "the candidate pool is exhausted"
                else:
                    batch = self.commit_proposals(cycle, proposals, surrogate)
        outcomes = self.record_all(self.dispatch(batch), self.retry) if batch else []
        return self.close_cycle(cycle, len(batch), outcomes, stop_reason)

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

    # --- stages -----------------------------------------------------------------------------

    def dataset(self) -> SupervisedDataset | None:
        """Training data from the ledger: done evaluations with every objective measured."""
        done = [
            e
            for e in self.ledger.evaluations(self.id, ["done"])
            if all(p in e.values for p in self.objectives)
        ]
        if not done:
            return None
        X = self.encode(e.params for e in done)
        Y = torch.tensor([[e.values[p] for p in self.objectives] for e in done], dtype=torch.double)
        Yvar = None
        if self.config.surrogate.noise == "observed":
            lacking = [
                e.candidate_id for e in done if any(e.uncertainties.get(p) is None for p in self.objectives)
            ]
            if lacking:
                raise SurrogateError(
                    f"surrogate.noise = 'observed' but evaluations of {lacking[:5]} carry no uncertainty"
                )
            Yvar = torch.tensor(
                [[e.uncertainties[p] ** 2 for p in self.objectives] for e in done], dtype=torch.double
            )
        return SupervisedDataset(
            X,
            Y,
            Yvar=Yvar,
            feature_names=self.inputs.feature_names,
            outcome_names=self.objectives,
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
        pending = [e for e in known if e.status in ("proposed", "submitted")]
        X_pending = self.encode(e.params for e in pending) if pending else None
        data = self.dataset()
        X_base = data.X if data is not None else None
        Y_base = data.Y if data is not None else None
        if self.pool is not None:
            taken = {e.candidate_id for e in known}
            free = [i for i, cid in enumerate(self.pool.ids) if cid not in taken]
            if not free:
                return []
            choices = self.pool.X[free]
            picks = acquisition.select_from_pool(surrogate, choices, q, X_base, Y_base, X_pending, seed)
            candidates = [self.pool.candidates[free[p.index]] for p in picks]
        else:
            assert self.space is not None
            picks = acquisition.select_in_space(surrogate, self.space, q, X_base, Y_base, X_pending, seed)
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
        name = self.acquisition.kind if surrogate is not None else "random"
        summary = surrogate.summary() if surrogate is not None else None
        ids = set(self.ledger.propose(self.id, self.run_id, cycle, proposals, name, summary))
        return [e for e in self.ledger.evaluations(self.id, ["proposed"]) if e.id in ids]

    def dispatch(self, batch: Sequence[EvaluationRecord]) -> dict[Future[Result], EvaluationRecord]:
        """Hand the batch to the oracle; each evaluation is marked ``submitted`` (its own
        transaction) the moment the oracle starts it, so one still queued when the process
        dies is dispatched again by the next run rather than written off."""
        by_candidate = {e.candidate_id: e for e in batch}

        def started(candidate: Candidate) -> None:
            self.ledger.mark_submitted(by_candidate[candidate.id].id)

        futures = self.oracle.submit([e.candidate for e in batch], on_start=started)
        for future, evaluation in zip(futures, batch, strict=True):
            external_id = self.oracle.handle(future)
            if external_id is not None:
                self.ledger.set_external_id(evaluation.id, external_id)
        return dict(zip(futures, batch, strict=True))

    def record_all(
        self, futures: Mapping[Future[Result], EvaluationRecord], retry: RetryPolicy | None = None
    ) -> list[str | None]:
        """Record each outcome the moment it arrives; ``None`` for a success, else the error.

        A retryable failure is submitted to the oracle again as ``retry`` says (logged as a
        warning with the attempt number); only the last attempt's outcome is recorded. A setup
        error of the oracle is recorded and then raised once every other evaluation of the
        batch has been recorded.
        """
        retry = retry or RetryPolicy()
        pending = dict(futures)
        attempts = dict.fromkeys((e.id for e in futures.values()), 1)
        due: list[tuple[float, EvaluationRecord]] = []  # (monotonic time, evaluation) to resubmit
        outcomes: list[str | None] = []
        setup_error: OracleSetupError | None = None
        while pending or due:
            for when, evaluation in [d for d in due if d[0] <= time.monotonic()]:
                due.remove((when, evaluation))
                pending[self._resubmit(evaluation)] = evaluation
            timeout = max(min(d[0] for d in due) - time.monotonic(), 0.0) if due else None
            finished, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in finished:
                evaluation = pending.pop(future)
                attempt = attempts[evaluation.id]
                error = future.exception()
                if error is not None and retry.should_retry(error, attempt):
                    delay = retry.delay(attempt)
                    log.warning(
                        "evaluation of %s failed (attempt %d of %d), retrying in %g s: %s",
                        evaluation.candidate_id,
                        attempt,
                        retry.retries + 1,
                        delay,
                        error,
                    )
                    attempts[evaluation.id] = attempt + 1
                    due.append((time.monotonic() + delay, evaluation))
                    continue
                try:
                    outcomes.append(self.record(evaluation, future.result()))
                except OracleSetupError as exc:
                    setup_error = setup_error or exc
                    outcomes.append(self.record_failure(evaluation, f"setup error: {exc}", retryable=False))
                except EvaluationFailed as exc:
                    outcomes.append(
                        self.record_failure(evaluation, f"{type(exc).__name__}: {exc}", exc.retryable)
                    )
                except Exception as exc:  # a broken oracle must not take the campaign down
                    summary = "".join(traceback.format_exception(exc, limit=-3)).strip()
                    outcomes.append(self.record_failure(evaluation, summary, retryable=False))
        if setup_error is not None:
            raise setup_error
        return outcomes

    def _resubmit(self, evaluation: EvaluationRecord) -> Future[Result]:
        """Submit an evaluation (already ``submitted`` in the ledger) to the oracle again."""
        (future,) = self.oracle.submit([evaluation.candidate])
        external_id = self.oracle.handle(future)
        if external_id is not None:
            self.ledger.set_external_id(evaluation.id, external_id)
        return future

    def record(self, evaluation: EvaluationRecord, result: Result) -> None:
        """Commit one result; invalid ones (NaN, infinite, missing) are recorded as failed.

        Raises:
            InvalidResult: through :meth:`record_all`, which records it as a failure.
        """
        if result.candidate_id != evaluation.candidate_id:
            raise EvaluationFailed(
                f"oracle answered for {result.candidate_id} when asked about {evaluation.candidate_id}",
                retryable=False,
            )
        result.check(self.objectives)
        self.ledger.record_result(evaluation.id, result, self.run_id)
        return None

    def record_failure(self, evaluation: EvaluationRecord, error: str, retryable: bool) -> str:
        """Commit a failed evaluation with its reason; returns the reason."""
        log.warning("evaluation of %s failed: %s", evaluation.candidate_id, error.splitlines()[-1])
        self.ledger.record_failure(evaluation.id, error, retryable)
        return error

    def recover(self) -> None:
        """Settle evaluations a dead process left ``submitted``: re-attach or record as failed."""
        stranded = self.ledger.evaluations(self.id, ["submitted"])
        if not stranded:
            return
        if isinstance(self.oracle, Reattachable):
            futures = {self.oracle.reattach(e.candidate, e.external_id): e for e in stranded}
            self.record_all(futures)
            return
        for evaluation in stranded:
            self.record_failure(
                evaluation,
                "interrupted: the process stopped while this evaluation was in flight; "
                "its result never arrived and it is not submitted again",
                retryable=True,
            )

    # --- stopping ---------------------------------------------------------------------------

    def stop_reason(self) -> str | None:
        """Why the campaign should stop now, or ``None``."""
        stopping = self.config.stopping
        experiments, cost = self.ledger.spent(self.id)
        if stopping.max_experiments is not None and experiments >= stopping.max_experiments:
            return f"budget spent: {experiments} of {stopping.max_experiments} experiments"
        if stopping.max_cost is not None and cost >= stopping.max_cost:
            return f"budget spent: cost {cost:g} of {stopping.max_cost:g}"
        reached = self._target_reached()
        if reached:
            return reached
        if stopping.patience is not None:
            stale = self._cycles_without_improvement()
            if stale >= stopping.patience:
                return f"no improvement for {stale} cycles (patience {stopping.patience})"
        if self.pool is not None:
            taken = {e.candidate_id for e in self.ledger.evaluations(self.id)}
            if taken >= set(self.pool.ids):
                return "the candidate pool is exhausted"
        return None

    def _target_reached(self) -> str | None:
        targets = {o.name: o for o in self.config.objectives if o.target is not None}
        if not targets:
            return None
        for e in self.ledger.evaluations(self.id, ["done"]):
            if all(
                (e.values[n] >= o.target) if o.direction == "maximize" else (e.values[n] <= o.target)
                for n, o in targets.items()
                if o.target is not None
            ):
                return f"target reached by {e.candidate_id}: " + ", ".join(
                    f"{n} = {e.values[n]:g}" for n in targets
                )
        return None

    def _cycles_without_improvement(self) -> int:
        best_by_cycle: dict[int, float] = {}
        for e in self.ledger.evaluations(self.id, ["done"]):
            value = self._objective(e)
            best_by_cycle[e.cycle] = max(best_by_cycle.get(e.cycle, -math.inf), value)
        closed = [c.cycle for c in self.ledger.cycles(self.id) if c.status == "closed"]
        best, last_improvement = -math.inf, None
        for cycle in sorted(closed):
            if best_by_cycle.get(cycle, -math.inf) > best:
                best, last_improvement = best_by_cycle[cycle], cycle
        if last_improvement is None:
            return 0
        return sum(c > last_improvement for c in closed)

    def improvement_exhausted(self, surrogate: Surrogate | None) -> str | None:
        """The stop reason of a rule that asks the fitted surrogate whether more experiments
        can still pay off, else ``None``: the best expected improvement is below
        ``min_expected_improvement``, or the near-hull goal (``near_hull_mev``) is met."""
        if surrogate is None:
            return None
        return self._expected_improvement_below(surrogate) or self._near_hull_goal_met(surrogate)

    def _free_pool_rows(self) -> list[int]:
        """Rows of the pool's candidates that the ledger does not know yet."""
        assert self.pool is not None
        taken = {e.candidate_id for e in self.ledger.evaluations(self.id)}
        return [i for i, cid in enumerate(self.pool.ids) if cid not in taken]

    def _expected_improvement_below(self, surrogate: Surrogate) -> str | None:
        threshold = self.config.stopping.min_expected_improvement
        if threshold is None:
            return None
        data = self.dataset()
        assert data is not None
        choices = None if self.pool is None else self.pool.X[self._free_pool_rows()]
        ei = self.acquisition.max_expected_improvement(surrogate, data.Y, choices, self.space)
        if ei < threshold:
            return f"expected improvement {ei:.3g} is below {threshold:g}"
        return None

    def _near_hull_goal_met(self, surrogate: Surrogate) -> str | None:
        """The near-hull goal's stop reason once no unevaluated candidate's lower bound of
        formation energy (the surrogate's mean minus ``near_hull_sigmas`` standard deviations)
        lies within ``near_hull_mev`` of the hull of the done evaluations, else ``None``."""
        from pymatgen.core import Composition

        from loop.stability import could_reach_hull, hull_heights, phase_diagram

        stopping = self.config.stopping
        within_mev = stopping.near_hull_mev
        if within_mev is None or self.pool is None:
            return None
        free = self._free_pool_rows()
        if not free:
            return None  # the pool is exhausted: that rule says so
        name = "formation_energy_per_atom"
        done = [
            (str(e.params["formula"]), e.values[name])
            for e in self.ledger.evaluations(self.id, ["done"])
            if name in e.values
        ]
        formulas = [str(self.pool.candidates[i].params["formula"]) for i in free]
        elements = sorted({el.symbol for f in formulas for el in Composition(f).elements})
        diagram = phase_diagram(done, elements)  # with the pool's elements at 0 eV/atom
        mean, variance = surrogate.predict(self.pool.X[free])
        column = self.objectives.index(name)
        lower = mean[:, column] - stopping.near_hull_sigmas * variance[:, column].sqrt()
        if could_reach_hull(diagram, formulas, lower.tolist(), within_mev):
            return None
        found = sum(h * 1000.0 <= within_mev + 1e-9 for h in hull_heights(diagram, done))
        return (
            f"near-hull goal met: no unevaluated candidate's lower bound within {within_mev:g} meV/atom "
            f"of the hull ({found} structures within it found)"
        )

    # --- reporting --------------------------------------------------------------------------

    def _objective(self, evaluation: EvaluationRecord) -> float:
        Y = torch.tensor([[evaluation.values[p] for p in self.objectives]], dtype=torch.double)
        return float(self.acquisition.scalarize(Y)[0])

    def best(self) -> dict[str, Any] | None:
        """The best done evaluation by the (scalarised, signed) objective."""
        return campaign_status(self.ledger, self.name)["best"]

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
        mean, variance = surrogate.predict(torch.stack([p.X for p in picks]))
        return [
            Proposal(c, p.value, mean[i].tolist(), variance[i].sqrt().tolist())
            for i, (p, c) in enumerate(zip(picks, candidates, strict=True))
        ]


def _random_like(acquisition: Acquisition) -> Acquisition:
    return Acquisition("random", acquisition.weights.tolist(), chunk_size=acquisition.chunk_size)
