"""The loop's stages as Prefect tasks: fit, propose, evaluate (one task per candidate), record.

Every task calls a :class:`~loop.campaign.Campaign` stage and adds nothing but operations
(names, retries, observability): the logic stays in :mod:`loop`.

Fit, propose and record run in the flow's process (they are called, not submitted), because
the ledger is written by the flow process only. Evaluations are submitted to the task runner:
threads of the flow process, which share the campaign's oracle, or Dask workers, which
rebuild the oracle from the configuration once per process (oracles hold locks and threads,
which do not travel). What comes back from a worker travels as plain data.

Retries: an evaluation is retried only when the oracle raised a retryable
:class:`~oracles.errors.EvaluationFailed`; setup errors and other exceptions never are
(:class:`~loop.retry.RetryPolicy`, the engine-free loop's policy too).
Time-outs are the oracle's business (:class:`~oracles.errors.EvaluationTimeout`): Prefect
cannot interrupt blocking code running in a thread.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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
from loop.ledger import EvaluationRecord
from loop.retry import RetryPolicy
from oracles.base import Oracle, Result
from oracles.errors import OracleError
from surrogates.base import Surrogate

# --- what travels between the flow and the workers ---------------------------------------


@dataclass(frozen=True)
class OracleSpec:
    """How a worker process builds the campaign's oracle: from the configuration."""

    config: CampaignConfig


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


_worker_oracles: dict[str, Oracle] = {}
_worker_lock = threading.Lock()


def worker_oracle(spec: OracleSpec) -> Oracle:
    """The oracle of a configuration, built once per (worker) process."""
    key = f"{spec.config.hash}:{spec.config.ledger_location}"
    with _worker_lock:
        if key not in _worker_oracles:
            space, _ = build_space(spec.config)
            _worker_oracles[key] = build_oracle(spec.config, space)
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


@task(
    name="evaluate-candidate",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retryable_oracle_error,
)
def evaluate_candidate(
    candidate: Candidate, oracle: Oracle | OracleSpec, retry: RetryPolicy | None = None
) -> dict[str, Any]:
    """Measure one candidate; returns the :class:`Result` as plain data (:meth:`Result.as_dict`).

    Retryable failures are tried again in the task as ``retry`` says, each logged as a
    warning with its attempt number (Prefect's own ``retries`` log every attempt as an error).

    Raises:
        OracleFailure: the oracle raised an :class:`~oracles.errors.OracleError` (the last
            attempt's).
    """
    if isinstance(oracle, OracleSpec):
        oracle = worker_oracle(oracle)
    retry = retry or RetryPolicy()
    attempt = 1
    while True:
        try:
            return oracle.evaluate(candidate).as_dict()
        except OracleError as exc:
            if not retry.should_retry(exc, attempt):
                raise OracleFailure.wrap(exc) from None
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


def _settle(future: PrefectFuture[dict[str, Any]]) -> Result:
    try:
        return Result.from_dict(future.result())
    except OracleFailure as failure:
        raise failure.original() from None


@task(name="record-results", cache_policy=NO_CACHE, persist_result=False)
def record_results(
    campaign: Campaign, futures: Mapping[PrefectFuture[dict[str, Any]], EvaluationRecord]
) -> list[str | None]:
    """Commit each evaluation the moment its task finishes (:meth:`Campaign.record_all`)."""
    if not futures:
        return []
    with ThreadPoolExecutor(max_workers=len(futures), thread_name_prefix="settle") as pool:
        settled: dict[Future[Result], EvaluationRecord] = {
            pool.submit(_settle, future): evaluation for future, evaluation in futures.items()
        }
        return campaign.record_all(settled)
