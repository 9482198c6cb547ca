"""How a flow runs a campaign: the ``[execution]`` section and the task runner it names.

``[execution]`` is read from the campaign's TOML file next to the core configuration::

    [execution]
    task_runner = "dask"                          # or "thread" (the default)
    cluster_class = "dask_jobqueue.SLURMCluster"  # default: a distributed.LocalCluster
    cluster_kwargs = { cores = 8, memory = "16GB", walltime = "02:00:00" }
    adapt_kwargs = { minimum = 1, maximum = 10 }
    retries = 2                                   # retries of retryable oracle errors
    approval = true                               # a human approves each batch

Prefect and Dask are the distributed engines; nothing here schedules anything itself.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from loop.config import CampaignConfig, ExecutionSection, load_config


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
