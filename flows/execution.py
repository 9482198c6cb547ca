"""How a flow runs a campaign: the ``[execution]`` section and the task runner it names.

``[execution]`` is read from the campaign's TOML file next to the core configuration::

    [execution]
    task_runner = "dask"                          # or "thread" (the default)
    cluster_class = "dask_jobqueue.SLURMCluster"  # default: a distributed.LocalCluster
    cluster_kwargs = { cores = 8, memory = "16GB", walltime = "02:00:00" }
    adapt_kwargs = { minimum = 1, maximum = 10 }
    evaluations_per_task = 8                      # candidates per task (pilot-job batches)
    retries = 2                                   # retries of retryable oracle errors
    approval = true                               # a human approves each batch

A multi-fidelity campaign's ``[[oracles]]`` entry may name its own ``task_runner``, so that
cheap fidelities run in the flow's threads and expensive ones on the cluster::

    [[oracles]]
    fidelity = "screen"
    task_runner = "thread"

Prefect and Dask are the distributed engines; nothing here schedules anything itself.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.tasks import OracleSpec, OutcomeStore, evaluate_batch, evaluate_candidate
from loop.campaign import Campaign
from loop.config import CampaignConfig, ExecutionSection, load_config
from loop.config_execution import TaskRunnerKind
from loop.ledger import EvaluationRecord
from loop.retry import RetryPolicy

OUTCOMES_DIR = ".alloop-outcomes"
"""Where Dask tasks keep finished outcomes, beside the campaign file (see :class:`OutcomeStore`)."""


def load_campaign(path: str | Path) -> tuple[CampaignConfig, ExecutionSection]:
    """The configuration and the ``[execution]`` section of one campaign file.

    Raises:
        ConfigError: the file is missing, is not TOML, or a key is wrong (named in the message).
    """
    config = load_config(path)
    return config, config.execution


def execution_of(config: CampaignConfig) -> ExecutionSection:
    """The configuration's ``[execution]`` section."""
    return config.execution


def build_task_runner(
    execution: ExecutionSection, capacity: int = 1, kind: TaskRunnerKind | None = None
) -> TaskRunner:
    """The Prefect task runner that evaluates a campaign's candidates.

    Args:
        execution: The ``[execution]`` section.
        capacity: The oracle's capacity: the thread runner's width unless ``max_workers`` is set.
        kind: The runner, when a fidelity names its own; default: ``execution.task_runner``.
    """
    if (kind or execution.task_runner) == "thread":
        return ThreadPoolTaskRunner(max_workers=execution.max_workers or max(1, capacity))
    from prefect_dask import DaskTaskRunner

    if execution.address is not None:
        return DaskTaskRunner(address=execution.address)
    return DaskTaskRunner(
        cluster_class=execution.cluster_class or "distributed.LocalCluster",
        cluster_kwargs=dict(execution.cluster_kwargs),
        adapt_kwargs=None if execution.adapt_kwargs is None else dict(execution.adapt_kwargs),
    )


class LazyTaskRunner:
    """A task runner started on the first submission (a Dask cluster only when there is work),
    and shut down on exit; a context manager.

    Args:
        execution: The ``[execution]`` section.
        capacity: The oracle's capacity (the thread runner's default width).
        kind: The runner, when a fidelity names its own; default: ``execution.task_runner``.
    """

    def __init__(
        self, execution: ExecutionSection, capacity: int = 1, kind: TaskRunnerKind | None = None
    ) -> None:
        self.execution, self.capacity = execution, capacity
        self.kind: TaskRunnerKind = kind or execution.task_runner
        self.runner: TaskRunner | None = None
        self._stack = ExitStack()

    def submit(self, task: Task[Any, Any], parameters: dict[str, Any]) -> PrefectFuture[Any]:
        if self.runner is None:
            self.runner = self._stack.enter_context(
                build_task_runner(self.execution, self.capacity, self.kind)
            )
        return self.runner.submit(task, parameters)

    def __enter__(self) -> LazyTaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.runner = None


