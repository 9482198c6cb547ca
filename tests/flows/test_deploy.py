"""Scheduled deployments: ``deploy`` serves a deployment whose runs advance the campaign."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

from flows.deploy import build_deployment
from tests.flows.helpers import evaluations


def test_served_deployment_advances_the_campaign_by_n_cycles_per_run(
    flow_campaign: Callable[..., Path], tmp_path: Path, prefect_server: str
) -> None:
    path = flow_campaign(max_experiments=10)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    command = [sys.executable, "-m", "flows.cli", str(path), "--cron", "0 0 1 1 *", "--cycles-per-run", "1"]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with get_client(sync_client=True) as client:
            deployment = None
            deadline = time.monotonic() + 120
            while deployment is None and time.monotonic() < deadline:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                found = client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["branin"]))
                )
                deployment = found[0] if found else None
                time.sleep(0.5)
            assert deployment is not None, "the deployment is served"
            assert deployment.parameters == {"config": str(path.resolve()), "max_cycles": 1}
            assert [s.schedule.cron for s in deployment.schedules] == ["0 0 1 1 *"]

            # what the schedule does at its time, now: one run, which advances one cycle
            run = client.create_flow_run_from_deployment(deployment.id)
            deadline = time.monotonic() + 150
            while not (run.state and run.state.is_final()) and time.monotonic() < deadline:
                time.sleep(1)
                run = client.read_flow_run(run.id)
            assert run.state is not None and run.state.is_completed(), run.state
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert {e.cycle for e in evaluations(path)} == {0}, "one run, one cycle"
    assert run.name == "branin/cycle-0"


@pytest.mark.parametrize(
    ("cron", "cycles", "message"),
    [("every half hour", 1, "is not a cron string"), ("*/30 * * * *", 0, "cycles_per_run must be >= 1")],
)
def test_bad_schedule_is_refused(
    flow_campaign: Callable[..., Path], cron: str, cycles: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_deployment(flow_campaign(), cron, cycles)
