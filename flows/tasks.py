"""The loop's stages as Prefect tasks: fit, propose, evaluate (one task per candidate), record.

Every task calls a :class:`~loop.campaign.Campaign` stage and adds nothing but operations
(names, retries, observability): the logic stays in :mod:`loop`.

Fit, propose and record run in the flow's process (they are called, not submitted), because
the ledger is written by the flow process only. Evaluations are submitted to the task runner
of their fidelity (one fidelity unless the campaign has ``[[oracles]]``): threads of the flow
process, which share the campaign's oracle, or Dask workers, which rebuild the fidelity's
oracle from the configuration once per process (oracles hold locks and threads, which do not
travel). What comes back from a worker travels as plain data.

Lost workers: Dask runs a task again on another worker when the one running it dies (a batch
job killed at its walltime or preempted), and even when the task had finished but its result
was still held by the dead worker. So that a task run twice never evaluates twice, Dask tasks
keep each finished outcome in an :class:`OutcomeStore` (a folder the workers share) and a
second run returns it. A task whose workers died ``allowed-failures`` times (Dask's setting)
is recorded once as interrupted (retryable), and the campaign goes on. Many short evaluations
can share one task (:func:`evaluate_batch`), as pilot jobs do.

Retries: an evaluation is retried only when the oracle raised a retryable
:class:`~oracles.errors.EvaluationFailed`; setup errors and other exceptions never are
(:class:`~loop.retry.RetryPolicy`, the engine-free loop's policy too).
Time-outs are the oracle's business (:class:`~oracles.errors.EvaluationTimeout`): Prefect
cannot interrupt blocking code running in a thread.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.futures import PrefectFuture
from prefect.states import State

from loop.build import build_oracle, build_space
from loop.campaign import Campaign
from loop.candidate import Candidate
from loop.config import CampaignConfig
from loop.config_oracles import OracleSection
from loop.ledger import EvaluationRecord
from loop.retry import RetryPolicy
from loop.schema import DEFAULT_FIDELITY
from oracles.base import Oracle, Result
from oracles.errors import EvaluationInterrupted, OracleError
from surrogates.base import Surrogate

#: The kind of an interrupted evaluation's failure outcome (never kept: it runs again).
_INTERRUPTED = f"{EvaluationInterrupted.__module__}:{EvaluationInterrupted.__qualname__}"

# --- what travels between the flow and the workers ---------------------------------------


@dataclass(frozen=True)
class OracleSpec:
    """How a worker process builds one of the campaign's oracles: from the configuration, the
    ``fidelity``'s ``[[oracles]]`` entry (a single-oracle campaign's ``[oracle]`` otherwise)."""

    config: CampaignConfig
    fidelity: str = DEFAULT_FIDELITY

    def section(self) -> OracleSection | None:
        """The fidelity's oracle section; ``None``: the configuration's own (``[oracle]``)."""
        entries = self.config.oracles or []
        return next((e.oracle for e in entries if e.fidelity == self.fidelity), None)


class OracleFailure(Exception):
    """An oracle error on its way back from a worker, with its class and ``retryable`` flag.

    Oracle errors take ``retryable`` as a keyword, which pickling drops; this one carries it
    in its arguments and becomes the original error again in the flow (:meth:`original`).
    """

    def __init__(self, kind: str, message: str, retryable: bool) -> None:
        super().__init__(kind, message, retryable)
        self.kind, self.message, self.retryable = kind, message, retryable

    @classmethod
    def wrap(cls, exc: OracleError) -> OracleFailure:
        kind = f"{type(exc).__module__}:{type(exc).__qualname__}"
        return cls(kind, str(exc), bool(exc.retryable))

    def original(self) -> OracleError:
        """The oracle error as the oracle raised it (same class, message and ``retryable``)."""
        module, _, name = self.kind.partition(":")
        error_class: Any = importlib.import_module(module)
        for part in name.split("."):
            error_class = getattr(error_class, part)
        error = error_class.__new__(error_class)
        Exception.__init__(error, self.message)
        error.retryable = self.retryable
        return error

    def __str__(self) -> str:
        return f"{self.kind.rpartition(':')[2]}: {self.message}"


Outcome = dict[str, Any]
"""One evaluation's outcome as plain data: ``{"result": Result.as_dict()}`` or
``{"failure": [kind, message, retryable]}`` (an :class:`OracleFailure`'s arguments)."""


@dataclass(frozen=True)
class OutcomeStore:
    """A folder where Dask tasks keep each finished outcome, one JSON file per candidate, so
    that a task Dask runs again (its worker was lost) returns it instead of evaluating again.

    One folder per dispatched batch, on a filesystem every worker sees (beside the campaign
    file); the flow removes it once the batch is recorded.
    """

    folder: str

    def get(self, candidate_id: str) -> Outcome | None:
        """The outcome a previous run of the task kept, if any."""
        try:
            return dict(json.loads((Path(self.folder) / f"{candidate_id}.json").read_text()))
        except FileNotFoundError:
            return None

    def put(self, candidate_id: str, outcome: Outcome) -> None:
        """Keep an outcome (written whole or not at all)."""
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{candidate_id}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(json.dumps(outcome))
        tmp.replace(folder / f"{candidate_id}.json")


_worker_oracles: dict[str, Oracle] = {}
_worker_lock = threading.Lock()


def worker_oracle(spec: OracleSpec) -> Oracle:
    """The oracle of a configuration's fidelity, built once per (worker) process."""
    key = f"{spec.config.hash}:{spec.config.ledger_location}:{spec.fidelity}"
    with _worker_lock:
        if key not in _worker_oracles:
            space, _ = build_space(spec.config)
            _worker_oracles[key] = build_oracle(spec.config, space, spec.section())
        return _worker_oracles[key]


# --- tasks --------------------------------------------------------------------------------


def retryable_oracle_error(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: retry only retryable oracle errors."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(error, OracleFailure | OracleError) and bool(error.retryable)


@task(name="recover", cache_policy=NO_CACHE, persist_result=False)
def recover_stranded(campaign: Campaign) -> None:
    """Settle evaluations a dead run left ``submitted`` (re-attach or record as failed)."""
    campaign.recover()


@task(name="fit-surrogate", cache_policy=NO_CACHE, persist_result=False)
def fit_surrogate(campaign: Campaign, cycle: int) -> Surrogate | None:
    """The surrogate fitted to the ledger (``None`` before any data)."""
    return campaign.fit(cycle)


@task(name="propose-batch", cache_policy=NO_CACHE, persist_result=False)
def propose_batch(
    campaign: Campaign, surrogate: Surrogate | None, cycle: int
) -> tuple[list[EvaluationRecord], str | None]:
    """Choose the cycle's batch and commit it to the ledger, or say why the campaign stops
    (:meth:`Campaign.decide <loop.campaign.Campaign.decide>`)."""
    return campaign.decide(surrogate, cycle)


def _measure(candidate: Candidate, oracle: Oracle | OracleSpec, retry: RetryPolicy | None) -> Outcome:
    """Evaluate once (retryable failures retried as ``retry`` says); the outcome as data.

    Retries are logged as warnings with their attempt number (Prefect's own ``retries`` log
    every attempt as an error).
    """
    if isinstance(oracle, OracleSpec):
        oracle = worker_oracle(oracle)
    retry = retry or RetryPolicy()
    attempt = 1
    while True:
        try:
            return {"result": oracle.evaluate(candidate).as_dict()}
        except OracleError as exc:
            if not retry.should_retry(exc, attempt):
                failure = OracleFailure.wrap(exc)
                return {"failure": [failure.kind, failure.message, failure.retryable]}
            get_run_logger().warning(
                "evaluation of %s failed (attempt %d of %d), retrying in %g s: %s",
                candidate.id,
                attempt,
                retry.retries + 1,
                retry.delay(attempt),
                exc,
            )
            time.sleep(retry.delay(attempt))
            attempt += 1


def _outcome(
    candidate: Candidate, oracle: Oracle | OracleSpec, retry: RetryPolicy | None, store: OutcomeStore | None
) -> Outcome:
    """The kept outcome when a previous run of the task got this far, else a new one (kept,
    unless it was interrupted: a run of the task on another worker evaluates it afresh)."""
    kept = None if store is None else store.get(candidate.id)
    if kept is not None:
        return kept
    outcome = _measure(candidate, oracle, retry)
    if store is not None and outcome.get("failure", [None])[0] != _INTERRUPTED:
        store.put(candidate.id, outcome)
    return outcome


def _result_data(outcome: Outcome) -> dict[str, Any]:
    """The result of an outcome as data (:meth:`Result.as_dict`), or its failure raised as
    :class:`OracleFailure`."""
    if "failure" in outcome:
        raise OracleFailure(*outcome["failure"])
    return dict(outcome["result"])


@task(
    name="evaluate-candidate",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retryable_oracle_error,
)
def evaluate_candidate(
    candidate: Candidate,
    oracle: Oracle | OracleSpec,
    retry: RetryPolicy | None = None,
    store: OutcomeStore | None = None,
) -> dict[str, Any]:
    """Measure one candidate; returns the :class:`Result` as plain data (:meth:`Result.as_dict`).

    Args:
        candidate: What to measure.
        oracle: The oracle (threads), or how a worker builds it (Dask).
        retry: Retries of retryable oracle errors, in the task.
        store: Where a Dask task keeps its outcome (see :class:`OutcomeStore`).

    Raises:
        OracleFailure: the oracle raised an :class:`~oracles.errors.OracleError` (the last
            attempt's).
    """
    return _result_data(_outcome(candidate, oracle, retry, store))


@task(name="evaluate-batch", cache_policy=NO_CACHE, persist_result=False)
def evaluate_batch(
    candidates: Sequence[Candidate],
    oracle: Oracle | OracleSpec,
    retry: RetryPolicy | None = None,
    store: OutcomeStore | None = None,
) -> list[Outcome]:
    """Measure several candidates one after another in one task (a pilot job's batch).

    Each outcome is kept in ``store`` the moment it is known, so a run of the task after a
    lost worker resumes at the first candidate without one.

    Returns:
        One outcome per candidate, in order; failures are data, not exceptions (a broken
        oracle's exception fails its candidate, not the batch).
    """
    outcomes: list[Outcome] = []
    for candidate in candidates:
        try:
            outcomes.append(_outcome(candidate, oracle, retry, store))
        except Exception as exc:
            kind = f"{type(exc).__module__}:{type(exc).__qualname__}"
            outcomes.append({"failure": [kind, str(exc), False]})
    return outcomes


def _lost(exc: BaseException) -> EvaluationInterrupted | None:
    """An interruption to record when ``exc`` says Dask gave up on a task after losing the
    workers that ran it (``KilledWorker``), else ``None``."""
    if type(exc).__name__ != "KilledWorker":
        return None
    return EvaluationInterrupted(
        "interrupted: the workers running this evaluation were lost (batch jobs killed at "
        f"their walltime or preempted) as many times as Dask allows; not run again: {exc}"
    )


def _settle(future: PrefectFuture[Any], index: int) -> Result:
    """The result of one evaluation: an ``evaluate-candidate`` task's own, or the
    ``index``-th of an ``evaluate-batch`` task's outcomes.

    Raises:
        OracleError: the oracle's error, as it raised it.
        EvaluationFailed: the task was interrupted (its workers were lost).
    """
    try:
        outcome = future.result()
        data = _result_data(outcome[index]) if isinstance(outcome, list) else outcome
    except OracleFailure as failure:
        raise failure.original() from None
    except Exception as exc:
        interrupted = _lost(exc)
        if interrupted is None:
            raise
        raise interrupted from None
    return Result.from_dict(data)


@task(name="record-results", cache_policy=NO_CACHE, persist_result=False)
def record_results(
    campaign: Campaign, futures: Mapping[PrefectFuture[Any], Sequence[EvaluationRecord]]
) -> list[str | None]:
    """Commit each evaluation the moment its task finishes (:meth:`Campaign.record_all`).

    Args:
        campaign: The campaign.
        futures: Each task's future with the evaluations it measures: one for an
            ``evaluate-candidate`` task, in order for an ``evaluate-batch`` task.
    """
    pairs = [(future, index, e) for future, batch in futures.items() for index, e in enumerate(batch)]
    if not pairs:
        return []
    with ThreadPoolExecutor(max_workers=len(pairs), thread_name_prefix="settle") as pool:
        settled: dict[Future[Result], EvaluationRecord] = {
            pool.submit(_settle, future, index): evaluation for future, index, evaluation in pairs
        }
        return campaign.record_all(settled)
