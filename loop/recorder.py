"""Evaluating a batch and recording it: the campaign's side that talks to the oracle.

Each evaluation is marked ``submitted`` the moment the oracle starts it, each outcome is
committed the moment it arrives, a retryable failure is submitted again as the retry policy
says (only the last attempt is recorded), and evaluations a dead process left in flight are
re-attached (:class:`~oracles.base.Reattachable` oracles) or recorded as interrupted, never
submitted twice.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait

from loop.candidate import Candidate
from loop.ledger import EvaluationRecord, Ledger
from loop.retry import RetryPolicy
from oracles.base import Oracle, Reattachable, Result
from oracles.errors import EvaluationFailed, OracleSetupError

log = logging.getLogger("alloop")


class CampaignRows:
    """What the campaign's mixins read of it: its ledger and its rows there."""

    @property
    def ledger(self) -> Ledger:
        """The campaign's ledger."""
        raise NotImplementedError

    @property
    def id(self) -> int:
        """The campaign's row in the ledger."""
        raise NotImplementedError

    @property
    def run_id(self) -> int:
        """This process's run of the campaign."""
        raise NotImplementedError


class EvaluationRecorder(CampaignRows):
    """Mixin of :class:`~loop.campaign.Campaign`: dispatch, record, retry, recover.

    It needs the campaign's ``ledger``, ``id``, ``run_id``, ``oracle``, ``objectives``,
    ``log_scale`` and ``retry``.
    """

    oracle: Oracle
    objectives: list[str]
    log_scale: list[str]
    """Objectives modelled as logarithms: a result must have them > 0."""
    retry: RetryPolicy

    def dispatch(self, batch: Sequence[EvaluationRecord]) -> dict[Future[Result], EvaluationRecord]:
        """Hand the batch to the oracle; each evaluation is marked ``submitted`` (its own
        transaction) the moment the oracle starts it, so one still queued when the process
        dies is dispatched again by the next run rather than written off."""
        by_oracle: dict[int, list[EvaluationRecord]] = {}
        for evaluation in batch:
            by_oracle.setdefault(id(self.oracle_for(evaluation)), []).append(evaluation)
        dispatched: dict[Future[Result], EvaluationRecord] = {}
        for part in by_oracle.values():
            dispatched.update(self._submit(self.oracle_for(part[0]), part))
        return dispatched

    def _submit(
        self, oracle: Oracle, part: Sequence[EvaluationRecord]
    ) -> dict[Future[Result], EvaluationRecord]:
        """Hand evaluations (of one fidelity: each candidate once) to their oracle."""
        by_candidate = {e.candidate_id: e for e in part}

        def started(candidate: Candidate) -> None:
            self.ledger.mark_submitted(by_candidate[candidate.id].id)

        futures = oracle.submit([e.candidate for e in part], on_start=started)
        for future, evaluation in zip(futures, part, strict=True):
            external_id = oracle.handle(future)
            if external_id is not None:
                self.ledger.set_external_id(evaluation.id, external_id)
        return dict(zip(futures, part, strict=True))

    def oracle_for(self, evaluation: EvaluationRecord) -> Oracle:
        """The oracle that measures ``evaluation`` (one per fidelity in a multi-fidelity campaign)."""
        return self.oracle

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
                    self.record(evaluation, future.result())
                    outcomes.append(None)
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
        oracle = self.oracle_for(evaluation)
        (future,) = oracle.submit([evaluation.candidate])
        external_id = oracle.handle(future)
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
        result.check(self.objectives, positive=self.log_scale)
        self.ledger.record_result(evaluation.id, result, self.run_id)

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
        futures = {}
        for evaluation in stranded:
            oracle = self.oracle_for(evaluation)
            if isinstance(oracle, Reattachable):
                futures[oracle.reattach(evaluation.candidate, evaluation.external_id)] = evaluation
                continue
            self.record_failure(
                evaluation,
                "interrupted: the process stopped while this evaluation was in flight; "
                "its result never arrived and it is not submitted again",
                retryable=True,
            )
        if futures:
            self.record_all(futures)
