"""``[execution]``: how a workflow engine (``flows/``) runs the campaign.

The engine-free loop ignores it, and it is not part of the campaign's identity.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from loop.config_base import Strict

TaskRunnerKind = Literal["thread", "dask"]
"""Where a flow's oracle evaluations run: threads of the flow process, or a Dask cluster."""


class ExecutionSection(Strict):
    """How a workflow engine (``flows/``) runs the campaign; the engine-free loop ignores it,
    and it is not part of the campaign's identity (a campaign may move from threads to Dask)."""

    task_runner: TaskRunnerKind = "thread"
    """Where oracle evaluations run: threads of the flow process, or a Dask cluster (a
    fidelity's ``[[oracles]]`` entry may name its own)."""
    max_workers: int | None = Field(default=None, ge=1)
    """Thread runner: evaluations at once (default: the oracle's capacity)."""
    address: str | None = None
    """Dask: the address of a running scheduler (``tcp://host:8786``) instead of a new cluster."""
    cluster_class: str | None = None
    """Dask: the cluster to start, as ``module.Class`` (default ``distributed.LocalCluster``)."""
    cluster_kwargs: dict[str, Any] = {}  # noqa: RUF012 (a pydantic default, copied per instance)
    """Dask: keyword arguments of the cluster class (``n_workers``, ``cores``, ``walltime``...)."""
    adapt_kwargs: dict[str, Any] | None = None
    """Dask: adaptive scaling (``minimum``, ``maximum``); default: a fixed-size cluster."""
    evaluations_per_task: int = Field(default=1, ge=1)
    """Candidates one task evaluates one after another: many short oracle calls per Dask task
    and batch job (as pilot jobs do), so the scheduler and the batch queue are not flooded."""
    retries: int = Field(default=0, ge=0, le=100)
    """Retries of an evaluation that failed with a retryable oracle error (never other errors)."""
    retry_delay_s: float = Field(default=0.0, ge=0)
    """Seconds between retries."""
    approval: bool = False
    """Pause before each batch is dispatched until a person approves, rejects or edits it."""
    approval_timeout_s: int = Field(default=24 * 3600, ge=1)
    """How long a paused batch waits for its reviewer before the flow run fails."""
    lock_wait_s: float = Field(default=0.0, ge=0)
    """How long a run waits for another run of the same campaign to finish before it exits."""
    lock_lease_s: float = Field(default=60.0, ge=1)
    """The campaign lock's lease, renewed while held; a holder that died frees it after this."""

    @model_validator(mode="after")
    def _consistent(self) -> ExecutionSection:
        dask_only = {
            "address": self.address,
            "cluster_class": self.cluster_class,
            "cluster_kwargs": self.cluster_kwargs or None,
            "adapt_kwargs": self.adapt_kwargs,
        }
        if self.task_runner != "dask":
            given = [k for k, v in dask_only.items() if v is not None]
            if given:
                raise ValueError(f"{given} only apply to task_runner = 'dask'")
        elif self.address is not None and (self.cluster_class or self.cluster_kwargs or self.adapt_kwargs):
            raise ValueError("give either 'address' (an existing scheduler) or a cluster to start, not both")
        if self.task_runner == "dask" and self.max_workers is not None:
            raise ValueError("'max_workers' applies to task_runner = 'thread'; size a Dask cluster instead")
        return self