class TaskRunners:
    """The task runners of a campaign's evaluations, one per fidelity; a context manager that
    shuts down those it started.

    A fidelity runs where its ``[[oracles]]`` entry's ``task_runner`` says, else where
    ``[execution] task_runner`` says (a single-oracle campaign has one fidelity). Each fidelity
    on threads has its own pool, as wide as its oracle's capacity (or ``max_workers``); the
    fidelities on Dask share the one cluster ``[execution]`` describes. Nothing starts before
    its first evaluation.

    Args:
        campaign: The campaign (its configuration and the oracle of each fidelity).
        execution: The ``[execution]`` section.
    """

    def __init__(self, campaign: Campaign, execution: ExecutionSection) -> None:
        self.campaign, self.execution = campaign, execution
        self.kinds: dict[str, TaskRunnerKind] = {
            e.fidelity: e.task_runner for e in campaign.config.oracles or [] if e.task_runner is not None
        }
        self._runners: dict[str, LazyTaskRunner] = {}
        self._stack = ExitStack()

    def kind(self, fidelity: str) -> TaskRunnerKind:
        """Where the fidelity's evaluations run."""
        return self.kinds.get(fidelity, self.execution.task_runner)

    def runner(self, evaluation: EvaluationRecord) -> LazyTaskRunner:
        """The task runner of the evaluation's fidelity."""
        kind = self.kind(evaluation.fidelity)
        key = evaluation.fidelity if kind == "thread" else kind
        if key not in self._runners:
            capacity = self.campaign.oracle_for(evaluation).capacity
            self._runners[key] = self._stack.enter_context(LazyTaskRunner(self.execution, capacity, kind))
        return self._runners[key]

    def __enter__(self) -> TaskRunners:
        return self

    def __exit__(self, *exc: object) -> None:
        self._runners.clear()
        self._stack.close()


@contextmanager
def dispatch(
    campaign: Campaign,
    execution: ExecutionSection,
    runners: TaskRunners,
    tag: str,
    batch: list[EvaluationRecord],
) -> Iterator[dict[PrefectFuture[Any], list[EvaluationRecord]]]:
    """Submit a batch's evaluations, each fidelity's to its own task runner; yields each task's
    future with the evaluations it measures.

    One ``evaluate-candidate`` task per candidate, or ``evaluate-batch`` tasks of
    ``evaluations_per_task`` candidates of one fidelity. Threads share the campaign's oracle
    of the fidelity (quoted: Prefect must not walk into it); Dask workers build their own from
    the configuration and keep their outcomes in a fresh :class:`OutcomeStore` per fidelity
    under ``.alloop-outcomes/`` beside the campaign file. A multi-fidelity campaign's tasks
    are named and tagged (``fidelity:<name>``, for Prefect's tag concurrency limits) with
    their fidelity. On exit, once the batch is recorded, the tasks are released (a worker lost
    later must not make Dask compute them again) and the stores are removed.
    """
    futures: dict[PrefectFuture[Any], list[EvaluationRecord]] = {}
    stores: list[OutcomeStore] = []
    try:
        for part in _by_fidelity(batch):
            runner = runners.runner(part[0])
            store = None
            if runner.kind == "dask":
                store = OutcomeStore(str(campaign.config.resolve(OUTCOMES_DIR) / uuid.uuid4().hex))
                stores.append(store)
            futures.update(_submit(campaign, execution, runner, store, tag, part))
        yield futures
    finally:
        for future in futures:
            if isinstance(future, PrefectWrappedFuture):
                future.wrapped_future.cancel()
        for store in stores:
            shutil.rmtree(store.folder, ignore_errors=True)


def _by_fidelity(batch: list[EvaluationRecord]) -> list[list[EvaluationRecord]]:
    """The batch in parts of one fidelity each, in the order the fidelities first appear."""
    parts: dict[str, list[EvaluationRecord]] = {}
    for evaluation in batch:
        parts.setdefault(evaluation.fidelity, []).append(evaluation)
    return list(parts.values())


def _submit(
    campaign: Campaign,
    execution: ExecutionSection,
    runner: LazyTaskRunner,
    store: OutcomeStore | None,
    tag: str,
    part: list[EvaluationRecord],
) -> dict[PrefectFuture[Any], list[EvaluationRecord]]:
    """Submit the evaluations of one fidelity to its runner (see :func:`dispatch`)."""
    fidelity = part[0].fidelity
    options: dict[str, Any] = {}
    if campaign.config.oracles is not None:  # a multi-fidelity campaign
        tag, options = f"{tag}-{fidelity}", {"tags": {f"fidelity:{fidelity}"}}
    threads = runner.kind == "thread"
    common = {
        "oracle": quote(campaign.oracle_for(part[0])) if threads else OracleSpec(campaign.config, fidelity),
        "retry": RetryPolicy(execution.retries, execution.retry_delay_s, backoff=1.0),
        "store": store,
    }
    size = execution.evaluations_per_task
    futures: dict[PrefectFuture[Any], list[EvaluationRecord]] = {}
    for start in range(0, len(part), size):
        chunk = part[start : start + size]
        if size == 1:
            name = f"evaluate-{tag}-{chunk[0].candidate_id[:10]}"
            future = runner.submit(
                evaluate_candidate.with_options(task_run_name=name, **options),
                {"candidate": chunk[0].candidate, **common},
            )
        else:
            name = f"evaluate-{tag}-{start // size}"
            candidates = [e.candidate for e in chunk]
            future = runner.submit(
                evaluate_batch.with_options(task_run_name=name, **options),
                {"candidates": candidates, **common},
            )
        futures[future] = chunk
    return futures
