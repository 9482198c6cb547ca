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


def build_task_runner(execution: ExecutionSection, capacity: int = 1) -> TaskRunner:
    """The Prefect task runner that evaluates a campaign's candidates.

    Args:
        execution: The ``[execution]`` section.
        capacity: The oracle's capacity: the thread runner's width unless ``max_workers`` is set.
    """
    if execution.task_runner == "thread":
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
    """

    def __init__(self, execution: ExecutionSection, capacity: int = 1) -> None:
        self.execution, self.capacity = execution, capacity
        self.runner: TaskRunner | None = None
        self._stack = ExitStack()

    def submit(self, task: Task[Any, Any], parameters: dict[str, Any]) -> PrefectFuture[Any]:
        if self.runner is None:
            self.runner = self._stack.enter_context(build_task_runner(self.execution, self.capacity))
        return self.runner.submit(task, parameters)

    def __enter__(self) -> LazyTaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.runner = None


@contextmanager
def dispatch(
    campaign: Campaign,
    execution: ExecutionSection,
    runner: LazyTaskRunner,
    tag: str,
    batch: list[EvaluationRecord],
) -> Iterator[dict[PrefectFuture[Any], list[EvaluationRecord]]]:
    """Submit a batch's evaluations; yields each task's future with the evaluations it measures.

    One ``evaluate-candidate`` task per candidate, or ``evaluate-batch`` tasks of
    ``evaluations_per_task`` candidates. Threads share the campaign's oracle (quoted: Prefect
    must not walk into it); Dask workers build their own from the configuration and keep
    their outcomes in a fresh :class:`OutcomeStore` under ``.alloop-outcomes/`` beside the
    campaign file. On exit, once the batch is recorded, the tasks are released (a worker lost
    later must not make Dask compute them again) and the store is removed.
    """
    threads = execution.task_runner == "thread"
    store = None if threads else OutcomeStore(str(campaign.config.resolve(OUTCOMES_DIR) / uuid.uuid4().hex))
    common = {
        "oracle": quote(campaign.oracle) if threads else OracleSpec(campaign.config),
        "retry": RetryPolicy(execution.retries, execution.retry_delay_s, backoff=1.0),
        "store": store,
    }
    size = execution.evaluations_per_task
    futures: dict[PrefectFuture[Any], list[EvaluationRecord]] = {}
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        if size == 1:
            name = f"evaluate-{tag}-{chunk[0].candidate_id[:10]}"
            future = runner.submit(
                evaluate_candidate.with_options(task_run_name=name),
                {"candidate": chunk[0].candidate, **common},
            )
        else:
            name = f"evaluate-{tag}-{start // size}"
            candidates = [e.candidate for e in chunk]
            future = runner.submit(
                evaluate_batch.with_options(task_run_name=name), {"candidates": candidates, **common}
            )
        futures[future] = chunk
    try:
        yield futures
    finally:
        for future in futures:
            if isinstance(future, PrefectWrappedFuture):
                future.wrapped_future.cancel()
        if store is not None:
            shutil.rmtree(store.folder, ignore_errors=True)
