"""The ``[execution]`` section, and scale-out on Dask with the same results as the loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.campaign import campaign_flow
from flows.execution import ExecutionSection, load_campaign
from loop.campaign import Campaign
from loop.config import load_config
from loop.errors import ConfigError
from oracles.simulated import read_journal
from tests.flows.helpers import contents


def test_dask_runner_evaluates_in_worker_processes_with_identical_results(
    flow_campaign: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    oracle = f'latency_s = 0.3\nfailure_probability = 0.2\ncapacity = 2\njournal = "{journal}"'
    plain = flow_campaign(name="plain.toml", ledger="plain.db", max_experiments=6, oracle_extra=oracle)
    dask = flow_campaign(
        name="dask.toml",
        ledger="dask.db",
        max_experiments=6,
        oracle_extra=oracle,
        execution='task_runner = "dask"\n'
        "cluster_kwargs = { n_workers = 2, threads_per_worker = 1, processes = true, "
        "dashboard_address = ':0' }",
    )
    campaign = Campaign(load_config(plain))
    campaign.run()
    campaign.close()
    journal.unlink()

    campaign_flow(str(dask))

    assert contents(dask) == contents(plain)
    assert any(row[3] == "failed" for row in contents(dask)), "the seed gives failures to compare"
    pids = {e["pid"] for e in read_journal(journal)}
    assert len(pids) == 2 and os.getpid() not in pids, "two worker processes, not the flow's"


def test_execution_section_is_read_beside_the_core_config(flow_campaign: Callable[..., Path]) -> None:
    path = flow_campaign(execution='task_runner = "dask"\naddress = "tcp://10.0.0.1:8786"\nretries = 2')
    config, execution = load_campaign(path)
    assert config.campaign.name == "branin"
    assert execution == ExecutionSection(task_runner="dask", address="tcp://10.0.0.1:8786", retries=2)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('task_runner = "slurm"', "execution.task_runner: Input should be 'thread' or 'dask'"),
        ("workers = 3", "execution.workers: unknown key"),
        ("retries = -1", "execution.retries: Input should be greater than or equal to 0"),
        ('address = "tcp://h:8786"', "only apply to task_runner = 'dask'"),
        (
            'task_runner = "dask"\naddress = "tcp://h:8786"\ncluster_kwargs = { n_workers = 2 }',
            "either 'address'",
        ),
    ],
)
def test_bad_execution_section_names_the_key(
    flow_campaign: Callable[..., Path], lines: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_campaign(flow_campaign(execution=lines))
